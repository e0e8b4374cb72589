"""Evaluation metrics: per-class accuracy, class groups, seed statistics, LVIS box AP."""

from .classification import (
    GroupAccuracy,
    beats,
    class_groups,
    group_accuracy,
    mean_std,
    per_class_accuracy,
)
from .detection import LVISMetrics, evaluate_lvis

__all__ = [
    "GroupAccuracy",
    "LVISMetrics",
    "beats",
    "class_groups",
    "evaluate_lvis",
    "group_accuracy",
    "mean_std",
    "per_class_accuracy",
]
