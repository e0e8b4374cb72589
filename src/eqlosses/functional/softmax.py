r"""Cross-entropy on adjusted logits: Softmax-EQL and EQL v1 (softmax form).

Softmax-EQL trains on ``z̃_ij = z_ij + τ log(max(I_j, ε))`` (``I`` the cumulative
positive, or negative, gradient of class ``j``), a cross-entropy on ``z̃`` averaged over
samples. The step's statistics are the true gradient w.r.t. the raw logits,
``(softmax(z̃) - y) / N``, split by target; inference uses the raw logits.

EQL v1's softmax form replaces ``e^{z_k}`` in the denominator by ``w̃_k e^{z_k}`` with
``w̃_k = 1 - β T_k (1 - y_k)``: a dropped entry is a logit of ``-inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..checks import (
    check_choice,
    check_not_differentiated,
    check_number,
    check_tensor,
    check_values,
    checks_on_host,
    reads_values,
)
from ..labels import (
    REDUCTIONS,
    Reduction,
    Rows,
    check_logits,
    class_vector_length,
    mean_scale,
    prepare_rows,
    weighted_rows,
)
from ._fused import (
    BlockKernel,
    BlockResult,
    LossOutput,
    attach_gradient,
    block_rows,
    compute_dtype,
    run_blocks,
    zero_dropped_rows,
)
from ._native import softmax_rows_kernel

__all__ = ["eql_softmax", "softmax_eql", "softmax_eql_adjustment"]

SoftmaxEQLForm = Literal["canonical", "prior"]

# The integer-label kernel works inside the gradient buffer and keeps no block-sized
# temporary, so its blocks can be large: fewer blocks, less per-operation overhead.
SOFTMAX_BLOCK_ELEMENTS = 1 << 20

# Given a block of (already class-adjusted) logits and the rows it covers, returns the
# block with a per-entry adjustment added; constant for autograd.
EntryAdjustment = Callable[[Tensor, slice], Tensor]


def check_softmax_eql_options(tau: float, eps: float, form: str) -> tuple[float, float]:
    """Softmax-EQL's ``τ >= 0`` and ``ε > 0`` as floats, and its ``form``."""
    check_choice("form", form, ("canonical", "prior"))
    return check_number("tau", tau, low=0.0), check_number("eps", eps, low=0.0, low_open=True)


def softmax_eql_adjustment(
    indicator: Tensor, tau: float = 1.0, eps: float = 1e-4, form: SoftmaxEQLForm = "canonical"
) -> Tensor:
    """Per-class additive logit adjustment of Softmax-EQL from the indicator ``I``.

    ``'canonical'``: ``τ log(max(I_j, ε))``. ``'prior'`` (the reference code's other form):
    ``log((I_j / Σ_k I_k)^τ + 1e-9)``, zero while ``I`` is all zero. The two differ where
    ``I_j`` is tiny (a class not yet seen as positive).
    """
    tau, eps = check_softmax_eql_options(tau, eps, form)
    if form == "canonical":
        log_indicator = torch.log(indicator.clamp_min(eps))
        return log_indicator if tau == 1.0 else tau * log_indicator
    total = indicator.sum()
    share = indicator / torch.where(total > 0, total, torch.ones_like(total))
    prior = torch.log(share.pow(tau) + 1e-9)
    return torch.where(total > 0, prior, torch.zeros_like(prior))


def _row_scale(weight: Tensor | None, grad_scale: Tensor | float | None) -> Tensor | float | None:
    """The per-row factor of the gradient: the row's weight times the mean's scale
    (``None``: 1)."""
    if weight is None:
        return grad_scale
    return weight if grad_scale is None else weight * grad_scale


