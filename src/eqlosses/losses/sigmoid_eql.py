"""Sigmoid-EQL (EQLv2, Tan et al., CVPR 2021) as a module."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..checks import check_choice, check_flag
from ..functional.sigmoid import check_sigmoid_eql_options, sigmoid_eql, sigmoid_eql_factors
from ..labels import BACKGROUND_INDICES, BackgroundIndex, Reduction, check_logits
from ._base import StatisticsLoss


class SigmoidEQL(StatisticsLoss):
    r"""Sigmoid equalization loss (EQLv2): gradient-driven re-weighted BCE.

    Per class ``j`` the ratio ``g_j`` of its cumulative positive to negative gradient
    sets the weight of its negatives ``r_j = 1 / (1 + exp(-γ (g_j - μ)))`` and of its
    positives ``q_j = 1 + α (1 - r_j)``:

    .. math::
        L = \frac{1}{N}\sum_{i,j} \big(q_j y_{ij} + r_j (1 - y_{ij})\big)\,
            \mathrm{BCE}(z_{ij}, y_{ij})

    Before the first update ``g = 100`` (all weights 1). The statistics are
    ``|σ(z) - y|·W`` split by ``y``, summed over samples (no ``1/N``, no ``loss_weight``).

    Args:
        num_classes: ``C`` foreground classes.
        gamma: the mapping's ``γ`` (12).
        mu: the mapping's ``μ`` (0.8).
        alpha: the positive weight's ``α`` (4).
        objectness: the two-stage layout: ``C + 1`` logits, background column last, in
            the loss with weight 1 and out of the statistics; scored at test time as
            ``σ(z_c) (1 - σ(z_bg))``.
        reduction: ``'mean'`` (over non-ignored samples), ``'sum'`` or ``'none'``.
        loss_weight: multiplies the loss.
        ignore_index: label of rows to drop.
        background_index: ``'last'`` (label ``C`` is background) or ``'first'``.
        update_statistics: set False to freeze the statistics (e.g. fine-tuning).
        process_group: ranks that share the statistics (default group when initialised).
        validate: check label values (skipped under ``torch.compile``).

    Shape:
        - logits: ``(N, C)`` or ``(N, C + 1)`` with ``objectness``.
        - target: ``(N,)`` integer labels in ``[0, C]``, or ``(N, C)`` float multi-hot.
        - weight: optional ``(N,)``.
        - output: scalar, or ``(N, C[+1])`` for ``reduction='none'``.

    Example:
        >>> criterion = SigmoidEQL(num_classes=3)
        >>> logits = torch.randn(5, 3, requires_grad=True)
        >>> loss = criterion(logits, torch.tensor([0, 1, 3, 3, 2]))  # 3 = background
        >>> loss.backward()
        >>> criterion.grad_ratio.shape
        torch.Size([3])
    """

    statistics_include_loss_weight = False

    def __init__(
        self,
        num_classes: int,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        *,
        objectness: bool = False,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        background_index: BackgroundIndex = "last",
        update_statistics: bool = True,
        process_group: dist.ProcessGroup | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(
            num_classes,
            initial_ratio=100.0,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            update_statistics=update_statistics,
            process_group=process_group,
            validate=validate,
        )
        check_choice("background_index", background_index, BACKGROUND_INDICES)
        self.gamma, self.mu, self.alpha = check_sigmoid_eql_options(gamma, mu, alpha)
        self.objectness = check_flag("objectness", objectness)
        self.background_index: BackgroundIndex = background_index

    def factors(self) -> tuple[Tensor, Tensor]:
        """This step's ``(pos_weight, neg_weight)``, float64 ``(C,)``."""
        return sigmoid_eql_factors(self.grad_ratio, self.gamma, self.mu, self.alpha)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        pos_weight, neg_weight = self.factors()
        output = sigmoid_eql(
            logits,
            target,
            pos_weight,
            neg_weight,
            objectness=self.objectness,
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            background_index=self.background_index,
            validate=self.validate,
        )
        return self._finish(output)

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """Class probabilities ``(N, C)``: ``σ(z)``, or ``σ(z_c)(1 - σ(z_bg))`` with
        ``objectness``."""
        check_logits(logits, self.num_classes + int(self.objectness))
        prob = torch.sigmoid(logits)
        if not self.objectness:
            return prob
        return prob[..., :-1] * (1.0 - prob[..., -1:])

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}, "
            f"objectness={self.objectness}"
        )
