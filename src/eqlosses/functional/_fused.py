"""The machinery every fused loss shares: row chunking and a precomputed gradient.

A fused loss walks the logits in blocks of rows (one row = one sample's class scores),
computing the loss, its gradient with respect to the logits and the statistics
increments together while a block is small enough to stay in cache. The gradient is
stored in float32 (float64 for float64 logits) and attached to the loss with
:class:`_AttachGradient`, so backward is at most one elementwise multiply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

# Elements per block: small enough that a few block-sized temporaries stay in cache,
# large enough that the per-operation overhead of a block is amortised.
BLOCK_ELEMENTS = 1 << 17


class LossOutput(NamedTuple):
    """What a functional equalization loss returns.

    Attributes:
        loss: the reduced loss (or per-entry / per-sample losses for ``reduction='none'``).
        pos_increment: ``(C,)`` this step's summed gradient magnitude on positive entries,
            not yet divided by ``normaliser``.
        neg_increment: ``(C,)`` the same for negative entries.
        normaliser: the count that divides the increments once they are summed over
            processes (``None``: the statistics are not normalised).
        num_samples: the number of samples (rows) that were not ignored.
    """

    loss: Tensor
    pos_increment: Tensor
    neg_increment: Tensor
    normaliser: Tensor | None
    num_samples: Tensor


def compute_dtype(logits: Tensor) -> torch.dtype:
    """float64 logits are computed in float64; everything else in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class BlockResult(NamedTuple):
    """One block's share: its loss (summed, or per entry / per row) and increments."""

    loss: Tensor
    pos_increment: Tensor
    neg_increment: Tensor


# A block kernel gets the block's logits (rows, K) in the compute dtype (possibly a
# strided view), the slice of rows it covers, and the (rows, K) view of the gradient to
# fill; it must not write to the logits.
BlockKernel = Callable[[Tensor, slice, Tensor], BlockResult]


def _blocks(num_rows: int, num_columns: int, block_elements: int) -> Iterator[slice]:
    step = max(1, block_elements // max(num_columns, 1))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def place_positives(
    grad: Tensor, pos_rows: Tensor, pos_cols: Tensor, pos_grad: Tensor
) -> tuple[Tensor, Tensor]:
    """Put the positives' gradient into a block that holds the negative-entry gradient.

    ``grad`` holds, for every entry, the gradient it would have as a negative (all
    non-negative); the entries ``(pos_rows, pos_cols)`` are the block's positives, whose
    own gradient is ``pos_grad``. Returns this block's ``(pos_increment, neg_increment)``,
    the per-column sums of the gradient magnitudes split by positive and negative.
    """
    # Zeroed first, so the column sums count the negatives only.
    grad[pos_rows, pos_cols] = 0
    neg_increment = grad.sum(0)
    grad[pos_rows, pos_cols] = pos_grad
    pos_increment = torch.zeros_like(neg_increment).index_add_(0, pos_cols, pos_grad.abs())
    return pos_increment, neg_increment


