"""A test-only stand-in for ``mmcv.ops``, so that mmdetection's own heads run on a CPU.

``mmcv-lite`` ships ``mmcv`` without its compiled extension, and ``import mmdet.models``
imports ``mmcv.ops``, which loads that extension. :func:`install` puts an import hook in
front of Python's finders that serves ``mmcv.ops`` and every ``mmcv.ops.*`` submodule
as a placeholder module: any name read from it is a placeholder class that raises when
it is built or called, except ``nms`` and ``batched_nms``, which are torch
implementations (greedy NMS) for the prediction paths of the heads. Nothing is
installed where the compiled extension exists: the real ``mmcv.ops`` is used then.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import torch
from torch import Tensor

PACKAGE = "mmcv.ops"


def _pairwise_iou(boxes: Tensor) -> Tensor:
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    overlap = (bottom_right - top_left).clamp_min(0).prod(-1)
    return overlap / (area[:, None] + area[None, :] - overlap).clamp_min(1e-12)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, **_: Any) -> tuple[Tensor, Tensor]:
    """Greedy NMS: ``(dets (k, 5), kept indices)``, highest score first."""
    order = scores.argsort(descending=True)
    iou = _pairwise_iou(boxes[order].float())
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    kept = []
    for position in range(len(order)):
        if suppressed[position]:
            continue
        kept.append(position)
        suppressed |= iou[position] > iou_threshold
    keep = order[torch.tensor(kept, dtype=torch.long)]
    return torch.cat([boxes[keep], scores[keep, None]], dim=1), keep


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    nms_cfg: dict[str, Any] | None,
    class_agnostic: bool = False,
) -> tuple[Tensor, Tensor]:
    """NMS within each ``idxs`` group (mmcv's call and return convention)."""
    if nms_cfg is None:
        order = scores.argsort(descending=True)
        return torch.cat([boxes[order], scores[order, None]], dim=1), order
    settings = dict(nms_cfg)
    class_agnostic = settings.pop("class_agnostic", class_agnostic)
    max_num = settings.pop("max_num", -1)
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 5), idxs.new_zeros(0, dtype=torch.long)
    shifted = boxes
    if not class_agnostic:
        # boxes of different groups never overlap once moved this far apart
        shifted = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    _, keep = nms(shifted, scores, settings["iou_threshold"])
    if max_num > 0:
        keep = keep[:max_num]
    return torch.cat([boxes[keep], scores[keep, None]], dim=1), keep


class _Placeholder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{type(self).__name__} is a test placeholder for mmcv.ops")


def _placeholder_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so that its submodules import
    made: dict[str, Any] = {"nms": nms, "batched_nms": batched_nms}

    def attribute(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr not in made:
            made[attr] = type(attr, (_Placeholder,), {"__module__": name})
        return made[attr]

    module.__getattr__ = attribute  # type: ignore[method-assign]
    return module


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _placeholder_module(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == PACKAGE or fullname.startswith(PACKAGE + "."):
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        return None


def install() -> None:
    """Serve ``mmcv.ops`` with placeholders where mmcv has no compiled extension."""
    if importlib.util.find_spec("mmcv") is None or importlib.util.find_spec("mmcv._ext"):
        return
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
