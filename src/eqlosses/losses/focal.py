"""Equalized Focal Loss (Li et al., CVPR 2022) and its quality-focal variant."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..checks import check_choice, check_number
from ..functional.focal import (
    check_equalized_focal_options,
    equalized_focal_factors,
    equalized_focal_loss,
    equalized_quality_focal_loss,
)
from ..labels import BACKGROUND_INDICES, BackgroundIndex, Reduction, check_logits
from ._base import StatisticsLoss


class _EqualizedFocalBase(StatisticsLoss):
    def __init__(
        self,
        num_classes: int,
        gamma_b: float,
        scale: float,
        *,
        reduction: Reduction,
        loss_weight: float,
        ignore_index: int,
        background_index: BackgroundIndex,
        update_statistics: bool,
        process_group: dist.ProcessGroup | None,
        validate: bool,
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
        check_choice("background_index", background_index, BACKGROUND_INDICES)
        self.gamma_b, self.scale = check_equalized_focal_options(gamma_b, scale)
        self.background_index: BackgroundIndex = background_index

    def factors(self) -> tuple[Tensor, Tensor]:
        """This step's ``(focusing, weighting)`` factors, float64 ``(C,)``."""
        return equalized_focal_factors(self.grad_ratio, self.gamma_b, self.scale)

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """Class probabilities ``σ(z)``, ``(..., C)``."""
        check_logits(logits, self.num_classes)
        return torch.sigmoid(logits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma_b={self.gamma_b}, scale={self.scale}"


class EqualizedFocalLoss(_EqualizedFocalBase):
    r"""Equalized Focal Loss (EFL) for one-stage detectors.

    .. math::
        L = \frac{1}{Z}\sum_{i,j} α_t\, \frac{γ_j}{γ_b}\, (1 - p_t)^{γ_j} (-\log p_t),
        \qquad γ_j = γ_b + s\,(1 - g_j)

    ``g_j`` (clamped to [0, 1], 1 before the first update) is the class's ratio of
    cumulative positive to negative gradient: rare classes get a larger focusing factor
    and weight. ``Z`` is the number of positive samples (at least 1) unless ``avg_factor``
    is given. The statistics are the true gradient of the normalised loss (times
    ``loss_weight``), split by target.

    Args:
        num_classes: ``C`` (no background column).
        gamma_b: ``γ_b`` (2).
        scale: ``s`` (8; the reference YOLOX configs use 4).
        alpha: ``α`` (0.25).
        reduction: ``'mean'`` (sum / ``Z``), ``'sum'`` or ``'none'`` (per entry).
        loss_weight: multiplies the loss.
        ignore_index: label of rows to drop.
        background_index: ``'last'`` (label ``C`` is background) or ``'first'``.
        update_statistics: set False to freeze the statistics (e.g. fine-tuning).
        process_group: ranks that share the statistics (default group when initialised).
        validate: check label values (skipped under ``torch.compile``).

    Shape:
        - logits: ``(..., C)``; target, weight: ``(...)`` with ``C`` = background.

    Example:
        >>> criterion = EqualizedFocalLoss(num_classes=3)
        >>> logits = torch.randn(2, 100, 3, requires_grad=True)  # anchors of two images
        >>> target = torch.full((2, 100), 3)  # background ...
        >>> target[:, :5] = torch.tensor([0, 1, 2, 0, 0])  # ... and a few positives
        >>> criterion(logits, target).backward()
    """

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        alpha: float = 0.25,
        *,
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
            gamma_b,
            scale,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            background_index=background_index,
            update_statistics=update_statistics,
            process_group=process_group,
            validate=validate,
        )
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0)

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        focusing, weighting = self.factors()
        output = equalized_focal_loss(
            logits,
            target,
            focusing,
            weighting,
            alpha=self.alpha,
            avg_factor=avg_factor,
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            background_index=self.background_index,
            validate=self.validate,
        )
        return self._finish(output, normaliser_floor=_floor(avg_factor))


def _floor(avg_factor: float | Tensor | None) -> float:
    # a count of positives may be 0 on every rank (the loss then divides by 1); an
    # explicit avg_factor is the divisor itself
    return 1.0 if avg_factor is None else 0.0


class EqualizedQualityFocalLoss(_EqualizedFocalBase):
    r"""Equalized Quality Focal Loss (EQFL): EFL's factors on the quality focal loss.

    .. math::
        L = \frac{1}{Z}\sum_{i,j} \frac{γ_j}{γ_b}\,|t_{ij} - σ(z_{ij})|^{γ_j}\,
            \mathrm{BCE}(z_{ij}, t_{ij})

    ``t_ij`` is the IoU quality ``score`` of sample ``i`` at its class and 0 elsewhere.
    No ``α``. Statistics as :class:`EqualizedFocalLoss`, split by the class target.

    Shape:
        - logits: ``(..., C)``; target, score, weight: ``(...)``.

    Example:
        >>> criterion = EqualizedQualityFocalLoss(num_classes=3)
        >>> logits = torch.randn(100, 3, requires_grad=True)
        >>> target = torch.full((100,), 3)
        >>> target[:4] = torch.tensor([0, 1, 2, 2])
        >>> score = torch.rand(100)  # IoU of each positive's predicted box
        >>> criterion(logits, target, score).backward()
    """

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        *,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        background_index: BackgroundIndex = "last",
        update_statistics: bool = True,
        process_group: dist.ProcessGroup | None = None,
        validate: bool = True,
    ) -> None:
        # |t - σ|^(γ - 1) in the gradient is unbounded at t = σ for γ < 1
        check_number("gamma_b", gamma_b, low=1.0)
        super().__init__(
            num_classes,
            gamma_b,
            scale,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            background_index=background_index,
            update_statistics=update_statistics,
            process_group=process_group,
            validate=validate,
        )

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        score: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        focusing, weighting = self.factors()
        output = equalized_quality_focal_loss(
            logits,
            target,
            score,
            focusing,
            weighting,
            avg_factor=avg_factor,
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            background_index=self.background_index,
            validate=self.validate,
        )
        return self._finish(output, normaliser_floor=_floor(avg_factor))
