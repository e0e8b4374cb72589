"""The machinery every fused loss shares: row chunking and a precomputed gradient.

A fused loss walks the logits in blocks of rows (one row = one sample's class scores),
computing the loss, its gradient with respect to the logits and the statistics
increments together while a block is small enough to stay in cache. The gradient is
stored in float32 (float64 for float64 logits) and attached to the loss with
:class:`_AttachGradient`, so backward is at most one elementwise multiply.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..checks import checks_on_host

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

    A count known without reading the labels on the device (no row ignored) is a Python
    number, so that no operation is spent on it.
    """

    loss: Tensor
    pos_increment: Tensor
    neg_increment: Tensor
    normaliser: Tensor | float | None
    num_samples: Tensor | float


def compute_dtype(logits: Tensor) -> torch.dtype:
    """float64 logits are computed in float64; everything else in float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


class BlockResult(NamedTuple):
    """One block's share: its loss (summed, or per entry / per row) and increments."""

    loss: Tensor
    pos_increment: Tensor
    neg_increment: Tensor


# A block kernel gets the block's logits (rows, K), or (B, K, P) for image blocks (see
# run_blocks), in the compute dtype (possibly a strided view), the slice of rows it
# covers (``slice(None)`` when one block covers them all), and the view of the gradient
# to fill, of the block's shape; it must not write to the logits.
BlockKernel = Callable[[Tensor, slice, Tensor], BlockResult]


