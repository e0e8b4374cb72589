"""Real multi-process runs for the distributed tests: gloo ranks on the CPU, started as
separate processes, each returning its records to the parent through a file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(
    rank: int, body: Callable[[int], Any], world_size: int, init_file: str, out_dir: str
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        result = body(rank)
        dist.barrier()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(
    body: Callable[[int], Any],
    world_size: int,
    work: Path,
    *,
    timeout_s: float = 180.0,
    start_method: str = "spawn",
) -> list[Any]:
    """Run ``body(rank)`` in ``world_size`` processes joined in a gloo process group; the
    records each returned, by rank. ``body`` must be a module-level function (the children
    import it by name). Skips where gloo is not available; fails past ``timeout_s``."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    context = mp.start_processes(
        _rank_main,
        args=(body, world_size, str(work / "filestore"), str(work)),
        nprocs=world_size,
        join=False,
        start_method=start_method,
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"distributed workers did not finish within {timeout_s} s")
    return [torch.load(work / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
