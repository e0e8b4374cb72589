"""Long-tailed classification metrics.

Two groupings of the classes by their number of training samples:

* thirds: head / middle / tail, the classes sorted by training count (ties broken by
  class index) and cut into three nearly equal parts;
* shots (ImageNet-LT convention): many (> 100 training samples), few (< 20), medium in
  between; a group with no class is reported as absent.

Group accuracy is the mean of the per-class accuracies of its classes (the test sets are
balanced, so this equals the accuracy over the group's test samples when they are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

MANY_SHOT = 100
FEW_SHOT = 20


def per_class_accuracy(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Accuracy of each class over its test samples, float64 ``(C,)``; NaN for a class
    with no test sample."""
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions: expected shape {tuple(labels.shape)}, got {tuple(predictions.shape)}"
        )
    labels = labels.long()
    totals = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels[predictions.long() == labels], minlength=num_classes).double()
    return torch.where(totals > 0, hits / totals.clamp_min(1), torch.full_like(totals, math.nan))


def class_groups(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Class indices of each group: ``head``, ``middle``, ``tail`` and, where non-empty,
    ``many``, ``medium``, ``few``."""
    order = sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))
    third = len(order) / 3
    groups = {
        "head": sorted(order[: round(third)]),
        "middle": sorted(order[round(third) : round(2 * third)]),
        "tail": sorted(order[round(2 * third) :]),
    }
    shots = {
        "many": [c for c, n in enumerate(train_counts) if n > MANY_SHOT],
        "medium": [c for c, n in enumerate(train_counts) if FEW_SHOT <= n <= MANY_SHOT],
        "few": [c for c, n in enumerate(train_counts) if n < FEW_SHOT],
    }
    groups.update({name: members for name, members in shots.items() if members})
    return groups


@dataclass
class GroupAccuracy:
    """Top-1 accuracy overall and per class group, with the per-class values."""

    overall: float
    groups: dict[str, float]
    per_class: list[float]


def group_accuracy(
    predictions: Tensor, labels: Tensor, train_counts: Sequence[int]
) -> GroupAccuracy:
    """Overall top-1 accuracy, the group means of per-class accuracy, per-class accuracy."""
    num_classes = len(train_counts)
    per_class = per_class_accuracy(predictions, labels, num_classes)
    overall = float((predictions.long() == labels.long()).double().mean())
    groups = {
        name: float(per_class[members].nanmean())
        for name, members in class_groups(train_counts).items()
    }
    return GroupAccuracy(overall, groups, [float(v) for v in per_class])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("values: expected at least one value, got none")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def beats(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether A beats B: the mean gap exceeds the sum of the two standard deviations and
    has the same sign on every seed (``a[k]`` and ``b[k]`` are seed ``k``'s results)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a, b: expected equal non-empty lists of seeds, got {len(a)}, {len(b)}")
    mean_a, std_a = mean_std(a)
    mean_b, std_b = mean_std(b)
    gap = mean_a - mean_b
    return gap > std_a + std_b and all(x > y for x, y in zip(a, b, strict=True))
