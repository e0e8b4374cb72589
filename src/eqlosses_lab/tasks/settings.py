"""The training settings of every comparison task and the command-line choices that pick
them: plain values, importable with torch alone, so that ``eqlosses compare --help``
works without the lab extra."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TaskName = Literal["classification", "segmentation", "detection"]
TASKS: tuple[TaskName, ...] = ("classification", "segmentation", "detection")
Dataset = Literal["fashion-mnist", "omniglot"]
DATASETS: tuple[Dataset, ...] = ("fashion-mnist", "omniglot")
Detector = Literal["one-stage", "two-stage"]
DETECTORS: tuple[Detector, ...] = ("one-stage", "two-stage")


@dataclass(frozen=True)
class TrainConfig:
    """Classification: SGD with momentum and a cosine schedule over all steps."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9


CLASSIFICATION_CONFIG: dict[Dataset, TrainConfig] = {
    "fashion-mnist": TrainConfig(epochs=6, batch_size=128, lr=0.05),
    "omniglot": TrainConfig(epochs=30, batch_size=128, lr=0.1),
}
# Fashion-MNIST-LT's imbalance ratio when none is given.
IMBALANCE_RATIO = 100.0


@dataclass(frozen=True)
class SegmentationConfig:
    """Training of one decoder: AdamW with a cosine schedule over all steps. The epochs fit
    the 18-run comparison into about half an hour on one CPU thread; the learning rate
    was picked among 1e-3, 3e-3 and 1e-2 with cross-entropy on the val split."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int = 64


@dataclass(frozen=True)
class DetectionConfig:
    """Training of one head: epochs, images per step, SGD with warm-up and cosine decay."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 50


DETECTION_CONFIG: dict[Detector, DetectionConfig] = {
    "one-stage": DetectionConfig(epochs=8, batch_size=16, lr=0.05),
    "two-stage": DetectionConfig(epochs=6, batch_size=16, lr=0.05),
}


@dataclass(frozen=True)
class TwoStageConfig:
    """Proposal network and RoI sampling of the two-stage detector."""

    proposal_epochs: int = 6
    proposals_per_image: int = 64
    proposal_nms: float = 0.7
    rois_per_image: int = 32
    foreground_fraction: float = 0.25
    foreground_iou: float = 0.5
    # RoIAlign output per level (strides 8, 16, 32): 40·9 + 112·9 + 320·1 = 1688 values
    pool_sizes: tuple[int, ...] = (3, 3, 1)
    # CenterNet2 samples 50 of LVIS's 1203 classes; scaled to a small C it would be a
    # handful, so the federated loss keeps this share of the classes, at least 8.
    federated_share: float = 50 / 1203
    federated_min_classes: int = 8

    def federated_classes(self, num_classes: int) -> int:
        """The classes the federated loss samples per step, of ``num_classes``."""
        sampled = max(self.federated_min_classes, round(self.federated_share * num_classes))
        return min(sampled, num_classes)


# FCOS centre sampling: positives within this many strides of a box centre.
CENTER_RADIUS = 1.5
# The Omniglot-Det canvases (options of data.canvases.build_canvases).
CANVAS_PRESETS: dict[str, dict[str, Any]] = {
    # build_canvases' defaults: 242 classes, 73 rare / 97 common / 72 frequent
    "full": {},
    # a smoke-test size: 6 rare classes on 12 small training canvases
    "tiny": {
        "num_classes": 6,
        "num_train": 12,
        "num_test": 4,
        "n_max": 10,
        "group_fractions": (1.0, 0.0),
        "test_images_per_class": 2,
        "size": 128,
        "glyph_size": (20, 48),
        "glyphs_per_canvas": (1, 4),
    },
}
