"""What every loss module shares: its options, the dtype guard, statistics and random draws."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..checks import check_choice, check_flag, check_integer, check_number
from ..functional._fused import LossOutput
from ..labels import REDUCTIONS, Reduction
from ..stats import GradientStatistics, keep_float64


def counts_tensor(class_counts: Sequence[int] | Tensor, name: str = "class_counts") -> Tensor:
    """Training counts as a float64 ``(C,)`` tensor, checked once at construction."""
    if isinstance(class_counts, Tensor):
        counts = class_counts.detach().to(torch.float64)
    else:
        try:
            counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{name}: expected a sequence of per-class counts, got {class_counts!r}"
            ) from error
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"{name}: expected a non-empty 1-D sequence, got shape {tuple(counts.shape)}"
        )
    if not bool((torch.isfinite(counts) & (counts >= 0)).all()):
        raise ValueError(f"{name}: expected finite counts >= 0, got negative or non-finite")
    return counts.clone()


class LossModule(nn.Module):
    """Base of every loss module: the options all of them take, checked once here.

    The modules hold no parameters; their buffers (counts, statistics) keep their dtype
    under a parent's dtype cast (``.half()``, ``.double()``) and follow device moves.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        reduction: Reduction,
        loss_weight: float,
        ignore_index: int,
        validate: bool,
    ) -> None:
        super().__init__()
        self.num_classes = check_integer("num_classes", num_classes, minimum=1)
        check_choice("reduction", reduction, REDUCTIONS)
        self.reduction: Reduction = reduction
        self.loss_weight = check_number("loss_weight", loss_weight, low=0.0)
        self.ignore_index = check_integer("ignore_index", ignore_index)
        self.validate = check_flag("validate", validate)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> LossModule:
        if recurse:
            for child in self.children():
                child._apply(fn)  # type: ignore[no-untyped-call]
        keep_float64(self, fn)
        return self

    def _weighted(self, loss: Tensor) -> Tensor:
        return loss if self.loss_weight == 1.0 else loss * self.loss_weight

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}"
        )


class StatisticsLoss(LossModule):
    """Base of the losses that keep per-class gradient statistics.

    The statistics live in ``self.statistics`` (:class:`~eqlosses.GradientStatistics`).
    They are updated in ``forward`` after the step's loss exists (step ``t`` is weighted
    by steps ``< t``), and only when the module is training, grad is enabled and
    ``update_statistics`` is true. Each forward adds one step, so under gradient
    accumulation every micro-batch counts. Under ``torch.distributed`` every rank must run
    the same number of updating forwards, an empty batch included.
    """

    # Whether loss_weight scales the statistics (it does for the losses whose statistics
    # are the true gradient of the returned loss).
    statistics_include_loss_weight = True

    def __init__(
        self,
        num_classes: int,
        *,
        initial_ratio: float,
        reduction: Reduction,
        loss_weight: float,
        ignore_index: int,
        update_statistics: bool,
        process_group: dist.ProcessGroup | None,
        validate: bool,
    ) -> None:
        super().__init__(
            num_classes,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.update_statistics = check_flag("update_statistics", update_statistics)
        self.statistics = GradientStatistics(self.num_classes, initial_ratio, process_group)

    @property
    def pos_grad(self) -> Tensor:
        """Cumulative positive gradient magnitude per class, float64 ``(C,)``."""
        return self.statistics.pos_grad

    @property
    def neg_grad(self) -> Tensor:
        """Cumulative negative gradient magnitude per class, float64 ``(C,)``."""
        return self.statistics.neg_grad

    @property
    def grad_ratio(self) -> Tensor:
        """``g = pos_grad / (neg_grad + 1e-10)``; the initial ratio before any update."""
        return self.statistics.grad_ratio

    def reset_statistics(self) -> None:
        """Forget every update: zero sums and the initial ratio again."""
        self.statistics.reset_statistics()

    def _finish(self, output: LossOutput, *, normaliser_floor: float = 1.0) -> Tensor:
        """Record the step's statistics (when due) and return the weighted loss.

        ``normaliser_floor``: see :meth:`~eqlosses.GradientStatistics.update` (0 where the
        normaliser is a divisor the caller gave, 1 where it is a count of the batch)."""
        if self.training and self.update_statistics and torch.is_grad_enabled():
            pos, neg = output.pos_increment, output.neg_increment
            if self.statistics_include_loss_weight and self.loss_weight != 1.0:
                pos, neg = pos * self.loss_weight, neg * self.loss_weight
            self.statistics.update(
                pos,
                neg,
                output.normaliser,
                num_samples=output.num_samples,
                loss=output.loss,
                normaliser_floor=normaliser_floor,
            )
        return self._weighted(output.loss)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, update_statistics={self.update_statistics}"


class DeviceGenerators:
    """The random source of a loss that draws numbers: one :class:`torch.Generator` per
    device the loss has run on, so that the draws happen where the logits are.

    The generator given (or, for ``None``, a CPU generator seeded from the global random
    state when the loss is built) serves its own device; a generator for another device
    is created on first use and seeded with the given one's initial seed. :meth:`state`
    and :meth:`load` carry every generator's state through a checkpoint, so a resumed
    run draws what the uninterrupted run would have drawn.
    """

    def __init__(self, generator: torch.Generator | None) -> None:
        if generator is None:
            seed = int(torch.randint(0, 2**62, ()))
            generator = torch.Generator().manual_seed(seed)
        elif not isinstance(generator, torch.Generator):
            raise ValueError(
                f"generator: expected a torch.Generator or None, got {type(generator).__name__}"
            )
        self.seed = generator.initial_seed()
        self._generators: dict[torch.device, torch.Generator] = {generator.device: generator}
        # states loaded for devices not used yet in this process
        self._pending: dict[torch.device, Tensor] = {}

    def on(self, device: torch.device) -> torch.Generator:
        """The generator that draws on ``device``."""
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(self.seed)
            pending = self._pending.pop(device, None)
            if pending is not None:
                generator.set_state(pending)
            self._generators[device] = generator
        return generator

    def state(self) -> dict[str, Any]:
        states = {str(device): state for device, state in self._pending.items()}
        states.update({str(d): g.get_state() for d, g in self._generators.items()})
        return {"seed": self.seed, "states": states}

    def load(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._generators = {}
        self._pending = {torch.device(name): value for name, value in state["states"].items()}
        if torch.device("cpu") in self._pending:
            self.on(torch.device("cpu"))