def _class_sums(block: Tensor, weight: Tensor | None, class_dim: int) -> Tensor:
    """``(K,)`` sums of the block's entries over its rows, each row times its ``weight``
    (``None``: 1); ``class_dim`` is the block's class dimension (1 for an image block)."""
    if block.dim() == 3:
        if weight is None:
            return block.sum((0, 2))
        return torch.bmm(block, weight.transpose(1, 2)).sum(0).view(-1)
    threads = torch.get_num_threads() if block.device.type == "cpu" else 1
    if class_dim == 1 and threads > 1 and block.shape[0] % threads == 0:
        # Each intra-op thread sums the rows it wrote in the row-parallel passes before.
        # A plain column sum splits the rows across the threads by column instead; the
        # next write to the block then pulls lines between the cores' caches, which on
        # some runs made that write several times slower than the pass itself.
        shares = block.view(threads, -1, block.shape[1])
        if weight is None:
            return shares.sum(1).sum(0)
        return torch.bmm(weight.view(threads, 1, -1), shares).sum((0, 1))
    if weight is None:
        return block.sum(1 - class_dim)
    if class_dim == 1:
        return torch.mm(weight.t(), block).view(-1)
    return torch.mv(block, weight.view(-1))


def _smallest_exact_probability(dtype: torch.dtype) -> float:
    info = torch.finfo(dtype)
    # p_t = exp(z̃_t - max) / S with S >= 1: from here on both are normal numbers
    return info.tiny / info.eps * 2.0


# per compute dtype, looked up once
_SMALLEST_EXACT_PROBABILITY = {
    dtype: _smallest_exact_probability(dtype) for dtype in (torch.float32, torch.float64)
}


def _target_nll(
    target_prob: Tensor, adjusted: Callable[[], Tensor], class_dim: int, label: Tensor
) -> Tensor:
    """Per row, ``log Σ_j exp(z̃_j) - z̃_t`` from the target's softmax probability ``p_t``:
    ``-log p_t``, exact while ``p_t`` keeps its full precision. A row whose ``p_t`` lies
    below that (a target logit some 70 below the row's largest in float32) takes the
    value from ``logsumexp`` over the block's z̃, computed again by ``adjusted()`` (a
    block-sized buffer, only for such a block). Reads the host once.
    """
    nll = target_prob.log().neg_()
    smallest_exact = _SMALLEST_EXACT_PROBABILITY[target_prob.dtype]
    # a NaN fails the test too; its row keeps its NaN, only rows below the bound change
    if target_prob.numel() > 0 and not float(target_prob.amin()) >= smallest_exact:
        z = adjusted()
        exact = torch.logsumexp(z, class_dim, keepdim=True).sub_(z.gather(class_dim, label))
        nll = torch.where(target_prob < smallest_exact, exact, nll)
    return nll


