"""Gradient-driven equalization losses for long-tailed recognition."""

from . import functional
from .losses import EQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, SigmoidEQL, SoftmaxEQL
from .stats import GradientStatistics

__version__ = "0.1.0"

__all__ = [
    "EQL",
    "EqualizedFocalLoss",
    "EqualizedQualityFocalLoss",
    "GradientStatistics",
    "SigmoidEQL",
    "SoftmaxEQL",
    "__version__",
    "functional",
]