def _blocks(num_rows: int, num_columns: int, block_elements: int) -> Iterator[slice]:
    step = max(1, block_elements // max(num_columns, 1))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def block_rows(tensor: Tensor, rows: slice) -> Tensor:
    """The rows ``rows`` of a per-row tensor; the tensor itself for ``slice(None)``
    (a small head's single block), which saves an operation per tensor."""
    return tensor if rows == slice(None) else tensor[rows]


class PositiveColumns(NamedTuple):
    """Per row, as ``(rows, 1)`` columns: the column of its positive entry, its weight,
    its weight at the positive entry (0 where it has none), and 1 where it has none.

    ``None`` stands for a column that is 1 everywhere (``row_weight``,
    ``pos_row_weight``) or 0 everywhere (``no_positive``: every row has its positive),
    so that the kernels skip its multiplies.
    """

    columns: Tensor
    row_weight: Tensor | None
    pos_row_weight: Tensor | None
    no_positive: Tensor | None

    def block(self, rows: slice) -> PositiveColumns:
        """The rows ``rows`` of every field (see :func:`block_rows`)."""

        def part(column: Tensor | None) -> Tensor | None:
            return None if column is None else block_rows(column, rows)

        return PositiveColumns(
            block_rows(self.columns, rows),
            part(self.row_weight),
            part(self.pos_row_weight),
            part(self.no_positive),
        )


def positive_columns(
    labels: Tensor,
    num_columns: int,
    row_weight: Tensor | None,
    dtype: torch.dtype,
    *,
    every_row_positive: bool,
) -> PositiveColumns:
    """Where each row's one positive entry sits, for labels in ``[0, K]`` (``K``: none).

    A row without a positive still gets a column (``K - 1``), so that every block can
    gather and scatter one entry per row without selecting rows first; its
    ``pos_row_weight`` is 0 and its ``no_positive`` 1, which leave that entry a negative.
    ``every_row_positive`` says that the labels are known to lie in ``[0, K)`` (checked
    labels and a background column), which spares those columns. ``row_weight`` is the
    per-row multiplier of :func:`~eqlosses.labels.row_weights`.
    """
    # (rows, 1) once here, so that the blocks only slice
    labels = labels.unsqueeze(1)
    row_weight = None if row_weight is None else row_weight.unsqueeze(1)
    if every_row_positive:
        return PositiveColumns(labels, row_weight, row_weight, None)
    no_positive = (labels >= num_columns).to(dtype)
    if row_weight is None:
        pos_row_weight = 1.0 - no_positive
    else:
        pos_row_weight = row_weight - row_weight * no_positive
    return PositiveColumns(
        columns=labels.clamp_max(num_columns - 1),
        row_weight=row_weight,
        pos_row_weight=pos_row_weight,
        no_positive=no_positive,
    )


def scale_by(values: Tensor, factor: Tensor | None) -> Tensor:
    """``values * factor``; ``values`` itself where the factor is ``None`` (all 1)."""
    return values if factor is None else values * factor


def replace_positives(
    block: Tensor, columns: Tensor, no_positive: Tensor | None, value: Tensor
) -> None:
    """Put ``value`` (``(rows, 1)``) at each row's positive entry of ``block``, in place.

    A row without a positive keeps its entry (its ``value`` must be 0).
    """
    if no_positive is None:
        block.scatter_(1, columns, value)
        return
    kept = block.gather(1, columns).mul_(no_positive)
    block.scatter_(1, columns, kept.add_(value))


def place_positives(
    grad: Tensor, columns: Tensor, no_positive: Tensor | None, pos_grad: Tensor
) -> tuple[Tensor, Tensor]:
    """Put the positives' gradient into a block that holds the negative-entry gradient.

    ``grad`` holds, for every entry, the gradient it would have as a negative (all
    non-negative); ``columns``, ``no_positive`` and ``pos_grad`` are the block's
    :meth:`PositiveColumns.block` and the positives' own gradient (0 on rows without one).
    Returns this block's ``(pos_increment, neg_increment)``, the per-column sums of the
    gradient magnitudes split by positive and negative.
    """
    # Zeroed first (a row without a positive keeps its entry), so that the column sums
    # count the negatives only.
    if no_positive is None:
        grad.scatter_(1, columns, 0.0)
        neg_increment = grad.sum(0)
        grad.scatter_(1, columns, pos_grad)
    else:
        kept = grad.gather(1, columns).mul_(no_positive)
        grad.scatter_(1, columns, kept)
        neg_increment = grad.sum(0)
        grad.scatter_(1, columns, kept.add_(pos_grad))
    pos_increment = torch.zeros_like(neg_increment).index_add_(
        0, columns.view(-1), pos_grad.abs().view(-1)
    )
    return pos_increment, neg_increment


def zero_dropped_rows(block: Tensor, keep: Tensor, *, out: Tensor) -> Tensor:
    """``block`` with the rows whose ``keep`` is false set to zero, whatever they held
    (``inf``, NaN), written to ``out`` (which may be ``block``). ``keep`` is flat, one
    flag per row: the rows of an ``(R, K)`` block, or for an image block ``(B, K, P)``
    its ``B·P`` positions in order.

    On a host-checked device the dropped rows are found on the host and filled: the
    elementwise ``where`` that an accelerator runs instead is a scalar loop on the CPU,
    several times slower than a copy.
    """
    image_block = block.dim() == 3
    if checks_on_host(keep):
        if out is not block:
            out.copy_(block)
        if image_block:
            dropped = ~keep.view(block.shape[0], block.shape[2])
            images, positions = torch.nonzero(dropped, as_tuple=True)
            out[images, :, positions] = 0.0
            return out
        return out.index_fill_(0, torch.nonzero(~keep).view(-1), 0.0)
    shaped = keep.view(block.shape[0], 1, block.shape[2]) if image_block else keep.view(-1, 1)
    return torch.where(shaped, block, block.new_zeros(()), out=out)


def _sum_blocks(parts: list[Tensor]) -> Tensor:
    return torch.stack(parts).sum(0)


def run_blocks(
    logits: Tensor,
    kernel: BlockKernel,
    *,
    num_stat_columns: int,
    channels_first: bool,
    loss_kind: str,
    keep: Tensor | None = None,
    block_elements: int = BLOCK_ELEMENTS,
    one_thread: bool = True,
    image_blocks: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run ``kernel`` over the rows of ``logits``; returns loss, gradient and increments.

    Rows are the leading dimensions of a ``(..., K)`` tensor, or for ``channels_first``
    the positions ``(n, d1, ...)`` of an ``(N, K, d1, ...)`` tensor, numbered in that
    order. A channels-first block is the ``(rows, K)`` transpose of one image's positions,
    or with ``image_blocks`` a ``(B, K, P)`` view in the logits' own layout: whole images
    (as many as fit in ``block_elements``), or the positions of one image that does not
    fit, ``(1, K, p)``; its rows are still a contiguous range, which the kernel views as
    ``(B, 1, P)`` (there ``keep`` must be ``None``: the kernel drops rows itself).
    ``loss_kind`` says what the kernels return: ``'sum'`` a scalar, ``'entry'`` a
    per-entry block (the result has the logits' shape), ``'row'`` a per-row vector (the
    result has the logits' shape without the class dimension). ``keep`` (flat bool per
    row) marks the rows that count: the kernels see zeros in the others, so that their
    logits (``inf``, NaN) cannot reach the loss, the gradient or the statistics.
    ``one_thread``: on the CPU, the blocks run with one intra-op thread (see
    :func:`_intra_op_threads`), so the result does not depend on the thread count either.
    """
    assert keep is None or not image_blocks
    serial = one_thread and logits.device.type == "cpu" and logits.numel() > block_elements
    arguments = (
        logits,
        kernel,
        num_stat_columns,
        channels_first,
        loss_kind,
        keep,
        block_elements,
        serial,
        image_blocks,
    )
    if torch.compiler.is_compiling():
        return _run_blocks_outside_graph(*arguments)
    # Eagerly the loop runs directly: the compiler's wrapper alone costs tens of
    # microseconds a call, a large share of a small head's whole step.
    return _run_blocks(*arguments)


def _run_blocks(
    logits: Tensor,
    kernel: BlockKernel,
    num_stat_columns: int,
    channels_first: bool,
    loss_kind: str,
    keep: Tensor | None,
    block_elements: int,
    serial: bool,
    image_blocks: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    logits = logits.detach()
    dtype = compute_dtype(logits)
    device = logits.device
    grad = torch.empty(logits.shape, dtype=dtype, device=device)

    if channels_first:
        batch, num_columns = logits.shape[0], logits.shape[1]
        positions = math.prod(logits.shape[2:])
        logits_3d = logits.reshape(batch, num_columns, positions)
        grad_3d = grad.view(batch, num_columns, positions)
        views: list[tuple[slice, Tensor, Tensor]] = []
        image_elements = num_columns * positions
        if image_blocks and 0 < image_elements <= block_elements:
            images = block_elements // image_elements
            if images >= batch:
                views.append((slice(None), logits_3d, grad_3d))
            else:
                for start in range(0, batch, images):
                    stop = min(start + images, batch)
                    rows = slice(start * positions, stop * positions)
                    views.append((rows, logits_3d[start:stop], grad_3d[start:stop]))
        else:
            for n in range(batch):
                for block in _blocks(positions, num_columns, block_elements):
                    rows = slice(n * positions + block.start, n * positions + block.stop)
                    logits_view, grad_view = logits_3d[n, :, block], grad_3d[n, :, block]
                    if image_blocks:
                        views.append((rows, logits_view.unsqueeze(0), grad_view.unsqueeze(0)))
                    else:
                        views.append((rows, logits_view.t(), grad_view.t()))
        loss_shape = (logits.shape[0], *logits.shape[2:])
    else:
        num_columns = logits.shape[-1]
        if logits.dim() == 2:
            logits_2d, grad_2d = logits, grad  # a reshape is an operation a small head pays
        else:
            logits_2d, grad_2d = logits.reshape(-1, num_columns), grad.view(-1, num_columns)
        blocks = list(_blocks(logits_2d.shape[0], num_columns, block_elements))
        if len(blocks) == 1:
            # a small head: one block, no slicing (each slice is an operation it pays)
            views = [(slice(None), logits_2d, grad_2d)]
        else:
            views = [(b, logits_2d[b], grad_2d[b]) for b in blocks]
        loss_shape = tuple(logits.shape) if loss_kind == "entry" else tuple(logits.shape[:-1])

    if not views:
        zeros = torch.zeros(num_stat_columns, dtype=dtype, device=device)
        loss_size = () if loss_kind == "sum" else loss_shape
        return torch.zeros(loss_size, dtype=dtype, device=device), grad, zeros, zeros.clone()

    def run(rows: slice, view: Tensor, out: Tensor) -> BlockResult:
        block = view if view.dtype == dtype else view.to(dtype)
        if keep is not None:
            dropped_zeroed = torch.empty(block.shape, dtype=dtype, device=device)
            block = zero_dropped_rows(block, block_rows(keep, rows), out=dropped_zeroed)
        return kernel(block, rows, out)

    def run_all() -> list[BlockResult]:
        if torch.is_autocast_enabled(device.type):
            # The kernels choose their own precision; autocast must not lower them.
            with torch.autocast(device.type, enabled=False):
                return [run(*view) for view in views]
        return [run(*view) for view in views]

    # Channels-first blocks stay strided views (rows along memory): no transposed
    # copies; the kernels write the gradient straight into the result.
    if serial:
        with _intra_op_threads(1):
            results = run_all()
    else:
        results = run_all()
    if len(results) == 1:
        only = results[0]
        loss = only.loss if loss_kind == "sum" else only.loss.reshape(loss_shape)
        return loss, grad, only.pos_increment, only.neg_increment
    pos_total = _sum_blocks([r.pos_increment for r in results])
    neg_total = _sum_blocks([r.neg_increment for r in results])
    if loss_kind == "sum":
        loss = _sum_blocks([r.loss for r in results])
    else:
        loss = torch.cat([r.loss.reshape(-1) for r in results]).reshape(loss_shape)
    return loss, grad, pos_total, neg_total


@contextlib.contextmanager
def _intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, restored after.

    The sigmoid and focal kernels run their blocks with one thread. Split across several,
    each of a block's dozens of small operations ends on a barrier that waits for the
    slowest thread: on a machine busy with other processes (data-loader workers, say), a
    descheduled thread stalls every one of them, and the kernel ran several times slower
    than on an idle machine. With one thread nothing waits, and the kernels' few passes
    over each block keep them faster than the plain losses run on every thread.
    """
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_OUTSIDE_GRAPH: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]] = {}