def _softmax_kernel(
    labels: Tensor | None,
    soft_targets: Tensor | None,
    rows_weight: Tensor | None,
    keep: Tensor | None,
    adjustment: Tensor | None,
    entry_adjustment: EntryAdjustment | None,
    label_smoothing: float,
    grad_scale: Tensor | float | None,
    per_row: bool,
) -> BlockKernel:
    """Block kernel of the cross-entropy; ``labels``, ``rows_weight`` and ``keep`` are
    flat ``(R,)``. ``rows_weight`` ``None``: every row weighs 1.
    ``keep`` (``None``: every row) marks the rows that count; the others enter as zeros,
    whatever their logits hold. A block is ``(rows, K)``, or an image block ``(B, K, P)`` (see
    :func:`~eqlosses.functional._fused.run_blocks`), whose rows are ``(B, 1, P)``."""

    def kernel(logits: Tensor, rows: slice, grad: Tensor) -> BlockResult:
        num_columns = logits.shape[1]
        # An image block is worked on as it lies. A (rows, K) block whose rows run along
        # memory (a channels-first image's positions) is worked on as its (K, rows)
        # transpose, the image's own layout: softmax runs there in place (over the
        # transposed view it would copy first), and the gathers and the scatter read
        # along memory. Per-row quantities take the block's row shape.
        row_shape: tuple[int, ...] | None
        if grad.dim() == 3:
            class_dim, work, row_shape = 1, grad, (grad.shape[0], 1, grad.shape[2])
        elif grad.stride(0) == 1 and num_columns > 1:
            class_dim, work, row_shape = 0, grad.t(), (1, -1)
        else:
            class_dim, work, row_shape = 1, grad, None

        def per_row_values(flat: Tensor) -> Tensor:
            return flat.view(-1, 1) if row_shape is None else flat.view(row_shape)

        def adjusted(out: Tensor) -> Tensor:
            """The block's z̃, written to ``out`` (of the block's shape); as worked on."""
            if adjustment is None:
                out.copy_(logits)
            else:
                torch.add(logits, adjustment.view(-1, 1) if out.dim() == 3 else adjustment, out=out)
            if keep is not None:
                zero_dropped_rows(out, block_rows(keep, rows), out=out)
            if entry_adjustment is not None:
                # given (rows, K) blocks only (see cross_entropy_blocks)
                out.copy_(entry_adjustment(out, rows))
            return out.t() if class_dim == 0 else out

        # grad holds z̃, then softmax(z̃), then the gradient: no other block-sized buffer
        adjusted(grad)
        # On the host a hard label's loss is read off the softmax, -log p_t (see
        # _target_nll), which spares the two passes for the rows' maxima.
        from_softmax = soft_targets is None and label_smoothing == 0 and checks_on_host(grad)

        weight = None if rows_weight is None else per_row_values(block_rows(rows_weight, rows))
        if soft_targets is not None:
            # soft targets come with (N, C) logits, whose blocks are row-major
            target = block_rows(soft_targets, rows).to(logits.dtype)
            target_logit = (target * grad).sum(1, keepdim=True)
        else:
            assert labels is not None
            flat_label = block_rows(labels, rows)
            label = per_row_values(flat_label)
            if not from_softmax:
                target_logit = work.gather(class_dim, label)
            mean_logit = work.mean(class_dim, keepdim=True) if label_smoothing > 0 else None
        shift = None if from_softmax else work.amax(class_dim, keepdim=True)
        # softmax reads a row before it writes it, so it may write over its input
        torch.softmax(work, class_dim, out=work)
        if shift is not None:
            # The row's largest entry is exp(0) / Σ_j exp(z̃_j - max) in the softmax, at
            # least 1 / K, so it never underflows: log Σ_j exp(z̃_j) = max - log(max_j p_j)
            # holds however far below the maximum the target's logit lies.
            log_norm = shift.sub_(work.amax(class_dim, keepdim=True).log_())

        if soft_targets is not None:
            target_mass = target.sum(1, keepdim=True)
            loss = log_norm * target_mass - target_logit
            grad.mul_(target_mass).sub_(target)
            magnitude = grad.abs() if weight is None else grad.abs().mul_(weight)
            pos_inc = (magnitude * target).sum(0)
            neg_inc = magnitude.sum(0) - pos_inc
            scale = _row_scale(weight, grad_scale)
            if scale is not None:
                grad.mul_(scale)
        elif label_smoothing == 0:
            # The target entries stay in place for the column sums (no zeroing scatter),
            # which lose their targets' share afterwards.
            weighted_prob = work.gather(class_dim, label)
            if from_softmax:
                loss = _target_nll(
                    weighted_prob, lambda: adjusted(torch.empty_like(grad)), class_dim, label
                )
            else:
                loss = log_norm - target_logit
            if weight is not None:
                weighted_prob.mul_(weight)
            neg_inc = _class_sums(work, weight, class_dim)
            flat_prob = weighted_prob.view(-1)
            # the target entries' gradient is w (p - 1); its magnitude w (1 - p)
            if weight is None:
                pos_magnitude = 1.0 - flat_prob
                # p - 1 in place, scaled with the rest of the block
                work.scatter_(class_dim, label, -1.0, reduce="add")
                if grad_scale is not None:
                    work.mul_(grad_scale)
            else:
                magnitude = weight - weighted_prob
                row_scale = _row_scale(weight, grad_scale)
                assert row_scale is not None  # a weight makes one
                work.mul_(row_scale)
                target_grad = magnitude.neg() if grad_scale is None else magnitude * -grad_scale
                work.scatter_(class_dim, label, target_grad)
                pos_magnitude = magnitude.view(-1)
            # the targets' share comes out of the column sums: clamped, so that rounding
            # cannot leave a class a (tiny) negative magnitude
            neg_inc.index_add_(0, flat_label, flat_prob, alpha=-1.0).clamp_min_(0.0)
            pos_inc = torch.zeros(num_columns, dtype=logits.dtype, device=logits.device)
            pos_inc.index_add_(0, flat_label, pos_magnitude)
        else:
            assert mean_logit is not None
            smooth = label_smoothing / num_columns
            loss = (1.0 - label_smoothing) * (log_norm - target_logit) + label_smoothing * (
                log_norm - mean_logit
            )
            work.sub_(smooth)
            target_grad = work.gather(class_dim, label) - (1.0 - label_smoothing)
            # The statistics split by the hard label, so the smoothing mass on the other
            # columns counts as negative gradient.
            work.scatter_(class_dim, label, 0.0)
            neg_inc = _class_sums(work.abs(), weight, class_dim)
            scale = _row_scale(weight, grad_scale)
            if scale is not None:
                work.mul_(scale)
            target_magnitude = target_grad.abs() if weight is None else weight * target_grad.abs()
            work.scatter_(class_dim, label, target_grad if scale is None else target_grad * scale)
            pos_inc = torch.zeros(num_columns, dtype=logits.dtype, device=logits.device)
            pos_inc.index_add_(0, flat_label, target_magnitude.view(-1))
        if weight is not None:
            loss = loss.mul_(weight)
        return BlockResult(loss.reshape(-1) if per_row else loss.sum(), pos_inc, neg_inc)

    return kernel


