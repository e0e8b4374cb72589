r"""Weighted sigmoid cross-entropy: Sigmoid-EQL (EQLv2) and EQL v1 (sigmoid form).

Both are a binary cross-entropy per (sample, class) entry with a weight that depends on
whether the entry is positive or negative:

.. math::
    L = \frac{1}{N}\sum_{i,j} W_{ij}\,\mathrm{BCE}(z_{ij}, y_{ij}), \qquad
    W_{ij} = q_j\, y_{ij} + r_{ij}\,(1 - y_{ij})

Sigmoid-EQL: ``r_j = f(g_j) = 1 / (1 + exp(-γ (g_j - μ)))`` and ``q_j = 1 + α (1 - r_j)``.
EQL v1: ``q = 1`` and ``r_ij = 1 - E_i T_j``: negatives of rare classes are dropped on
foreground samples only.

The step's statistics are ``|σ(z) - y| · W`` split by ``y`` and summed over samples, not
divided by ``N``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import (
    check_choice,
    check_not_differentiated,
    check_number,
    check_tensor,
    reads_values,
)
from ..labels import (
    REDUCTIONS,
    BackgroundIndex,
    Reduction,
    check_class_vector,
    check_logits,
    check_unit_interval,
    class_vector_length,
    mean_scale,
    prepare_rows,
    weighted_rows,
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

__all__ = ["eql_sigmoid", "sigmoid_eql", "sigmoid_eql_factors"]


def check_sigmoid_eql_options(gamma: float, mu: float, alpha: float) -> tuple[float, float, float]:
    """Sigmoid-EQL's mapping options as floats: ``γ > 0``, ``μ`` finite, ``α >= 0``."""
    return (
        check_number("gamma", gamma, low=0.0, low_open=True),
        check_number("mu", mu),
        check_number("alpha", alpha, low=0.0),
    )


