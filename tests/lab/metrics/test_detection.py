"""LVIS box AP through LVISEval on a hand-made case whose AP is worked out below.

Two 100x100 images, four categories:

- cat 1 (frequent): ground truth A on image 1 and C on image 2.  Detections, by score:
  A exactly (TP), a box on empty ground of image 2 (FP), C exactly (TP).  Precision 1, 1/2,
  2/3 at recall 1/2, 1/2, 1; made non-increasing: 1, 2/3, 2/3.  Of the 101 recall levels
  0, 0.01, .., 1, the 51 up to 0.5 read precision 1, the other 50 read 2/3:
  AP = (51 + 50·2/3) / 101 = 253/303 at every IoU threshold (the boxes are exact or disjoint).
- cat 2 (common): ground truth B on image 1 only; image 2 lists cat 2 as negative.  A false
  positive on image 2 (score 0.95) outranks the exact hit on B (0.6): precision 0 then 1/2 at
  recall 0 then 1, made non-increasing 1/2 everywhere: AP = 1/2.  If image 2 did not list
  cat 2 as negative, LVIS would drop that detection and AP would be 1.
- cat 3 (rare): ground truth D (10x10) on image 2; one detection 7.2 wide inside it, IoU 0.72:
  a hit at the IoU thresholds 0.50 .. 0.70 (5 of 10), a miss at 0.75 .. 0.95.
  AP = 5/10, AP50 = 1, AP75 = 0.
- cat 4 (frequent): no ground truth anywhere (negative on both images): AP undefined, and a
  false positive of it changes nothing else.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import pytest

from eqlosses_lab.metrics.detection import evaluate_lvis

CAT1 = 253 / 303


def hand_case() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    images = [
        {"id": 1, "width": 100, "height": 100, "neg_category_ids": [3, 4]},
        {"id": 2, "width": 100, "height": 100, "neg_category_ids": [2, 4]},
    ]
    for image in images:
        image["not_exhaustive_category_ids"] = []
    boxes = {"A": [0, 0, 10, 10], "B": [20, 20, 10, 10], "C": [0, 0, 10, 10], "D": [30, 30, 10, 10]}
    annotations = [
        {"id": k + 1, "image_id": image, "category_id": cat, "bbox": boxes[name], "area": 100.0}
        for k, (image, cat, name) in enumerate([(1, 1, "A"), (1, 2, "B"), (2, 1, "C"), (2, 3, "D")])
    ]
    categories = [
        {"id": 1, "name": "one", "frequency": "f"},
        {"id": 2, "name": "two", "frequency": "c"},
        {"id": 3, "name": "three", "frequency": "r"},
        {"id": 4, "name": "four", "frequency": "f"},
    ]
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": boxes["A"], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": boxes["C"], "score": 0.7},
        {"image_id": 2, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.95},
        {"image_id": 1, "category_id": 2, "bbox": boxes["B"], "score": 0.6},
        {"image_id": 2, "category_id": 3, "bbox": [30, 30, 7.2, 10], "score": 0.5},
        {"image_id": 1, "category_id": 4, "bbox": [80, 80, 10, 10], "score": 0.4},
    ]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, detections


def test_hand_case_ap() -> None:
    gt, detections = hand_case()
    gt_before, detections_before = copy.deepcopy(gt), copy.deepcopy(detections)
    metrics = evaluate_lvis(gt, detections)
    per_category = metrics["per_category"]
    assert per_category[1] == pytest.approx(CAT1)
    assert per_category[2] == pytest.approx(0.5)
    assert per_category[3] == pytest.approx(0.5)
    assert math.isnan(per_category[4])
    assert metrics["AP"] == pytest.approx((CAT1 + 0.5 + 0.5) / 3)
    assert metrics["AP50"] == pytest.approx((CAT1 + 0.5 + 1.0) / 3)
    assert metrics["AP75"] == pytest.approx((CAT1 + 0.5 + 0.0) / 3)
    assert metrics["APr"] == pytest.approx(0.5)
    assert metrics["APc"] == pytest.approx(0.5)
    assert metrics["APf"] == pytest.approx(CAT1)
    # Every box has area 100 < 32², so everything is "small".
    assert metrics["APs"] == pytest.approx(metrics["AP"])
    assert math.isnan(metrics["APm"]) and math.isnan(metrics["APl"])
    assert gt == gt_before and detections == detections_before  # inputs untouched


def test_unlisted_negative_false_positive_is_ignored() -> None:
    gt, detections = hand_case()
    gt["images"][1]["neg_category_ids"] = [4]  # cat 2 neither present nor negative on image 2
    metrics = evaluate_lvis(gt, detections)
    assert metrics["per_category"][2] == pytest.approx(1.0)
    assert metrics["APc"] == pytest.approx(1.0)
    assert metrics["AP"] == pytest.approx((CAT1 + 1.0 + 0.5) / 3)


def test_max_dets_keeps_top_scores_per_image() -> None:
    gt, detections = hand_case()
    # One per image: image 1 keeps cat 1's hit on A (0.9), image 2 the cat 2 false positive
    # (0.95).  Cat 1 then finds A only: precision 1 up to recall 1/2 -> 51/101; others 0.
    metrics = evaluate_lvis(gt, detections, max_dets=1)
    assert metrics["per_category"][1] == pytest.approx(51 / 101)
    assert metrics["per_category"][2] == 0.0 and metrics["per_category"][3] == 0.0
    assert metrics["AP"] == pytest.approx(51 / 101 / 3)


def test_no_detections_scores_zero() -> None:
    gt, _ = hand_case()
    metrics = evaluate_lvis(gt, [])
    assert metrics["AP"] == 0.0 and metrics["APr"] == 0.0 and metrics["AR"] == 0.0
    assert [metrics["per_category"][c] for c in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert math.isnan(metrics["per_category"][4])


def test_bad_detection_is_named() -> None:
    gt, detections = hand_case()
    detections[2] = {**detections[2], "image_id": 7}
    with pytest.raises(ValueError, match=r"detections\[2\].*image_id 7"):
        evaluate_lvis(gt, detections)
    with pytest.raises(ValueError, match="lacks"):
        evaluate_lvis(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])


def test_numpy_left_alone_and_logging_quiet(caplog: pytest.LogCaptureFixture) -> None:
    gt, detections = hand_case()
    with caplog.at_level(logging.INFO):
        evaluate_lvis(gt, detections)
    assert not [r for r in caplog.records if r.name.startswith("lvis")]
    assert not hasattr(np, "float") or np.float is float  # type: ignore[attr-defined]
