"""Stateless forms of the losses: per-class factors in, loss and statistics increments out.

Each returns a :class:`LossOutput`. They are what ``gradcheck`` and custom training loops
use; the modules in :mod:`eqlosses.losses` add the statistics that produce the factors.
"""

from ._fused import LossOutput
from ._native import native_kernel_status
from .focal import equalized_focal_factors, equalized_focal_loss, equalized_quality_focal_loss
from .peers import (
    balanced_softmax,
    balanced_softmax_adjustment,
    class_balanced_cross_entropy,
    class_balanced_weights,
    federated_classes,
    federated_loss,
    seesaw_loss,
    sigmoid_focal_loss,
)
from .sigmoid import eql_sigmoid, sigmoid_eql, sigmoid_eql_factors
from .softmax import eql_softmax, softmax_eql, softmax_eql_adjustment

__all__ = [
    "LossOutput",
    "balanced_softmax",
    "balanced_softmax_adjustment",
    "class_balanced_cross_entropy",
    "class_balanced_weights",
    "eql_sigmoid",
    "eql_softmax",
    "equalized_focal_factors",
    "equalized_focal_loss",
    "equalized_quality_focal_loss",
    "federated_classes",
    "federated_loss",
    "native_kernel_status",
    "seesaw_loss",
    "sigmoid_eql",
    "sigmoid_eql_factors",
    "sigmoid_focal_loss",
    "softmax_eql",
    "softmax_eql_adjustment",
]
