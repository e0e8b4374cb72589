"""PyTorch Lightning 2 trains examples/lightning_equalization.py under DDP: 2 gloo processes.

Lightning's ddp launcher starts the second rank by running the script again, so the
example runs in a subprocess (through ``lightning_ddp_run.py``, which records each
rank's statistics when training starts and at the end of each epoch):

1. two epochs from scratch, with DDP's per-forward buffer sync on (the default),
   saving a checkpoint per epoch;
2. resumed from the epoch-0 checkpoint for the second epoch, with that sync off.

The ranks hold identical statistics throughout; the checkpoint holds them; the resumed
run starts from them exactly and ends where the uninterrupted run ended, bit for bit,
so syncing rank 0's buffers at each forward changes nothing.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytorch_lightning")

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "lightning_ddp_run.py"
EXAMPLE = ROOT / "examples" / "lightning_equalization.py"
BATCH = 32
WORLD_SIZE = 2
TIMEOUT_S = 300
# set by launchers and schedulers; Lightning would take them as the cluster's layout
LAUNCHER_VARIABLES = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _run(*args: str, cwd: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in LAUNCHER_VARIABLES and not key.startswith("SLURM_")
    }
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small machine
    done = subprocess.run(
        [
            sys.executable,
            str(DRIVER),
            "--devices",
            str(WORLD_SIZE),
            "--strategy",
            "ddp",
            "--batch-size",
            str(BATCH),
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def _recorded(folder: Path, moment: str) -> list[dict[str, Tensor]]:
    return [
        torch.load(folder / f"{moment}-rank{rank}.pt", weights_only=True)
        for rank in range(WORLD_SIZE)
    ]


def _assert_equal(ours: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


def _steps_per_epoch() -> int:
    spec = importlib.util.spec_from_file_location("lightning_equalization", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # the distributed sampler pads every rank to the same number of samples
    per_rank = math.ceil(sum(example.CLASS_SIZES) / WORLD_SIZE)
    return math.ceil(per_rank / BATCH)


def test_ddp_ranks_agree_and_a_resumed_run_continues_exactly(tmp_path: Path) -> None:
    steps = _steps_per_epoch()
    _run("--epochs", "2", "--out", "first", "--record", "first-stats", cwd=tmp_path)
    first = tmp_path / "first-stats"
    for epoch in range(2):
        rank0, rank1 = _recorded(first, f"epoch{epoch}")
        _assert_equal(rank0, rank1)
        assert int(rank0["num_updates"]) == steps * (epoch + 1)
    epoch0 = _recorded(first, "epoch0")[0]
    assert bool((epoch0["pos_grad"] > 0).all())

    checkpoint = torch.load(tmp_path / "first" / "epoch0.ckpt", weights_only=True)
    saved = {
        name.removeprefix("criterion.statistics."): value
        for name, value in checkpoint["state_dict"].items()
        if name.startswith("criterion.statistics.")
    }
    _assert_equal(saved, epoch0)

    _run(
        "--epochs",
        "2",
        "--out",
        "resumed",
        "--record",
        "resumed-stats",
        "--resume",
        str(tmp_path / "first" / "epoch0.ckpt"),
        "--no-forward-sync-buffers",
        cwd=tmp_path,
    )
    resumed = tmp_path / "resumed-stats"
    for restored in _recorded(resumed, "start"):
        _assert_equal(restored, epoch0)
    final = _recorded(first, "epoch1")[0]
    for rank_final in _recorded(resumed, "epoch1"):
        _assert_equal(rank_final, final)