def _run_blocks_outside_graph(*arguments: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # torch.compile would unroll the block loop into thousands of graph nodes for a
    # detector head; the blocks are fused by hand already, so the compiled graph breaks
    # here on purpose. The wrapper is built on first use: building it imports the
    # compiler (about a second), which a plain ``import eqlosses`` must not pay.
    run = _OUTSIDE_GRAPH.get("run")
    if run is None:
        run = torch.compiler.disable(_run_blocks)  # type: ignore[no-untyped-call]
        _OUTSIDE_GRAPH["run"] = run
    return run(*arguments)


class _AttachGradient(torch.autograd.Function):
    """Returns ``loss`` unchanged; its gradient w.r.t. ``logits`` is ``grad_output * grad``.

    Backward multiplies the saved gradient by ``grad_output`` and hands it out; unless
    the graph is kept for another backward, the multiply is in place, so no second
    logit-sized buffer exists. Its value is tested only where reading it waits for no
    device: on the CPU a ``grad_output`` of 1 skips the multiply.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        loss: Tensor,
        grad: Tensor,
        class_dim: int,
    ) -> Tensor:
        # the logits are kept only to link a derivative of the gradient back to them
        ctx.save_for_backward(grad, logits)
        ctx.logits_dtype = logits.dtype
        ctx.class_dim = class_dim
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        grad, logits = ctx.saved_tensors
        upstream = grad_output if grad_output.dtype == grad.dtype else grad_output.to(grad.dtype)
        if 0 < upstream.dim() < grad.dim():
            # per-sample losses of a softmax loss: broadcast over the class dimension
            upstream = upstream.unsqueeze(ctx.class_dim)
        if torch.is_grad_enabled():
            # create_graph=True: the saved gradient is a constant, so a derivative through
            # it would silently be zero (w.r.t. the logits) or miss their part (w.r.t.
            # grad_output); differentiating the result raises instead.
            result = grad * upstream
            if result.dtype != ctx.logits_dtype:
                result = result.to(ctx.logits_dtype)
            result = _NoSecondDerivative.apply(result, logits)  # type: ignore[no-untyped-call]
            return result, None, None, None
        if _is_one_on_host(upstream):
            result = grad
        elif _graph_is_kept():
            result = grad * upstream
        else:
            # the saved gradient's last use: in place, no second logit-sized buffer
            result = grad.mul_(upstream)
        if result.dtype != ctx.logits_dtype:
            result = result.to(ctx.logits_dtype)
        return result, None, None, None


def _is_one_on_host(upstream: Tensor) -> bool:
    """Whether the upstream gradient is a single 1 that can be read without waiting for a
    device (``loss.backward()`` on the CPU): multiplying by it would be a pass over the
    logits for nothing."""
    return (
        checks_on_host(upstream)
        and upstream.numel() == 1
        and not torch.compiler.is_compiling()
        and float(upstream) == 1.0
    )


def _graph_is_kept() -> bool:
    """Whether the running backward keeps the graph (``retain_graph``/``create_graph``).
    Read from autograd's engine; where that cannot be read (a compiled backward, another
    torch), assume it does."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if keep_graph is None or torch.compiler.is_compiling():
        return True
    return bool(keep_graph())


