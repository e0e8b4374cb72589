"""Backbones for the loss comparisons: a small CNN and a plain-PyTorch EfficientNet-Lite0."""

from eqlosses.models.efficientnet_lite import (
    EfficientNetLite0,
    extract_features,
    load_pretrained_efficientnet_lite0,
    preprocess,
    pretrained_weights_path,
)
from eqlosses.models.small_cnn import SmallCNN, grayscale_batch

__all__ = [
    "EfficientNetLite0",
    "SmallCNN",
    "extract_features",
    "grayscale_batch",
    "load_pretrained_efficientnet_lite0",
    "preprocess",
    "pretrained_weights_path",
]