def _native_rows(
    logits: Tensor,
    rows: Rows,
    rows_shape: Sequence[int],
    adjustment: Tensor | None,
    grad_scale: Tensor | float | None,
    per_row: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Loss, gradient and increments from the native CPU kernel (see
    :mod:`~eqlosses.functional._native`) for hard labels without label smoothing or a
    per-entry adjustment, where it covers the logits: contiguous ``(N, C)`` or
    channels-first ``(N, C, d1, ...)`` on the CPU. ``None`` elsewhere, or where it is not
    built."""
    assert rows.labels is not None
    if logits.device.type != "cpu" or not logits.is_contiguous() or torch.compiler.is_compiling():
        return None
    kernel = softmax_rows_kernel()
    if kernel is None:
        return None
    dtype = compute_dtype(logits)
    # float16 and bfloat16 logits are computed in float32, as on the PyTorch path
    work = logits.detach() if logits.dtype == dtype else logits.detach().to(dtype)
    if work.dim() > 2:
        work = work.view(work.shape[0], work.shape[1], math.prod(work.shape[2:]))
    grad = torch.empty(logits.shape, dtype=dtype)
    # the mean's scale: a plain number where the count is known on the host
    nll, pos_inc, neg_inc = kernel(
        work,
        adjustment,
        rows.labels.contiguous(),
        rows.weight,
        grad_scale if isinstance(grad_scale, Tensor) else None,
        grad_scale if isinstance(grad_scale, float) else 1.0,
        grad.view(work.shape),
    )
    return (nll.view(rows_shape) if per_row else nll.sum()), grad, pos_inc, neg_inc


def cross_entropy_blocks(
    logits: Tensor,
    target: Tensor,
    *,
    num_classes: int,
    adjustment: Tensor | None,
    entry_adjustment: EntryAdjustment | None,
    weight: Tensor | None,
    reduction: Reduction,
    ignore_index: int,
    label_smoothing: float,
    validate: bool,
) -> LossOutput:
    """The fused cross-entropy every softmax-family loss runs on.

    Cross-entropy on ``logits + adjustment`` (a per-class vector) plus, per block, an
    ``entry_adjustment`` (per sample and class, e.g. EQL's dropped entries or Seesaw's
    ``log S``); both are constants for autograd. Statistics as :func:`softmax_eql`.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    class_dim = 1 if isinstance(logits, Tensor) and logits.dim() > 2 else -1
    check_logits(logits, num_classes, class_dim=class_dim)
    check_tensor("target", target)
    dtype = compute_dtype(logits)
    rows_shape = (logits.shape[0], *logits.shape[2:]) if class_dim == 1 else logits.shape[:-1]

    soft: Tensor | None = None
    if target.is_floating_point():
        if logits.dim() != 2 or target.shape != logits.shape:
            raise ValueError(
                f"target: expected soft targets of shape {tuple(logits.shape)} for (N, C) "
                f"logits, got {tuple(target.shape)}"
            )
        check_not_differentiated("target", target)
        rows = weighted_rows(weight, rows_shape, dtype, validate)
        soft = target
        if reads_values(validate) and soft.numel() > 0:
            # NaN fails too; rows that do not count may hold anything
            negative = ~(soft >= 0)
            if rows.keep is not None:
                negative = negative & rows.keep.unsqueeze(1)
            check_values(
                ~negative, "target: expected non-negative soft targets, got negative (or NaN)"
            )
        if label_smoothing > 0:
            # as F.cross_entropy smooths probability targets
            soft = soft * (1.0 - label_smoothing) + label_smoothing / num_classes
        if rows.keep is not None:
            soft = torch.where(rows.keep.unsqueeze(1), soft, 0.0)
    else:
        rows = prepare_rows(
            target,
            rows_shape,
            num_classes,
            allow_background=False,
            ignore_index=ignore_index,
            weight=weight,
            dtype=dtype,
            validate=validate,
        )
    grad_scale = mean_scale(rows.num_kept) if reduction == "mean" else None
    per_row = reduction == "none"
    block_adjustment = None if adjustment is None else adjustment.to(dtype)
    native = None
    if soft is None and entry_adjustment is None and label_smoothing == 0:
        native = _native_rows(logits, rows, rows_shape, block_adjustment, grad_scale, per_row)
    if native is not None:
        loss, grad, pos_inc, neg_inc = native
    else:
        kernel = _softmax_kernel(
            rows.labels,
            soft,
            rows.weight,
            rows.keep,
            block_adjustment,
            entry_adjustment,
            label_smoothing,
            grad_scale,
            per_row,
        )
        loss, grad, pos_inc, neg_inc = run_blocks(
            logits,
            kernel,
            num_stat_columns=num_classes,
            channels_first=class_dim == 1,
            loss_kind="row" if per_row else "sum",
            block_elements=SOFTMAX_BLOCK_ELEMENTS,
            one_thread=False,
            # an entry adjustment (Seesaw's, per pixel) works on (rows, K) blocks
            image_blocks=entry_adjustment is None,
        )
    if grad_scale is not None:
        loss = loss * grad_scale
    loss = attach_gradient(logits, loss, grad, class_dim=1)
    count = rows.num_kept
    return LossOutput(loss, pos_inc, neg_inc, count if reduction == "mean" else None, count)


def softmax_eql(
    logits: Tensor,
    target: Tensor,
    adjustment: Tensor,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    validate: bool = True,
) -> LossOutput:
    r"""Stateless Softmax-EQL: cross-entropy on ``logits + adjustment``.

    .. math::
        L = -\frac{1}{N}\sum_i \sum_j t_{ij} \log \mathrm{softmax}(z_i + a)_j,
        \qquad a_j = τ \log\max(I_j, ε)

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)`` (per pixel).
        target: integer labels ``(N)`` / ``(N, d1, ...)`` in ``[0, C)`` or
            ``ignore_index``; or soft targets ``(N, C)``.
        adjustment: ``(C,)`` the additive adjustment ``a`` (see
            :func:`softmax_eql_adjustment`).
        weight: optional per-sample weights, the shape of the labels.
        reduction: ``'mean'`` over non-ignored samples, ``'sum'``, or ``'none'``
            (per sample).
        ignore_index: label of samples to drop.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        validate: check label values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput`: increments ``|softmax(z̃) - t|`` split by the label (soft
        targets: weighted by ``t`` and ``1 - t``), ``normaliser`` = number of samples for
        ``'mean'``.

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``; target: ``(N)``, ``(N, d1, ...)`` or
          ``(N, C)``.

    Example:
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> adjustment = softmax_eql_adjustment(torch.tensor([5.0, 1.0, 0.0]))
        >>> out = softmax_eql(logits, torch.tensor([0, 2, 1, 0]), adjustment)
        >>> out.loss.backward()
    """
    num_classes = class_vector_length("adjustment", adjustment)
    return cross_entropy_blocks(
        logits,
        target,
        num_classes=num_classes,
        adjustment=adjustment,
        entry_adjustment=None,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        validate=validate,
    )


def eql_softmax(
    logits: Tensor,
    target: Tensor,
    rare: Tensor,
    drop_prob: float,
    *,
    generator: torch.Generator | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    validate: bool = True,
) -> LossOutput:
    r"""Stateless EQL v1, softmax form.

    .. math::
        \tilde p_j = \frac{e^{z_j}}{\sum_k \tilde w_k e^{z_k}}, \qquad
        \tilde w_k = 1 - β\,T_k\,(1 - y_k), \quad β \sim \mathrm{Bernoulli}(γ)

    ``β`` is drawn per (sample, class) entry as
    ``torch.rand(logits.shape, generator=generator) < drop_prob``.

    Args:
        logits: ``(N, C)``.
        target: integer labels ``(N,)`` in ``[0, C)`` or ``ignore_index``.
        rare: ``(C,)`` bool or 0/1, ``T_k``.
        drop_prob: ``γ``, the probability that a rare negative is dropped.
        generator: the random source of ``β`` (seed it for reproducible runs).

    Example:
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> out = eql_softmax(logits, torch.tensor([0, 2, 1, 0]), torch.tensor([0, 1, 1]), 0.9)
        >>> out.loss.backward()
    """
    check_logits(logits, class_vector_length("rare", rare))
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(logits.shape)}")
    check_number("drop_prob", drop_prob, low=0.0, high=1.0)
    num_classes = rare.shape[0]
    if check_tensor("target", target).is_floating_point():
        raise ValueError(f"target: EQL v1 takes integer labels, got dtype {target.dtype}")
    # the labels and weights are checked before anything is drawn: a call that raises
    # leaves the generator where it was
    rows = prepare_rows(
        target,
        logits.shape[:1],
        num_classes,
        allow_background=False,
        ignore_index=ignore_index,
        weight=weight,
        dtype=compute_dtype(logits),
        validate=validate,
    )
    assert rows.labels is not None
    draw = torch.rand(logits.shape, generator=generator, device=logits.device) < drop_prob
    # the target entry of each row is never dropped (an unchecked out-of-range label
    # marks none: it lands in a spare last column), nor is any entry of a row that does
    # not count, whose logits the kernel replaces by zeros
    labels = rows.labels
    in_range = (labels >= 0) & (labels < num_classes)
    target_column = torch.where(in_range, labels, num_classes).unsqueeze(1)
    is_target = torch.zeros(
        logits.shape[0], num_classes + 1, dtype=torch.bool, device=logits.device
    ).scatter_(1, target_column, True)[:, :num_classes]
    dropped = draw & rare.to(device=logits.device, dtype=torch.bool) & ~is_target
    if rows.keep is not None:
        dropped = dropped & rows.keep.unsqueeze(1)
    return cross_entropy_blocks(
        logits,
        target,
        num_classes=num_classes,
        adjustment=None,
        # a non-finite logit stays in, so the loss shows it and the step is dropped
        entry_adjustment=lambda block, rows: block.masked_fill(
            dropped[rows] & block.isfinite(), float("-inf")
        ),
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=0.0,
        validate=False,  # checked above
    )
