"""``import eqlosses`` imports no training framework: the adapters are imported apart."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = {"mmdet", "mmengine", "mmcv", "pytorch_lightning", "lightning"}
LIST_TOP_LEVEL_MODULES = (
    "import eqlosses, eqlosses.functional, eqlosses.integrations, sys; "
    "print(' '.join({name.split('.')[0] for name in sys.modules}))"
)


def test_import_eqlosses_imports_no_framework() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LIST_TOP_LEVEL_MODULES],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(done.stdout.split())
    assert "eqlosses" in loaded and "torch" in loaded
    assert loaded.isdisjoint(FRAMEWORKS), sorted(loaded & FRAMEWORKS)
