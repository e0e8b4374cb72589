"""What every stateful loss module shares: its statistics and when they update."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..functional._fused import LossOutput
from ..labels import REDUCTIONS, Reduction, check_choice
from ..stats import GradientStatistics


class StatisticsLoss(nn.Module):
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
        update_statistics: bool,
        process_group: dist.ProcessGroup | None,
        validate: bool,
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        self.num_classes = num_classes
        self.reduction: Reduction = reduction
        self.loss_weight = float(loss_weight)
        self.update_statistics = update_statistics
        self.validate = validate
        self.statistics = GradientStatistics(num_classes, initial_ratio, process_group)

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
        self.statistics.reset_statistics()

    def _finish(self, output: LossOutput) -> Tensor:
        """Record the step's statistics (when due) and return the weighted loss."""
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
            )
        if self.loss_weight == 1.0:
            return output.loss
        return output.loss * self.loss_weight

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}, update_statistics={self.update_statistics}"
        )
