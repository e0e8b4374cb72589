"""Softmax-EQL (Tan et al., TPAMI) as a module."""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ..checks import check_choice, check_number
from ..functional.softmax import (
    SoftmaxEQLForm,
    check_softmax_eql_options,
    softmax_eql,
    softmax_eql_adjustment,
)
from ..labels import Reduction, check_logits
from ._base import StatisticsLoss

Indicator = Literal["pos", "neg"]


class SoftmaxEQL(StatisticsLoss):
    r"""Softmax equalization loss: cross-entropy on gradient-adjusted logits.

    .. math::
        \tilde z_{ij} = z_{ij} + τ \log\max(I_j, ε), \qquad
        L = \frac{1}{N}\sum_i \mathrm{CE}(\tilde z_i, y_i)

    ``I`` is the cumulative positive gradient of each class (``indicator='neg'``: the
    negative). Classes that received little positive gradient get a lower adjusted logit
    during training, so the raw logits used at test time favour them. At the start
    ``I = 0``, which is plain cross-entropy. The statistics are the true gradient of the
    loss, ``(softmax(z̃) - y)/N`` times ``loss_weight``, split by target.

    Args:
        num_classes: ``C``.
        tau: ``τ`` (1).
        eps: ``ε`` (1e-4).
        indicator: ``'pos'`` or ``'neg'``.
        form: ``'canonical'`` (above) or ``'prior'``, the reference code's
            ``log((I_j/Σ I)^τ + 1e-9)`` added to every column.
        reduction: ``'mean'`` over non-ignored samples, ``'sum'`` or ``'none'`` (per
            sample).
        loss_weight: multiplies the loss.
        ignore_index: label of samples to drop.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        update_statistics: set False to freeze the statistics (e.g. fine-tuning).
        process_group: ranks that share the statistics (default group when initialised).
        validate: check label values (skipped under ``torch.compile``).

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)`` (per pixel).
        - target: ``(N,)`` / ``(N, d1, ...)`` labels in ``[0, C)``, or ``(N, C)`` soft.
        - output: scalar, or per sample for ``reduction='none'``.

    Example:
        >>> criterion = SoftmaxEQL(num_classes=4)
        >>> logits = torch.randn(2, 4, 8, 8, requires_grad=True)  # a segmentation batch
        >>> target = torch.randint(0, 4, (2, 8, 8))
        >>> criterion(logits, target).backward()
        >>> criterion.predict(logits).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        num_classes: int,
        tau: float = 1.0,
        eps: float = 1e-4,
        *,
        indicator: Indicator = "pos",
        form: SoftmaxEQLForm = "canonical",
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        update_statistics: bool = True,
        process_group: dist.ProcessGroup | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(
            num_classes,
            initial_ratio=1.0,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            update_statistics=update_statistics,
            process_group=process_group,
            validate=validate,
        )
        check_choice("indicator", indicator, ("pos", "neg"))
        self.tau, self.eps = check_softmax_eql_options(tau, eps, form)
        self.indicator: Indicator = indicator
        self.form: SoftmaxEQLForm = form
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)

    def adjustment(self) -> Tensor:
        """This step's additive logit adjustment, float64 ``(C,)``."""
        values = self.pos_grad if self.indicator == "pos" else self.neg_grad
        return softmax_eql_adjustment(values, self.tau, self.eps, self.form)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        output = softmax_eql(
            logits,
            target,
            self.adjustment(),
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            validate=self.validate,
        )
        return self._finish(output)

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """Plain softmax of the raw logits over the class dimension (dim 1)."""
        check_logits(logits, self.num_classes, class_dim=1 if logits.dim() > 1 else -1)
        return torch.softmax(logits, dim=1 if logits.dim() > 1 else -1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, tau={self.tau}, eps={self.eps}, "
            f"indicator={self.indicator!r}, form={self.form!r}"
        )
