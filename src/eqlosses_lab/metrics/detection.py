"""Box AP on an LVIS-format data set, computed by the ``lvis`` package's own ``LVISEval``.

LVIS evaluation is federated: a detection of category ``c`` on image ``i`` is scored only if
``c`` is annotated on ``i`` or listed in the image's ``neg_category_ids``; otherwise it is
dropped.  Exhaustively labelled data must therefore list every absent category as negative
(:meth:`eqlosses_lab.data.canvases.CanvasDataset.lvis` does), or false positives on absent
categories go unpunished and AP is inflated.

AP is COCO's: precision interpolated to be non-increasing, read at the 101 recall levels
0, 0.01, ..., 1, averaged over them and over the IoU thresholds 0.5, 0.55, ..., 0.95, then over
categories.  APr / APc / APf average the categories of each frequency group (the
``frequency`` field of the categories, from training image counts).

Two accommodations for ``lvis`` 0.5.3, the current release:

- it calls ``np.float``, an alias of ``float`` removed in NumPy 1.24; its evaluation module
  is given a view of NumPy that still has the alias (NumPy itself is left untouched);
- importing it calls ``logging.basicConfig`` and it logs every step; the import leaves the
  application's root logger as it was, and evaluation runs with its loggers quiet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

LVIS_MAX_DETS = 300


class LVISMetrics(TypedDict):
    """Box AP summary; NaN where undefined (e.g. a frequency group with no category)."""

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    APr: float
    APc: float
    APf: float
    AR: float
    per_category: dict[int, float]


class _NumpyWithFloatAlias(types.ModuleType):
    """NumPy as ``lvis.eval`` expects it: everything forwarded, plus the old ``float`` alias."""

    def __getattr__(self, name: str) -> Any:
        return float if name == "float" else getattr(np, name)


def _import_lvis() -> Any:
    root = logging.getLogger()
    # basicConfig() only acts on a root logger without handlers; a placeholder handler during
    # the import keeps lvis from configuring the application's logging.
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        import lvis
        import lvis.eval
    finally:
        root.removeHandler(placeholder)
    if not hasattr(np, "float"):
        lvis.eval.np = _NumpyWithFloatAlias("numpy")
    return lvis


@contextlib.contextmanager
def _quiet_lvis() -> Iterator[None]:
    logger = logging.getLogger("lvis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # lvis calls the deprecated Logger.warn, which warns before checking the level.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _check_inputs(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> None:
    missing = [key for key in ("images", "annotations", "categories") if key not in gt]
    if missing:
        raise ValueError(
            f"gt must be an LVIS dict with images, annotations, categories; lacks {missing}"
        )
    image_ids = {image["id"] for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    for index, det in enumerate(detections):
        lacking = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if lacking:
            raise ValueError(f"detections[{index}] lacks {lacking}")
        if det["image_id"] not in image_ids:
            raise ValueError(f"detections[{index}] has image_id {det['image_id']}, not in gt")
        if det["category_id"] not in category_ids:
            raise ValueError(f"detections[{index}] has category_id {det['category_id']}, not in gt")
        if len(det["bbox"]) != 4:
            raise ValueError(f"detections[{index}] bbox must be [x, y, w, h], got {det['bbox']}")


def _nan_if_undefined(value: float) -> float:
    # LVISEval reports -1 where nothing was measured.
    return math.nan if value == -1 else float(value)


def evaluate_lvis(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    *,
    max_dets: int = LVIS_MAX_DETS,
) -> LVISMetrics:
    """Box AP, AP50, AP75, APs/m/l, APr/c/f, AR and per-category AP of ``detections`` on ``gt``.

    Args:
        gt: LVIS annotation dict: ``images`` (with ``neg_category_ids`` and
            ``not_exhaustive_category_ids``), ``annotations`` (``bbox`` ``[x, y, w, h]``,
            ``area``), ``categories`` (with ``frequency`` ``'r'``/``'c'``/``'f'``).
        detections: LVIS results: ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}`` each.  Not modified.
        max_dets: Detections kept per image, highest scores first (LVIS uses 300).

    Returns:
        The summary numbers in ``[0, 1]`` and ``per_category`` (category id -> AP averaged
        over IoU thresholds), NaN where undefined (a category without ground truth in ``gt``,
        a group or area range without any).  No detection at all scores 0 where defined.

    Example (one image, one rare category, its box detected exactly):

        >>> image = {"id": 1, "width": 32, "height": 32, "neg_category_ids": [],
        ...          "not_exhaustive_category_ids": []}
        >>> box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 12],
        ...        "area": 120}
        >>> category = {"id": 1, "name": "glyph", "frequency": "r", "image_count": 1,
        ...             "instance_count": 1}
        >>> gt = {"images": [image], "annotations": [box], "categories": [category]}
        >>> found = {"image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 12], "score": 0.9}
        >>> metrics = evaluate_lvis(gt, [found])
        >>> round(metrics["AP"], 3), round(metrics["APr"], 3)
        (1.0, 1.0)
    """
    if max_dets < 1:
        raise ValueError(f"max_dets: expected a positive integer, got {max_dets}")
    _check_inputs(gt, detections)
    results = [dict(det) for det in detections]
    if not results and gt["images"] and gt["categories"]:
        # LVISResults cannot be built from an empty list (it reads the first result).  One
        # detection far outside every image matches nothing, and a category without a true
        # positive has precision 0 at every recall level whatever its false positives, so
        # LVISEval then reports exactly what no detection at all scores.
        results = [
            {
                "image_id": gt["images"][0]["id"],
                "category_id": gt["categories"][0]["id"],
                "bbox": [-1e6, -1e6, 1.0, 1.0],
                "score": 0.0,
            }
        ]
    lvis = _import_lvis()
    with _quiet_lvis(), tempfile.TemporaryDirectory() as folder:
        # LVIS reads its ground truth from a file only, and annotates the dicts it is given
        # in place; a file and copies keep the caller's data as it was.
        path = Path(folder) / "gt.json"
        path.write_text(json.dumps(gt))
        lvis_gt = lvis.LVIS(str(path))
        evaluator = lvis.LVISEval(
            lvis_gt, lvis.LVISResults(lvis_gt, results, max_dets=max_dets), iou_type="bbox"
        )
        evaluator.params.max_dets = max_dets
        evaluator.run()
    summary = evaluator.get_results()
    # precision: (IoU thresholds, recall levels, categories, area ranges); area range 0 = all.
    precision = evaluator.eval["precision"][:, :, :, 0]
    per_category: dict[int, float] = {}
    for k, category_id in enumerate(evaluator.params.cat_ids):
        measured = precision[:, :, k]
        measured = measured[measured > -1]
        per_category[int(category_id)] = float(measured.mean()) if measured.size else math.nan
    return LVISMetrics(
        AP=_nan_if_undefined(summary["AP"]),
        AP50=_nan_if_undefined(summary["AP50"]),
        AP75=_nan_if_undefined(summary["AP75"]),
        APs=_nan_if_undefined(summary["APs"]),
        APm=_nan_if_undefined(summary["APm"]),
        APl=_nan_if_undefined(summary["APl"]),
        APr=_nan_if_undefined(summary["APr"]),
        APc=_nan_if_undefined(summary["APc"]),
        APf=_nan_if_undefined(summary["APf"]),
        AR=_nan_if_undefined(summary[f"AR@{max_dets}"]),
        per_category=per_category,
    )
