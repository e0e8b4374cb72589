"""Train a classifier with an equalization loss in PyTorch Lightning, one or more processes.

The loss is a submodule of the ``LightningModule`` (``self.criterion``), like a layer:

* its gradient statistics are buffers, so they are in the module's ``state_dict``, in
  every Lightning checkpoint, and restored on resume with the "not yet updated" state;
* they move with the module (``.to(device)``) and stay float64 under mixed precision;
* it updates them inside ``forward`` in training mode, so ``training_step`` only calls
  it; under the ``ddp`` strategy each update sums the ranks' increments (one
  all-reduce), so every rank holds the same statistics.

DistributedDataParallel copies rank 0's buffers to the other ranks before each forward
(``forward_sync_buffers``, called ``broadcast_buffers`` before torch 2.13; on by
default). The statistics are buffers, but identical on every rank after each update, so
the copy changes nothing; turning it off (``DDPStrategy(forward_sync_buffers=False)``,
``--no-forward-sync-buffers`` here) changes nothing either.

The data are a synthetic long-tailed set (Gaussian clusters, 6 classes from 240 down to
5 samples); nothing is downloaded. Run, for example::

    python examples/lightning_equalization.py --devices 2 --strategy ddp --epochs 2 \\
        --out runs/lightning
    python examples/lightning_equalization.py --devices 2 --strategy ddp --epochs 3 \\
        --out runs/lightning --resume runs/lightning/epoch1.ckpt

With ``--strategy ddp`` on a CPU the processes talk over gloo; Lightning starts the
other ranks by running this script again.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from eqlosses import SigmoidEQL

CLASS_SIZES = (240, 120, 60, 25, 10, 5)
FEATURES = 16


def long_tailed_data(seed: int = 0) -> TensorDataset:
    """Gaussian clusters around random class centres, ``CLASS_SIZES`` samples each."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(CLASS_SIZES), FEATURES, generator=generator) * 1.5
    labels = torch.cat([torch.full((size,), label) for label, size in enumerate(CLASS_SIZES)])
    features = centres[labels] + torch.randn(len(labels), FEATURES, generator=generator)
    return TensorDataset(features, labels)


class LongTailClassifier(pl.LightningModule):
    """A small MLP trained with Sigmoid-EQL; ``criterion`` keeps the statistics."""

    def __init__(self, num_classes: int = len(CLASS_SIZES), lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.criterion = SigmoidEQL(num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """Class probabilities, as Sigmoid-EQL scores them."""
        return self.criterion.predict(self.net(features))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, labels = batch
        # one call per step: the loss, then this step's gradient statistics
        loss = self.criterion(self.net(features), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # the ratio g of the rarest class (the same on every rank): it climbs towards 1
        # as training balances the class
        self.log("grad_ratio_rarest", self.criterion.grad_ratio[-1].float(), rank_zero_only=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto", help="e.g. ddp")
    parser.add_argument("--no-forward-sync-buffers", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="runs/lightning", help="checkpoints go here")
    parser.add_argument("--resume", default=None, help="a checkpoint to continue from")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, callbacks: Sequence[pl.Callback] = ()) -> None:
    args = parse_args(argv)
    pl.seed_everything(0, verbose=False)
    strategy: str | DDPStrategy = args.strategy
    if args.strategy == "ddp":
        strategy = DDPStrategy(forward_sync_buffers=not args.no_forward_sync_buffers)
    checkpoints = ModelCheckpoint(
        dirpath=args.out,
        filename="epoch{epoch}",
        auto_insert_metric_name=False,
        save_top_k=-1,
        every_n_epochs=1,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        max_epochs=args.epochs,
        default_root_dir=args.out,
        callbacks=[checkpoints, *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(long_tailed_data(), batch_size=args.batch_size, shuffle=True)
    trainer.fit(LongTailClassifier(), loader, ckpt_path=args.resume)


if __name__ == "__main__":
    main()
