"""IoU from one confusion matrix, rare classes and median-frequency weights against
hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from eqlosses_lab.metrics.segmentation import (
    confusion_matrix,
    iou_per_class,
    median_frequency_weights,
    pixel_counts,
    rare_classes,
    segmentation_scores,
)

IGNORE = 9


def test_confusion_matrix_counts_pairs_and_skips_ignored_pixels() -> None:
    labels = torch.tensor([[0, 0, 1], [2, IGNORE, 1]])
    predictions = torch.tensor([[0, 1, 1], [1, 2, 2]])
    # (t, p) pairs: (0,0) (0,1) (1,1) (2,1) (1,2); the ignored pixel's prediction is unused
    expected = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 1, 0]])
    assert torch.equal(confusion_matrix(predictions, labels, 3, IGNORE), expected)


def test_iou_by_hand() -> None:
    confusion = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 1, 0]])
    # class 0: TP 1, FN 1, FP 0 -> 1/2; class 1: TP 1, FN 1, FP 2 -> 1/4; class 2: 0/2
    assert iou_per_class(confusion).tolist() == [0.5, 0.25, 0.0]


def test_iou_of_an_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    confusion = torch.tensor([[3, 1, 0], [1, 1, 0], [0, 0, 0]])
    iou = iou_per_class(confusion)
    assert iou[:2].tolist() == [0.6, 1 / 3] and math.isnan(float(iou[2]))
    scores = segmentation_scores(confusion, rare=[1, 2])
    assert scores.miou == pytest.approx((0.6 + 1 / 3) / 2)
    assert scores.rare == pytest.approx(1 / 3)
    assert scores.frequent == pytest.approx(0.6)
    assert scores.pixel_accuracy == pytest.approx(4 / 6)
    # recall: class 0 3/4, class 1 1/2 (class 2 has no pixel); precision of class 1: 1/2,
    # of class 2 (never predicted): 0
    assert scores.class_accuracy == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert scores.rare_recall == pytest.approx(1 / 2)
    assert scores.rare_precision == pytest.approx((1 / 2 + 0) / 2)


def test_iou_pools_all_pixels_rather_than_averaging_images() -> None:
    # image A: class 1 found on 1 of 1 pixels; image B: on 0 of 3. Pooled IoU of class 1
    # is 1/(1 + 3) = 0.25 (a mean of per-image IoUs would say 0.5).
    a = confusion_matrix(torch.tensor([1, 0, 0]), torch.tensor([1, 0, 0]), 2)
    b = confusion_matrix(torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]), 2)
    assert float(iou_per_class(a + b)[1]) == 0.25


def test_confusion_matrix_errors() -> None:
    with pytest.raises(ValueError, match="predictions: expected the labels' shape"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"labels: expected labels in \[0, 2\).*got 5"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.tensor([0, 5]), 2, IGNORE)
    with pytest.raises(ValueError, match="labels: expected an integer"):
        confusion_matrix(torch.zeros(2), torch.zeros(2), 2)


def test_pixel_counts_and_rare_classes() -> None:
    labels = torch.tensor([[0] * 90 + [1] * 8 + [2] * 2 + [IGNORE] * 50])
    counts = pixel_counts(labels, 3, IGNORE)
    assert counts.tolist() == [90, 8, 2]
    # shares of the 100 labelled pixels: 0.90, 0.08, 0.02
    assert rare_classes(counts, share=0.05) == [2]
    assert rare_classes(counts, share=0.1) == [1, 2]
    assert rare_classes([985, 15]) == []  # exactly 1.5 % is not under 1.5 %
    assert rare_classes([986, 14]) == [1]
    with pytest.raises(ValueError, match="share"):
        rare_classes(counts, share=1.5)


def test_median_frequency_weights_by_hand() -> None:
    # three 2x2 images (4 pixels each), classes 0-3, IGNORE unlabelled
    labels = torch.tensor(
        [
            [[0, 0], [0, 1]],
            [[0, 0], [2, IGNORE]],
            [[1, 1], [1, 2]],
        ]
    )
    # f0 = 5 / (2 images * 4) = 5/8; f1 = 4 / 8 = 1/2; f2 = 2 / 8 = 1/4; class 3 absent.
    # median of (5/8, 1/2, 1/4) = 1/2 -> weights 0.8, 1, 2, and 0 for the absent class
    weights = median_frequency_weights(labels, 4, IGNORE)
    assert weights.tolist() == pytest.approx([0.8, 1.0, 2.0, 0.0])


def test_median_frequency_of_an_even_number_of_classes_averages_the_middle_two() -> None:
    labels = torch.tensor([[[0, 0], [0, 1]], [[0, 0], [0, 0]]])
    # f0 = 7/8, f1 = 1/4 (only image 1 has class 1); median (7/8 + 1/4) / 2 = 9/16
    assert median_frequency_weights(labels, 2).tolist() == pytest.approx([9 / 14, 9 / 4])


def test_median_frequency_errors() -> None:
    with pytest.raises(ValueError, match="labels: expected at least one labelled pixel"):
        median_frequency_weights(torch.full((1, 2, 2), IGNORE), 3, IGNORE)
    with pytest.raises(ValueError, match=r"labels: expected \(N, H, W\)"):
        median_frequency_weights(torch.tensor([0, 1]), 2)