class _NoSecondDerivative(torch.autograd.Function):
    """Identity on a precomputed gradient, linked to the logits it is the gradient of,
    whose own derivative (with respect to either) is not implemented."""

    @staticmethod
    def forward(ctx: Any, gradient: Tensor, logits: Tensor) -> Tensor:
        return gradient.view_as(gradient)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, Tensor]:
        raise RuntimeError(
            "eqlosses: second derivatives of the equalization losses are not implemented "
            "(the gradient with respect to the logits is computed in forward, as a "
            "constant); a gradient penalty, Hessian-vector product or other double "
            "backward through it needs a loss written with differentiable operations"
        )


def attach_gradient(logits: Tensor, loss: Tensor, grad: Tensor, class_dim: int = -1) -> Tensor:
    """Make ``loss`` differentiable w.r.t. ``logits`` with the precomputed ``grad``.

    The loss comes back in the logits' dtype, or in float32 under autocast, as PyTorch's
    own losses do (a float16 loss would overflow once a GradScaler multiplies it).
    """
    if not torch.is_autocast_enabled(logits.device.type):
        wanted = logits.dtype
    else:
        wanted = torch.float64 if loss.dtype == torch.float64 else torch.float32
    if loss.dtype != wanted:
        loss = loss.to(wanted)
    if loss.requires_grad:
        loss = loss.detach()
    out: Tensor = _AttachGradient.apply(logits, loss, grad, class_dim)  # type: ignore[no-untyped-call]
    return out
