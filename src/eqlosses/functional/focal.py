r"""Equalized Focal Loss (EFL) and its quality-focal variant (EQFL).

EFL gives class ``j`` its own focusing factor ``γ_j = γ_b + s (1 - g_j)`` (``g_j``
clamped to [0, 1]) and weighting factor ``w_j = γ_j / γ_b``:

.. math::
    L = \frac{1}{Z}\sum_{i,j} α_t\, w_j\, (1 - p_t)^{γ_j}\, (-\log p_t)

with ``p_t = σ(z)`` on positives and ``1 - σ(z)`` on negatives, ``α_t = α`` / ``1 - α``
and ``Z`` the number of positive samples (at least 1). Everything is computed from the
logits through ``softplus``: ``-log σ(z) = softplus(-z)`` and ``σ(z)^γ = exp(-γ
softplus(-z))``, finite in every dtype.

EQFL replaces the focal term by the quality focal loss: negatives
``BCE(z, 0) σ(z)^{γ_j}``, the positive entry ``BCE(z, q) |q - σ(z)|^{γ_j}`` with ``q``
the IoU quality target, all times ``w_j / Z`` (no ``α``).

The statistics are the true gradient of the normalised loss, split by the one-hot
class target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (
    check_choice,
    check_not_differentiated,
    check_number,
    check_values,
    reads_values,
)
from ..labels import (
    REDUCTIONS,
    BackgroundIndex,
    Reduction,
    check_class_vector,
    check_logits,
    check_same_rows,
    check_unit_interval,
    class_vector_length,
    mean_scale,
    prepare_rows,
)
from ._fused import (
    BlockKernel,
    BlockResult,
    LossOutput,
    PositiveColumns,
    attach_gradient,
    block_rows,
    compute_dtype,
    place_positives,
    positive_columns,
    replace_positives,
    run_blocks,
    scale_by,
)

__all__ = ["equalized_focal_factors", "equalized_focal_loss", "equalized_quality_focal_loss"]


def check_equalized_focal_options(gamma_b: float, scale: float) -> tuple[float, float]:
    """EFL's ``γ_b > 0`` and ``s >= 0`` as floats."""
    return (
        check_number("gamma_b", gamma_b, low=0.0, low_open=True),
        check_number("scale", scale, low=0.0),
    )


def equalized_focal_factors(
    grad_ratio: Tensor, gamma_b: float = 2.0, scale: float = 8.0
) -> tuple[Tensor, Tensor]:
    """Per-class ``(focusing, weighting)`` of EFL: ``γ_j = γ_b + s (1 - clamp(g_j, 0, 1))``,
    ``w_j = γ_j / γ_b``."""
    gamma_b, scale = check_equalized_focal_options(gamma_b, scale)
    # γ_b + s (1 - g) written as (γ_b + s) - s g: fewer operations on the hot path
    focusing = (gamma_b + scale) - scale * grad_ratio.clamp(0.0, 1.0)
    return focusing, focusing / gamma_b


def _focal_kernel(
    positives: PositiveColumns,
    quality: Tensor | None,
    focusing: Tensor,
    weighting: Tensor,
    alpha: float | None,
    grad_scale: Tensor | float | None,
    per_entry: bool,
) -> BlockKernel:
    """Every entry is a negative except at most one positive per row (see
    :class:`PositiveColumns`). ``quality`` given: EQFL with these quality targets (0 on
    rows without a positive); else EFL."""
    neg_coef = weighting if alpha is None else (1.0 - alpha) * weighting
    neg_focusing = -focusing

    def kernel(logits: Tensor, rows: slice, grad: Tensor) -> BlockResult:
        columns, weight, pos_row_weight, no_positive = positives.block(rows)
        softplus = F.softplus(logits)
        softplus_neg = softplus - logits  # softplus(-z) = -log σ(z)
        prob = torch.sigmoid(logits)
        modulator = torch.mul(softplus_neg, neg_focusing).exp_()  # σ(z)^γ_j

        # Negative entries: d/dz [σ^γ softplus(z)] = σ^γ (γ (1 - σ) softplus(z) + σ)
        torch.addcmul(prob, softplus * focusing, 1.0 - prob, out=grad)
        grad.mul_(modulator).mul_(neg_coef)
        if weight is not None:
            grad.mul_(weight)

        # The positive entries, one per row; a row without one has a zero coefficient.
        sp = softplus.gather(1, columns)
        p = prob.gather(1, columns)
        coef = scale_by(weighting.take(columns), pos_row_weight)
        if quality is None:
            assert alpha is not None
            neg_gamma = neg_focusing.take(columns)
            sp_neg = softplus_neg.gather(1, columns)
            # α (1 - σ)^γ softplus(-z); (1 - σ)^γ = exp(-γ softplus(z))
            scaled_focal = torch.exp(neg_gamma * sp).mul_(coef).mul_(alpha)
            pos_loss = scaled_focal * sp_neg
            # d/dz = -α (1 - σ)^γ (γ σ softplus(-z) + 1 - σ), with 1 - σ = exp(-softplus(z))
            pos_grad = (neg_gamma * p * sp_neg).sub_(torch.exp(-sp)).mul_(scaled_focal)
        else:
            gamma = focusing.take(columns)
            target = block_rows(quality, rows).to(logits.dtype)
            diff = p - target
            bce = sp - target * logits.gather(1, columns)
            distance = diff.abs()
            modulated = distance.pow(gamma)
            pos_loss = coef * modulated * bce
            pos_grad = coef * (
                gamma * distance.pow(gamma - 1) * diff.sign() * p * (1.0 - p) * bce
                + modulated * diff
            )
        pos_inc, neg_inc = place_positives(grad, columns, no_positive, pos_grad)

        loss = modulator.mul_(softplus).mul_(neg_coef)
        if weight is not None:
            loss.mul_(weight)
        replace_positives(loss, columns, no_positive, pos_loss)
        if grad_scale is not None:
            grad.mul_(grad_scale)
        return BlockResult(loss if per_entry else loss.sum(), pos_inc, neg_inc)

    return kernel


