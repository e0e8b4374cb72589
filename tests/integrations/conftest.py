"""The integration tests: mmdetection's heads on a CPU, and Lightning under DDP.

mmdetection's models import ``mmcv.ops``, which ``mmcv-lite`` cannot load; the stand-in
of :mod:`mmcv_ops_stand_in` is installed here, before any test module imports mmdet.
"""

from __future__ import annotations

from mmcv_ops_stand_in import install

install()
