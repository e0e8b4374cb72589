"""Loss modules: hyper-parameters and statistics over the functional forms."""

from .eql import EQL
from .focal import EqualizedFocalLoss, EqualizedQualityFocalLoss
from .sigmoid_eql import SigmoidEQL
from .softmax_eql import SoftmaxEQL

__all__ = ["EQL", "EqualizedFocalLoss", "EqualizedQualityFocalLoss", "SigmoidEQL", "SoftmaxEQL"]