def _focal(
    logits: Tensor,
    target: Tensor,
    scores: Tensor | None,
    focusing: Tensor,
    weighting: Tensor,
    *,
    alpha: float | None,
    avg_factor: float | Tensor | None,
    weight: Tensor | None,
    reduction: Reduction,
    ignore_index: int,
    background_index: BackgroundIndex,
    validate: bool,
) -> LossOutput:
    check_choice("reduction", reduction, REDUCTIONS)
    if alpha is not None:
        alpha = check_number("alpha", alpha, low=0.0, high=1.0)
    num_classes = class_vector_length("focusing", focusing)
    check_logits(logits, num_classes)
    check_class_vector("weighting", weighting, num_classes)
    dtype = compute_dtype(logits)
    rows_shape = logits.shape[:-1]
    rows = prepare_rows(
        target,
        rows_shape,
        num_classes,
        allow_background=True,
        background_index=background_index,
        ignore_index=ignore_index,
        weight=weight,
        dtype=dtype,
        validate=validate,
    )
    assert rows.labels is not None
    positives = positive_columns(
        rows.labels, num_classes, rows.weight, dtype, every_row_positive=False
    )
    assert positives.no_positive is not None  # not every_row_positive
    quality = None
    if scores is not None:
        check_same_rows("score", scores, rows_shape)
        if not scores.is_floating_point():
            raise ValueError(f"score: expected floating quality targets, got {scores.dtype}")
        check_not_differentiated("score", scores)
        # Rows without a positive (background, dropped) read no score; theirs may be
        # anything, NaN included.
        no_positive = positives.no_positive > 0
        column = scores.reshape(-1, 1)
        if reads_values(validate) and column.numel() > 0:
            check_unit_interval("score", column, no_positive)
        quality = column.masked_fill(no_positive, 0.0)

    normaliser: Tensor | float | None = None
    grad_scale: Tensor | float | None = None
    if reduction == "mean":
        if avg_factor is None:
            # dropped rows carry the background label
            normaliser = (rows.labels < num_classes).sum(dtype=dtype)
            grad_scale = mean_scale(normaliser)
        else:
            normaliser = check_avg_factor(avg_factor, logits.device, dtype, validate)
            grad_scale = 1.0 / normaliser
    elif avg_factor is not None:
        raise ValueError(f"avg_factor: only used with reduction='mean', got {reduction!r}")

    per_entry = reduction == "none"
    kernel = _focal_kernel(
        positives,
        quality,
        focusing.to(dtype),
        weighting.to(dtype),
        alpha,
        grad_scale,
        per_entry,
    )
    loss, grad, pos_inc, neg_inc = run_blocks(
        logits,
        kernel,
        num_stat_columns=num_classes,
        channels_first=False,
        loss_kind="entry" if per_entry else "sum",
        keep=rows.keep,
    )
    if grad_scale is not None:
        loss = loss * grad_scale
    loss = attach_gradient(logits, loss, grad)
    return LossOutput(loss, pos_inc, neg_inc, normaliser, rows.num_kept)