# torch.compile would unroll the block loop into thousands of graph nodes for a detector
# head; the blocks are fused by hand already, so the compiled graph breaks here on purpose.
@torch.compiler.disable  # type: ignore[untyped-decorator]
def run_blocks(
    logits: Tensor,
    kernel: BlockKernel,
    *,
    num_stat_columns: int,
    channels_first: bool,
    loss_kind: str,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run ``kernel`` over the rows of ``logits``; returns loss, gradient and increments.

    Rows are the leading dimensions of a ``(..., K)`` tensor, or for ``channels_first``
    the positions ``(n, d1, ...)`` of an ``(N, K, d1, ...)`` tensor, numbered in that
    order. ``loss_kind`` says what the kernels return: ``'sum'`` a scalar, ``'entry'`` a
    per-entry block (the result has the logits' shape), ``'row'`` a per-row vector (the
    result has the logits' shape without the class dimension).
    """
    logits = logits.detach()
    dtype = compute_dtype(logits)
    device = logits.device
    grad = torch.empty(logits.shape, dtype=dtype, device=device)
    pos_total = torch.zeros(num_stat_columns, dtype=dtype, device=device)
    neg_total = torch.zeros(num_stat_columns, dtype=dtype, device=device)

    if channels_first:
        batch, num_columns = logits.shape[0], logits.shape[1]
        positions = math.prod(logits.shape[2:])
        logits_3d = logits.reshape(batch, num_columns, positions)
        grad_3d = grad.view(batch, num_columns, positions)
        views: list[tuple[slice, Tensor, Tensor]] = []
        for n in range(batch):
            for block in _blocks(positions, num_columns, block_elements):
                rows = slice(n * positions + block.start, n * positions + block.stop)
                views.append((rows, logits_3d[n, :, block].t(), grad_3d[n, :, block].t()))
        loss_shape = (logits.shape[0], *logits.shape[2:])
    else:
        num_columns = logits.shape[-1]
        logits_2d = logits.reshape(-1, num_columns)
        grad_2d = grad.view(-1, num_columns)
        blocks = _blocks(logits_2d.shape[0], num_columns, block_elements)
        views = [(b, logits_2d[b], grad_2d[b]) for b in blocks]
        loss_shape = tuple(logits.shape) if loss_kind == "entry" else tuple(logits.shape[:-1])

    parts: list[Tensor] = []
    # The kernels choose their own precision; autocast must not lower their products.
    with torch.autocast(device.type, enabled=False):
        for rows, logit_view, grad_view in views:
            # Channels-first blocks stay strided views (rows along memory): no transposed
            # copies; the kernels write the gradient straight into the result.
            result = kernel(logit_view.to(dtype), rows, grad_view)
            pos_total += result.pos_increment
            neg_total += result.neg_increment
            parts.append(result.loss)

    if loss_kind == "sum":
        loss = torch.stack(parts).sum() if parts else torch.zeros((), dtype=dtype, device=device)
    elif parts:
        loss = torch.cat([p.reshape(-1) for p in parts]).reshape(loss_shape)
    else:
        loss = torch.zeros(loss_shape, dtype=dtype, device=device)
    return loss, grad, pos_total, neg_total


class _AttachGradient(torch.autograd.Function):
    """Returns ``loss`` unchanged; its gradient w.r.t. ``logits`` is ``grad_output * grad``."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        loss: Tensor,
        grad: Tensor,
        class_dim: int,
    ) -> Tensor:
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        ctx.class_dim = class_dim
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad_output.numel() == 1 and float(grad_output) == 1.0:
            # The usual loss.backward(): hand out the saved buffer itself, so backward
            # allocates nothing logit-sized. It is never written to, so a retained graph
            # can run backward again.
            result = grad
        else:
            upstream = grad_output.to(grad.dtype)
            if 0 < upstream.dim() < grad.dim():
                # per-sample losses of a softmax loss: broadcast over the class dimension
                upstream = upstream.unsqueeze(ctx.class_dim)
            result = grad * upstream
        return result.to(ctx.logits_dtype), None, None, None


def attach_gradient(logits: Tensor, loss: Tensor, grad: Tensor, class_dim: int = -1) -> Tensor:
    """Make ``loss`` differentiable w.r.t. ``logits`` with the precomputed ``grad``.

    The loss comes back in the logits' dtype, or in float32 under autocast, as PyTorch's
    own losses do (a float16 loss would overflow once a GradScaler multiplies it).
    """
    if not torch.is_autocast_enabled(logits.device.type):
        loss = loss.to(logits.dtype)
    elif loss.dtype != torch.float64:
        loss = loss.float()
    out: Tensor = _AttachGradient.apply(logits, loss.detach(), grad, class_dim)  # type: ignore[no-untyped-call]
    return out
