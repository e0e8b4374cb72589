"""Gradient-driven equalization losses for long-tailed recognition."""

from . import functional
from .losses import (
    EQL,
    BalancedSoftmax,
    ClassBalancedLoss,
    EqualizedFocalLoss,
    EqualizedQualityFocalLoss,
    FederatedLoss,
    FocalLoss,
    SeesawLoss,
    SigmoidEQL,
    SoftmaxEQL,
    StatisticsLoss,
)
from .stats import GradientStatistics

__version__ = "0.1.0"

__all__ = [
    "EQL",
    "BalancedSoftmax",
    "ClassBalancedLoss",
    "EqualizedFocalLoss",
    "EqualizedQualityFocalLoss",
    "FederatedLoss",
    "FocalLoss",
    "GradientStatistics",
    "SeesawLoss",
    "SigmoidEQL",
    "SoftmaxEQL",
    "StatisticsLoss",
    "__version__",
    "functional",
]