def check_avg_factor(
    avg_factor: float | Tensor, device: torch.device, dtype: torch.dtype, validate: bool
) -> Tensor | float:
    """``avg_factor`` as the divisor of ``'mean'``: a finite number > 0, or a one-element
    tensor (moved to ``device`` and ``dtype``) whose value is checked like the labels."""
    if not isinstance(avg_factor, Tensor):
        return check_number("avg_factor", avg_factor, low=0.0, low_open=True)
    if avg_factor.numel() != 1:
        raise ValueError(
            f"avg_factor: expected a number or a one-element tensor, got shape "
            f"{tuple(avg_factor.shape)}"
        )
    if avg_factor.is_complex() or avg_factor.dtype == torch.bool:
        raise ValueError(f"avg_factor: expected a real number, got dtype {avg_factor.dtype}")
    normaliser = avg_factor.detach().reshape(()).to(device=device, dtype=dtype)
    if reads_values(validate):
        positive = (normaliser > 0) & normaliser.isfinite()
        check_values(positive, "avg_factor: expected a finite number > 0, got one that is not")
    return normaliser


def equalized_focal_loss(
    logits: Tensor,
    target: Tensor,
    focusing: Tensor,
    weighting: Tensor,
    *,
    alpha: float = 0.25,
    avg_factor: float | Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    background_index: BackgroundIndex = "last",
    validate: bool = True,
) -> LossOutput:
    r"""Stateless Equalized Focal Loss with explicit per-class factors.

    Args:
        logits: ``(..., C)``, no background column.
        target: integer labels ``(...)`` in ``[0, C]`` (``C`` = background, an all-zero
            target row) or ``ignore_index``.
        focusing: ``(C,)`` ``γ_j`` (see :func:`equalized_focal_factors`).
        weighting: ``(C,)`` ``w_j`` (see :func:`equalized_focal_factors`).
        alpha: the focal balance ``α``.
        avg_factor: the normaliser ``Z`` of ``'mean'``; default the number of positive
            samples, at least 1. Under data parallelism pass the positives averaged over
            ranks, as detectors do.
        weight: optional per-sample weights ``(...)``.
        reduction: ``'mean'`` (sum / ``Z``), ``'sum'`` or ``'none'`` (per entry).

    Returns:
        :class:`LossOutput`: increments ``|dL/dz|`` split by target, unnormalised;
        ``normaliser`` = ``Z`` (for ``'mean'``).

    Shape:
        - logits: ``(..., C)``; target and weight: ``(...)``.

    Example:
        >>> logits = torch.randn(8, 3, requires_grad=True)
        >>> focusing, weighting = equalized_focal_factors(torch.ones(3))
        >>> target = torch.tensor([0, 3, 3, 2, 3, 3, 1, 3])
        >>> out = equalized_focal_loss(logits, target, focusing, weighting)
        >>> out.loss.backward()
    """
    return _focal(
        logits,
        target,
        None,
        focusing,
        weighting,
        alpha=alpha,
        avg_factor=avg_factor,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        background_index=background_index,
        validate=validate,
    )


def equalized_quality_focal_loss(
    logits: Tensor,
    target: Tensor,
    score: Tensor,
    focusing: Tensor,
    weighting: Tensor,
    *,
    avg_factor: float | Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    background_index: BackgroundIndex = "last",
    validate: bool = True,
) -> LossOutput:
    r"""Stateless Equalized Quality Focal Loss.

    .. math::
        L = \frac{1}{Z}\sum_{i,j} w_j\,|t_{ij} - σ(z_{ij})|^{γ_j}\,\mathrm{BCE}(z_{ij}, t_{ij})

    with ``t_ij = q_i`` at the sample's class and 0 elsewhere.

    Args:
        logits: ``(..., C)``.
        target: integer labels ``(...)``, ``C`` = background.
        score: ``(...)`` IoU quality targets in [0, 1] (read on positive rows only).
        focusing: ``(C,)`` ``γ_j`` (see :func:`equalized_focal_factors`).
        weighting: ``(C,)`` ``w_j`` (see :func:`equalized_focal_factors`).
        avg_factor: the normaliser ``Z`` of ``'mean'``; default the number of positive
            samples, at least 1.
        weight: optional per-sample weights ``(...)``.
        reduction: ``'mean'`` (sum / ``Z``), ``'sum'`` or ``'none'`` (per entry).

    Example:
        >>> logits = torch.randn(8, 3, requires_grad=True)
        >>> focusing, weighting = equalized_focal_factors(torch.ones(3))
        >>> target = torch.tensor([0, 3, 3, 2, 3, 3, 1, 3])
        >>> out = equalized_quality_focal_loss(logits, target, torch.rand(8), focusing, weighting)
        >>> out.loss.backward()
    """
    return _focal(
        logits,
        target,
        score,
        focusing,
        weighting,
        alpha=None,
        avg_factor=avg_factor,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        background_index=background_index,
        validate=validate,
    )
