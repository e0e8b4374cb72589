"""Cumulative per-class gradient statistics shared by every equalization loss.

The losses keep, per class ``j``, the accumulated magnitude of the gradient that the
loss sent to the logits of class ``j`` on positive entries (``pos_grad``) and on negative
entries (``neg_grad``). Their ratio ``g_j = pos_grad_j / (neg_grad_j + 1e-10)`` drives
the re-weighting. This module owns those sums: storage, update, synchronisation across
processes and the dtype guard.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checks import check_integer, check_number

RATIO_EPS = 1e-10


def is_distributed() -> bool:
    """Whether a default process group exists, so that statistics are summed over ranks."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: Tensor, process_group: dist.ProcessGroup | None) -> None:
    """Sum ``tensor`` in place over the ranks; nothing without a process group."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=process_group)


def keep_float64(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
    # Follow device moves but never a dtype change: re-cast from the untouched original
    # so a cumulative sum loses no precision (float16 overflows at 65504).
    for name, buffer in module._buffers.items():
        if buffer is None:
            continue
        moved = fn(buffer)
        if moved.dtype != buffer.dtype:
            moved = buffer.to(device=moved.device, dtype=buffer.dtype)
        module._buffers[name] = moved


class GradientStatistics(nn.Module):
    """Cumulative positive / negative gradient magnitudes of ``num_classes`` classes.

    Args:
        num_classes: number of classes ``C`` tracked.
        initial_ratio: the ratio ``g`` reported before the first update (100 for
            Sigmoid-EQL so its weights start at 1, 1 for EFL).
        process_group: the group whose ranks share the statistics; ``None`` is the default
            group. Nothing is communicated unless ``torch.distributed`` is initialised.

    Buffers (all in ``state_dict``):
        pos_grad, neg_grad: float64 ``(C,)`` cumulative sums. They stay float64 when the
            parent model is cast with ``.half()``, ``.to(torch.bfloat16)`` or ``.double()``:
            a cumulative sum in float16 overflows at 65504.
        num_updates: int64 scalar, the number of accepted updates. "Not yet updated" is
            state, so that a resumed run keeps the initial ratio when it should.

    Each call of :meth:`update` adds one step. Under gradient accumulation every forward
    adds its own increments, so statistics follow micro-batches, not optimiser steps.
    """

    pos_grad: Tensor
    neg_grad: Tensor
    num_updates: Tensor

    def __init__(
        self,
        num_classes: int,
        initial_ratio: float,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = check_integer("num_classes", num_classes, minimum=1)
        self.initial_ratio = check_number("initial_ratio", initial_ratio)
        self.process_group = process_group
        self.register_buffer("pos_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("neg_grad", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, initial_ratio={self.initial_ratio}"

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> GradientStatistics:
        keep_float64(self, fn)
        return self

    @property
    def grad_ratio(self) -> Tensor:
        """``g = pos_grad / (neg_grad + 1e-10)``, float64 ``(C,)``; the initial ratio
        until the first update."""
        ratio = self.pos_grad / (self.neg_grad + RATIO_EPS)
        return ratio.masked_fill(self.num_updates == 0, self.initial_ratio)

    @torch.no_grad()
    def reset_statistics(self) -> None:
        """Forget every update: zero sums and the initial ratio again."""
        self.pos_grad.zero_()
        self.neg_grad.zero_()
        self.num_updates.zero_()

    @torch.no_grad()
    def update(
        self,
        pos_increment: Tensor,
        neg_increment: Tensor,
        normaliser: Tensor | float | None = None,
        *,
        num_samples: Tensor | float = 1.0,
        loss: Tensor | None = None,
        normaliser_floor: float = 1.0,
    ) -> Tensor:
        """Add one step's increments; returns a bool tensor: was the step accepted.

        ``pos_increment`` and ``neg_increment`` are this process's unnormalised sums for
        the step. ``normaliser`` (a count such as the number of samples or of positives)
        divides them *after* both have been summed over the ranks, so every rank ends up
        with the statistics of one process fed the union of the ranks' batches. A summed
        normaliser below ``normaliser_floor`` counts as that floor (1: a count of
        positives may be 0 on every rank, and the loss then divides by 1; 0 for an
        explicit divisor, which is used as given). ``None`` means no normalisation.

        The step is dropped when, summed over the ranks, an increment is not finite, any
        rank's ``loss`` (the step's loss, any shape) has a non-finite entry, or no rank
        had a sample (``num_samples``): an empty step must not end the "not yet updated"
        state.

        Every rank must call this the same number of times (a rank with an empty batch
        passes zeros), since it joins one all-reduce.
        """
        num_classes = self.num_classes
        if pos_increment.shape != (num_classes,) or neg_increment.shape != (num_classes,):
            raise ValueError(
                f"pos_increment/neg_increment: expected shape ({num_classes},), got "
                f"{tuple(pos_increment.shape)} and {tuple(neg_increment.shape)}"
            )
        float64 = torch.float64
        device = self.pos_grad.device
        # The statistics may live on another device than the loss (a criterion left on
        # the CPU): every tensor joins them there. The increments are summed and divided
        # in float64, as the sums are kept: no rounding to the increments' dtype.
        increments = torch.cat([pos_increment, neg_increment])
        if increments.device != device or increments.dtype != float64:
            increments = increments.to(device=device, dtype=float64)
        if isinstance(normaliser, Tensor) and normaliser.device != device:
            normaliser = normaliser.to(device)
        if isinstance(num_samples, Tensor) and num_samples.device != device:
            num_samples = num_samples.to(device)
        # Non-finite where the loss has a non-finite entry: it spoils the check below.
        loss_total: Tensor | None = None
        if loss is not None:
            loss_total = loss if loss.dim() == 0 else loss.sum(dtype=float64)
            if loss_total.device != device:
                loss_total = loss_total.to(device)
        if is_distributed():
            # One buffer, so one all-reduce: [pos, neg, normaliser, num_samples, loss].
            extras = [
                1.0 if normaliser is None else normaliser,
                num_samples,
                0.0 if loss_total is None else loss_total,
            ]
            packed = torch.cat(
                [
                    increments,
                    torch.stack([torch.as_tensor(x, dtype=float64, device=device) for x in extras]),
                ]
            )
            all_reduce_sum(packed, self.process_group)
            increments = packed[: 2 * num_classes]
            normaliser = None if normaliser is None else packed[-3]
            num_samples, loss_total = packed[-2], packed[-1]
        # Decided on the reduced values, without a host sync, so every rank accepts or
        # drops the step alike. A non-finite increment, loss or normaliser makes the
        # check NaN or infinite, and its product with 0 NaN, which fails the comparison:
        # accepted means "every entry finite and some sample". (Tensor.isfinite costs
        # four operations.) Python numbers are judged here, on the host.
        check = increments.sum()
        if loss_total is not None:
            check = check + loss_total
        if isinstance(normaliser, Tensor):
            check = check + normaliser
        if isinstance(num_samples, Tensor):
            accepted = check * 0.0 + num_samples > 0
        else:
            accepted = check * 0.0 == 0.0
        host_accepts = (isinstance(num_samples, Tensor) or num_samples > 0) and (
            normaliser is None or isinstance(normaliser, Tensor) or math.isfinite(normaliser)
        )
        if not host_accepts:
            accepted.fill_(False)
        if isinstance(normaliser, Tensor):
            increments = increments / normaliser.clamp_min(normaliser_floor)
        elif normaliser is not None:
            increments = increments / max(normaliser, normaliser_floor)
        pos_step, neg_step = torch.where(accepted, increments, 0.0).chunk(2)
        self.pos_grad.add_(pos_step)
        self.neg_grad.add_(neg_step)
        self.num_updates.add_(accepted)
        return accepted


class ClassCounts(nn.Module):
    """Cumulative per-class sample counts (Seesaw's ``N_j``), summed across ranks.

    Buffer ``counts``: float64 ``(C,)`` in ``state_dict``, kept float64 like
    :class:`GradientStatistics`. A step's per-class counts are summed over the ranks
    (:meth:`batch_counts`) and then added (:meth:`add`), so every rank holds the counts of
    the union of the batches.
    """

    counts: Tensor

    def __init__(self, num_classes: int, process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.num_classes = check_integer("num_classes", num_classes, minimum=1)
        self.process_group = process_group
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ClassCounts:
        keep_float64(self, fn)
        return self

    @torch.no_grad()
    def batch_counts(self, labels: Tensor) -> Tensor:
        """The per-class counts of ``labels`` summed over the ranks (values outside
        ``[0, C)`` are not counted), not yet added: add them with :meth:`add` once the
        step has succeeded, so that a step that fails leaves the counts as they were."""
        labels = labels.reshape(-1).to(self.counts.device)
        amount = ((labels >= 0) & (labels < self.num_classes)).to(torch.float64)
        step = torch.zeros_like(self.counts).index_add_(
            0, labels.clamp(0, self.num_classes - 1), amount
        )
        all_reduce_sum(step, self.process_group)
        return step

    @torch.no_grad()
    def add(self, step: Tensor) -> None:
        """Add a step's :meth:`batch_counts`."""
        self.counts.add_(step)

    @torch.no_grad()
    def reset(self) -> None:
        self.counts.zero_()
