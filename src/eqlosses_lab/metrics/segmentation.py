"""Semantic-segmentation metrics and the pixel statistics of a label set.

* IoU from one confusion matrix over all evaluated pixels (not a mean of per-image IoUs):
  ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; mIoU is the mean over the classes.
* Pixel shares of the training labels, the rare classes (share under a threshold) and
  SegNet's median-frequency class weights.

Pixels labelled ``ignore_index`` count nowhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# "Rare" = under 1.5% of the labelled training pixels (on CamVid: pole, sign, fence,
# pedestrian, bicyclist).
RARE_PIXEL_SHARE = 0.015


def _check_labels(name: str, labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.is_floating_point():
        raise ValueError(f"{name}: expected an integer torch.Tensor of labels, got {labels!r:.80}")
    labels = labels.long()
    bad = (labels < 0) | (labels >= num_classes)
    bad &= labels != ignore_index
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected labels in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got {int(labels[bad][0])}"
        )
    return labels


def confusion_matrix(
    predictions: Tensor, labels: Tensor, num_classes: int, ignore_index: int = -100
) -> Tensor:
    """Pixel counts ``M[t, p]``: pixels of true class ``t`` predicted as ``p``, int64
    ``(C, C)``; pixels labelled ``ignore_index`` are left out.

    Shape:
        - predictions, labels: the same shape, e.g. ``(N, H, W)``.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions: expected the labels' shape {tuple(labels.shape)}, "
            f"got {tuple(predictions.shape)}"
        )
    labels = _check_labels("labels", labels, num_classes, ignore_index)
    predictions = _check_labels("predictions", predictions, num_classes, ignore_index)
    keep = labels != ignore_index
    pairs = labels[keep] * num_classes + predictions[keep]
    if bool((predictions[keep] == ignore_index).any()):
        raise ValueError("predictions: expected a class for every labelled pixel, got ignore_index")
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_per_class(confusion: Tensor) -> Tensor:
    """``TP / (TP + FP + FN)`` per class, float64 ``(C,)``; NaN for a class that is neither
    in the labels nor predicted."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    return torch.where(union > 0, hits / union.clamp_min(1), torch.full_like(hits, math.nan))


def pixel_counts(labels: Tensor, num_classes: int, ignore_index: int = -100) -> Tensor:
    """Labelled pixels of each class, int64 ``(C,)``."""
    labels = _check_labels("labels", labels, num_classes, ignore_index)
    return torch.bincount(labels[labels != ignore_index], minlength=num_classes)


def rare_classes(counts: Sequence[int] | Tensor, share: float = RARE_PIXEL_SHARE) -> list[int]:
    """Classes with fewer than ``share`` of all the counted (labelled) pixels."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share: expected a fraction in (0, 1), got {share}")
    values = [float(c) for c in counts]
    total = sum(values)
    if total <= 0:
        raise ValueError("counts: expected at least one labelled pixel, got none")
    return [c for c, n in enumerate(values) if n / total < share]


def median_frequency_weights(labels: Tensor, num_classes: int, ignore_index: int = -100) -> Tensor:
    """SegNet's median-frequency balancing (Eigen & Fergus 2015; Badrinarayanan et al.).

    .. math::
        f_c = \\frac{\\text{pixels of } c}{\\text{pixels of the images that contain } c},
        \\qquad w_c = \\frac{\\operatorname{median}_k f_k}{f_c}

    An image's pixels are all its ``H·W`` pixels, unlabelled ones included. A class that
    occurs in no image gets weight 0 and is left out of the median.

    Shape:
        - labels: ``(N, H, W)`` (any ``(N, ...)``: one entry per image along dim 0).
        - output: float64 ``(C,)``.

    Example:
        >>> labels = torch.tensor([[[0, 0], [0, 1]], [[0, 0], [0, 0]]])
        >>> median_frequency_weights(labels, 2)  # f = (7/8, 1/4), median 0.5625
        tensor([0.6429, 2.2500], dtype=torch.float64)
    """
    if labels.dim() < 2:
        raise ValueError(f"labels: expected (N, H, W) images, got shape {tuple(labels.shape)}")
    labels = _check_labels("labels", labels, num_classes, ignore_index)
    flat = labels.reshape(labels.shape[0], -1)
    per_image = torch.stack(
        [torch.bincount(row[row != ignore_index], minlength=num_classes) for row in flat]
    ).double()
    image_pixels = float(flat.shape[1])
    present = per_image > 0
    area = present.double().sum(0) * image_pixels
    occurs = area > 0
    if not bool(occurs.any()):
        raise ValueError("labels: expected at least one labelled pixel, got none")
    frequency = per_image.sum(0) / area.clamp_min(1.0)
    median = _median(frequency[occurs])
    return torch.where(occurs, median / frequency.clamp_min(1e-300), torch.zeros_like(frequency))


def _median(values: Tensor) -> Tensor:
    # torch.median returns the lower middle value of an even count; the median is the
    # mean of the two middle ones.
    ordered = values.sort().values
    middle = ordered.numel() // 2
    if ordered.numel() % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass
class SegmentationScores:
    """Scores of one confusion matrix (``nan`` where a class is absent).

    Attributes:
        miou: mean IoU over the classes. rare, frequent: mean IoU of the rare classes and
            of the others.
        pixel_accuracy: correct pixels / labelled pixels.
        class_accuracy: mean over the classes of their recall (SegNet's "class average
            accuracy").
        rare_recall, rare_precision: mean recall (``TP / labelled``) and precision
            (``TP / predicted``; 0 for a class never predicted) over the rare classes:
            where a rare-class IoU gain or loss comes from.
        per_class: IoU of each class.
    """

    miou: float
    rare: float
    frequent: float
    pixel_accuracy: float
    class_accuracy: float
    rare_recall: float
    rare_precision: float
    per_class: list[float]


def segmentation_scores(confusion: Tensor, rare: Sequence[int]) -> SegmentationScores:
    """The :class:`SegmentationScores` of one confusion matrix ``M[true, predicted]``."""
    confusion = confusion.double()
    iou = iou_per_class(confusion)
    hits = confusion.diagonal()
    labelled = confusion.sum(1)
    recall = torch.where(labelled > 0, hits / labelled.clamp_min(1), math.nan)
    precision = hits / confusion.sum(0).clamp_min(1)
    num_classes = iou.numel()
    rare_list = sorted(set(rare))
    frequent = [c for c in range(num_classes) if c not in set(rare_list)]

    def mean_of(values: Tensor, members: Sequence[int]) -> float:
        return float(values[list(members)].nanmean()) if members else math.nan

    total = float(confusion.sum())
    return SegmentationScores(
        miou=float(iou.nanmean()),
        rare=mean_of(iou, rare_list),
        frequent=mean_of(iou, frequent),
        pixel_accuracy=float(hits.sum()) / total if total > 0 else math.nan,
        class_accuracy=float(recall.nanmean()),
        rare_recall=mean_of(recall, rare_list),
        rare_precision=mean_of(precision, rare_list),
        per_class=[float(v) for v in iou],
    )
