"""Evaluation metrics: per-class accuracy, class groups and seed statistics; segmentation
IoU with the pixel statistics of a label set; LVIS box AP through the real evaluator."""

from .classification import (
    GroupAccuracy,
    beats,
    class_groups,
    group_accuracy,
    mean_std,
    per_class_accuracy,
)
from .detection import LVISMetrics, evaluate_lvis
from .segmentation import (
    RARE_PIXEL_SHARE,
    SegmentationScores,
    confusion_matrix,
    iou_per_class,
    median_frequency_weights,
    pixel_counts,
    rare_classes,
    segmentation_scores,
)

__all__ = [
    "RARE_PIXEL_SHARE",
    "GroupAccuracy",
    "LVISMetrics",
    "SegmentationScores",
    "beats",
    "class_groups",
    "confusion_matrix",
    "evaluate_lvis",
    "group_accuracy",
    "iou_per_class",
    "mean_std",
    "median_frequency_weights",
    "per_class_accuracy",
    "pixel_counts",
    "rare_classes",
    "segmentation_scores",
]
