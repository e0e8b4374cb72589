"""Loss modules: hyper-parameters and statistics over the functional forms."""

from ._base import StatisticsLoss
from .eql import EQL
from .focal import EqualizedFocalLoss, EqualizedQualityFocalLoss
from .peers import BalancedSoftmax, ClassBalancedLoss, FederatedLoss, FocalLoss, SeesawLoss
from .sigmoid_eql import SigmoidEQL
from .softmax_eql import SoftmaxEQL

__all__ = [
    "EQL",
    "BalancedSoftmax",
    "ClassBalancedLoss",
    "EqualizedFocalLoss",
    "EqualizedQualityFocalLoss",
    "FederatedLoss",
    "FocalLoss",
    "SeesawLoss",
    "SigmoidEQL",
    "SoftmaxEQL",
    "StatisticsLoss",
]
