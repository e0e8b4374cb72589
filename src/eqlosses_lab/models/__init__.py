"""Backbones for the loss comparisons: a small CNN, a plain-PyTorch EfficientNet-Lite0 and
a light FPN segmentation decoder over its feature maps."""

from eqlosses_lab.models.efficientnet_lite import (
    EfficientNetLite0,
    extract_features,
    load_pretrained_efficientnet_lite0,
    preprocess,
    pretrained_weights_path,
)
from eqlosses_lab.models.segmentation import FPNDecoder, extract_feature_maps
from eqlosses_lab.models.small_cnn import SmallCNN, grayscale_batch

__all__ = [
    "EfficientNetLite0",
    "FPNDecoder",
    "SmallCNN",
    "extract_feature_maps",
    "extract_features",
    "grayscale_batch",
    "load_pretrained_efficientnet_lite0",
    "preprocess",
    "pretrained_weights_path",
]
