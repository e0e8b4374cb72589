"""Runs examples/lightning_equalization.py and records each rank's statistics.

Run by test_lightning_ddp.py in a subprocess (Lightning's ddp launcher starts the other
rank by running this script again, with the same arguments). Besides the example's own
arguments it takes ``--record DIR``: each rank saves its loss's statistics buffers there
when training starts (after a resumed checkpoint is loaded) and at the end of every
epoch, as ``<moment>-rank<r>.pt``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_equalization.py"


class RecordStatistics(pl.Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _save(self, trainer: pl.Trainer, module: pl.LightningModule, moment: str) -> None:
        buffers = {
            name: buffer.clone() for name, buffer in module.criterion.statistics.named_buffers()
        }
        torch.save(buffers, self.folder / f"{moment}-rank{trainer.global_rank}.pt")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, pl_module, f"epoch{trainer.current_epoch}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", type=Path, required=True)
    known, rest = parser.parse_known_args()
    known.record.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.spec_from_file_location("lightning_equalization", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(rest, callbacks=[RecordStatistics(known.record)])


if __name__ == "__main__":
    sys.exit(main())
