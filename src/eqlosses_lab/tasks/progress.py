"""What every task's epoch loop reports: a progress bar, a per-epoch hook and its
TensorBoard form."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from eqlosses import StatisticsLoss

# Called after each epoch with (epoch, mean training loss, the loss module).
EpochHook = Callable[[int, float, nn.Module], None]


def epoch_iterator(num_epochs: int, description: str, show: bool) -> Any:
    """``range(num_epochs)``, wrapped in a tqdm bar when ``show`` (tqdm is imported only
    then, so the quiet path needs none)."""
    if not show:
        return range(num_epochs)
    from tqdm import tqdm

    return tqdm(range(num_epochs), desc=description, leave=False, unit="epoch")


def tensorboard_hook(
    log_dir: Path, run_name: str, class_groups: Mapping[str, Sequence[int]]
) -> tuple[EpochHook, Any]:
    """An :data:`EpochHook` writing the training loss and, for the losses with gradient
    statistics, the mean ``g`` of each named class group; returns it and the writer."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir / run_name))
    groups = {name: list(members) for name, members in class_groups.items()}

    def on_epoch(epoch: int, train_loss: float, loss_fn: nn.Module) -> None:
        writer.add_scalar("train/loss", train_loss, epoch)
        if isinstance(loss_fn, StatisticsLoss):
            ratio = loss_fn.grad_ratio
            for name, members in groups.items():
                writer.add_scalar(f"grad_ratio/{name}", float(ratio[members].mean()), epoch)
        writer.flush()

    return on_epoch, writer