def sigmoid_eql_factors(
    grad_ratio: Tensor, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Per-class ``(pos_weight, neg_weight)`` of Sigmoid-EQL from the ratio ``g``.

    ``neg_weight = 1 / (1 + exp(-gamma (g - mu)))``, ``pos_weight = 1 + alpha (1 - neg_weight)``.
    """
    gamma, mu, alpha = check_sigmoid_eql_options(gamma, mu, alpha)
    neg_weight = torch.sigmoid(gamma * (grad_ratio - mu))
    pos_weight = (1.0 + alpha) - alpha * neg_weight
    return pos_weight, neg_weight


def _index_kernel(
    positives: PositiveColumns,
    pos_weight: Tensor | None,
    neg_weight: Tensor | None,
    foreground: Tensor | None,
    foreground_drop: Tensor | None,
    grad_scale: Tensor | float | None,
    per_entry: bool,
) -> BlockKernel:
    """Block kernel for integer labels: every entry is a negative except at most one
    positive per row (see :class:`PositiveColumns`). A class weight of ``None`` is 1 for
    every class. EQL v1 passes no class weights but ``foreground_drop`` (``T``): a row
    with 1 in ``foreground`` (``(rows, 1)``) weighs the negative of class ``j`` by
    ``1 - T_j``."""

    def kernel(logits: Tensor, rows: slice, grad: Tensor) -> BlockResult:
        columns, weight, pos_row_weight, no_positive = positives.block(rows)
        entry_neg: Tensor | None = neg_weight
        if foreground is not None and foreground_drop is not None:
            # 1 - E_i T_j in one pass (a broadcasting where with a scalar is slower)
            block_foreground = block_rows(foreground, rows)
            entry_neg = torch.addcmul(
                block_foreground.new_ones(()), block_foreground, foreground_drop, value=-1.0
            )
        prob = torch.sigmoid(logits)
        softplus = F.softplus(logits)

        if entry_neg is None:
            grad.copy_(prob)
        else:
            torch.mul(prob, entry_neg, out=grad)
        if weight is not None:
            grad.mul_(weight)
        pos_coef = pos_row_weight
        if pos_weight is not None:
            pos_coef = scale_by(pos_weight.take(columns), pos_row_weight)
        pos_grad = scale_by(prob.gather(1, columns) - 1.0, pos_coef)
        pos_inc, neg_inc = place_positives(grad, columns, no_positive, pos_grad)

        pos_loss = scale_by(softplus.gather(1, columns) - logits.gather(1, columns), pos_coef)
        loss = softplus if entry_neg is None else softplus.mul_(entry_neg)
        if weight is not None:
            loss.mul_(weight)
        replace_positives(loss, columns, no_positive, pos_loss)
        if grad_scale is not None:
            grad.mul_(grad_scale)
        return BlockResult(loss if per_entry else loss.sum(), pos_inc, neg_inc)

    return kernel


def _soft_kernel(
    targets: Tensor,
    rows_weight: Tensor | None,
    pos_weight: Tensor,
    neg_weight: Tensor,
    grad_scale: Tensor | float | None,
    per_entry: bool,
) -> BlockKernel:
    """Block kernel for float targets in [0, 1] (multi-hot or soft)."""

    def kernel(logits: Tensor, rows: slice, grad: Tensor) -> BlockResult:
        target = block_rows(targets, rows)
        entry_weight = neg_weight + (pos_weight - neg_weight) * target
        if rows_weight is not None:
            entry_weight.mul_(block_rows(rows_weight, rows).unsqueeze(1))
        torch.sub(torch.sigmoid(logits), target, out=grad)
        magnitude = grad.abs().mul_(entry_weight)
        pos_inc = (magnitude * target).sum(0)
        neg_inc = magnitude.sum(0) - pos_inc
        grad.mul_(entry_weight)
        loss = (F.softplus(logits) - target * logits).mul_(entry_weight)
        if grad_scale is not None:
            grad.mul_(grad_scale)
        return BlockResult(loss if per_entry else loss.sum(), pos_inc, neg_inc)

    return kernel


def _weighted_bce(
    logits: Tensor,
    target: Tensor,
    pos_weight: Tensor | None,
    neg_weight: Tensor | None,
    *,
    num_classes: int,
    objectness: bool,
    foreground_drop: Tensor | None,
    weight: Tensor | None,
    reduction: Reduction,
    ignore_index: int,
    background_index: BackgroundIndex,
    validate: bool,
) -> LossOutput:
    check_choice("reduction", reduction, REDUCTIONS)
    num_columns = num_classes + 1 if objectness else num_classes
    check_logits(logits, num_columns)
    check_tensor("target", target)
    dtype = compute_dtype(logits)
    rows_shape = logits.shape[:-1]
    # None: weight 1 for every class (EQL v1), and no soft targets or objectness
    pos_w: Tensor | None = None
    neg_w: Tensor | None = None
    if pos_weight is not None and neg_weight is not None:
        check_class_vector("pos_weight", pos_weight, num_classes)
        check_class_vector("neg_weight", neg_weight, num_classes)
        class_weights = torch.stack([pos_weight, neg_weight]).to(dtype)
        if objectness:
            # The objectness column is in the loss with weight 1 and out of the statistics.
            class_weights = F.pad(class_weights, (0, 1), value=1.0)
        pos_w, neg_w = class_weights
    drop = None if foreground_drop is None else foreground_drop.to(dtype)

    per_entry = reduction == "none"
    grad_scale: Tensor | float | None
    if target.is_floating_point():
        if target.shape != (*rows_shape, num_classes):
            raise ValueError(
                f"target: expected float targets of shape {(*rows_shape, num_classes)}, got "
                f"{tuple(target.shape)}"
            )
        check_not_differentiated("target", target)
        rows = weighted_rows(weight, rows_shape, dtype, validate)
        soft = target.reshape(-1, num_classes).to(dtype)
        if reads_values(validate) and soft.numel() > 0:
            dropped = None if rows.keep is None else ~rows.keep.unsqueeze(1)
            check_unit_interval("target", soft, dropped)
        if rows.keep is not None:
            soft = torch.where(rows.keep.unsqueeze(1), soft, 0.0)
        if objectness:
            background = (soft.sum(1, keepdim=True) == 0).to(dtype)
            soft = torch.cat([soft, background], dim=1)
        grad_scale = mean_scale(rows.num_kept) if reduction == "mean" else None
        assert pos_w is not None and neg_w is not None  # EQL v1 takes integer labels only
        kernel = _soft_kernel(soft, rows.weight, pos_w, neg_w, grad_scale, per_entry)
    else:
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
        grad_scale = mean_scale(rows.num_kept) if reduction == "mean" else None
        # Label C is a positive in the background column with objectness; without
        # that column a background row has no positive entry. Unchecked labels may lie
        # beyond the columns: they are rows without a positive.
        checked = objectness and reads_values(validate)
        positives = positive_columns(
            rows.labels, num_columns, rows.weight, dtype, every_row_positive=checked
        )
        foreground = None if drop is None else (rows.labels < num_classes).to(dtype).unsqueeze(1)
        kernel = _index_kernel(positives, pos_w, neg_w, foreground, drop, grad_scale, per_entry)
    loss, grad, pos_inc, neg_inc = run_blocks(
        logits,
        kernel,
        num_stat_columns=num_columns,
        channels_first=False,
        loss_kind="entry" if per_entry else "sum",
        keep=rows.keep,
    )
    if grad_scale is not None:
        loss = loss * grad_scale
    loss = attach_gradient(logits, loss, grad)
    if objectness:
        pos_inc, neg_inc = pos_inc[:num_classes], neg_inc[:num_classes]
    return LossOutput(loss, pos_inc, neg_inc, None, rows.num_kept)


def sigmoid_eql(
    logits: Tensor,
    target: Tensor,
    pos_weight: Tensor,
    neg_weight: Tensor,
    *,
    objectness: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    background_index: BackgroundIndex = "last",
    validate: bool = True,
) -> LossOutput:
    r"""Stateless Sigmoid-EQL: weighted BCE with explicit per-class factors.

    .. math::
        L = \frac{1}{N}\sum_{i,j} \big(q_j y_{ij} + r_j (1 - y_{ij})\big)\,
            \mathrm{BCE}(z_{ij}, y_{ij})

    Args:
        logits: ``(..., C)``, or ``(..., C + 1)`` with ``objectness=True`` (background
            column last).
        target: integer labels ``(...)`` in ``[0, C]`` (``C`` = background) or
            ``ignore_index``; or float multi-hot targets ``(..., C)``.
        pos_weight: ``(C,)`` the factors ``q``.
        neg_weight: ``(C,)`` the factors ``r``.
        objectness: the reference two-stage layout: a last background column, in the loss
            with weight 1 and left out of the statistics.
        weight: optional per-sample weights ``(...)``, scaling loss and statistics.
        reduction: ``'mean'`` (sum over entries / number of non-ignored samples),
            ``'sum'`` or ``'none'`` (per entry, the logits' shape).
        ignore_index: label of rows to drop.
        background_index: ``'last'`` (label ``C``) or ``'first'`` (label 0, classes 1..C).
        validate: check label values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput`; the increments are ``|σ(z) - y|·W`` split by ``y``, summed
        over samples, ``normaliser=None``.

    Shape:
        - logits: ``(..., C)`` or ``(..., C + 1)``; target: ``(...)`` or ``(..., C)``.

    Example:
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> q, r = sigmoid_eql_factors(torch.full((3,), 100.0))
        >>> out = sigmoid_eql(logits, torch.tensor([0, 2, 3, 1]), q, r)
        >>> out.loss.backward()
    """
    return _weighted_bce(
        logits,
        target,
        pos_weight,
        neg_weight,
        num_classes=class_vector_length("pos_weight", pos_weight),
        objectness=objectness,
        foreground_drop=None,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        background_index=background_index,
        validate=validate,
    )


def eql_sigmoid(
    logits: Tensor,
    target: Tensor,
    rare: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    background_index: BackgroundIndex = "last",
    validate: bool = True,
) -> LossOutput:
    r"""Stateless EQL v1, sigmoid form.

    .. math::
        L = \frac{1}{N}\sum_{i,j} \big(1 - E_i T_j (1 - y_{ij})\big)\,
            \mathrm{BCE}(z_{ij}, y_{ij})

    ``E_i`` is 1 for a foreground sample, ``T_j`` (``rare``) is 1 for a class whose
    frequency is under the threshold λ: the negative gradients of rare classes are
    dropped on foreground samples; background samples keep all of theirs.

    Args:
        logits: ``(..., C)``.
        target: integer labels ``(...)`` in ``[0, C]``, ``C`` = background.
        rare: ``(C,)`` bool or 0/1 float, ``T_j``.
        weight: optional per-sample weights ``(...)``, scaling loss and statistics.
        reduction: ``'mean'`` (sum over entries / number of non-ignored samples),
            ``'sum'`` or ``'none'`` (per entry, the logits' shape).
        ignore_index: label of rows to drop.
        background_index: ``'last'`` (label ``C``) or ``'first'`` (label 0, classes 1..C).
        validate: check label values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput` with the same statistics as :func:`sigmoid_eql` (used for
        diagnostics only; EQL v1 does not feed them back).

    Example:
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> out = eql_sigmoid(logits, torch.tensor([0, 2, 3, 1]), torch.tensor([0, 1, 1]))
        >>> out.loss.backward()
    """
    num_classes = class_vector_length("rare", rare)
    if check_tensor("target", target).is_floating_point():
        raise ValueError(f"target: EQL v1 takes integer labels, got dtype {target.dtype}")
    return _weighted_bce(
        logits,
        target,
        None,
        None,
        num_classes=num_classes,
        objectness=False,
        foreground_drop=rare,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        background_index=background_index,
        validate=validate,
    )
