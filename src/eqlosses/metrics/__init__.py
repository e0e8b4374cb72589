"""Evaluation metrics: per-class accuracy, class groups, and seed statistics."""

from .classification import (
    GroupAccuracy,
    beats,
    class_groups,
    group_accuracy,
    mean_std,
    per_class_accuracy,
)

__all__ = [
    "GroupAccuracy",
    "beats",
    "class_groups",
    "group_accuracy",
    "mean_std",
    "per_class_accuracy",
]
