"""``eqlosses compare``: one model per (loss, seed), then tables and plots.

Every finished run is saved as ``runs/<loss>__seed<k>.json`` in the output folder; a
rerun into the same folder skips it, so a long comparison survives interruption.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import report
from ..metrics import class_groups
from . import detection
from .classification import (
    DATASETS,
    DEFAULT_CONFIG,
    OmniglotSource,
    fashion_mnist_lt,
    train_one,
)
from .distributed import Ranks, init_from_environment, shutdown
from .losses import BASELINE, LOSSES
from .progress import run_path, tensorboard_hook
from .segmentation import DEFAULT_CAMVID_DIR, SEGMENTATION_LOSSES, run_segmentation

DEFAULT_OMNIGLOT_DIR = Path("../shared/data/omniglot-small")
METRICS = ("overall", "head", "middle", "tail", "many", "medium", "few")
TASKS = ("classification", "segmentation", "detection")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="classification (--dataset), segmentation (CamVid) or detection (--detector)",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    parser.add_argument(
        "--imbalance-ratio", type=float, default=100.0, help="ρ of Fashion-MNIST-LT (10, 50, 100)"
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=tuple(
            dict.fromkeys(
                [
                    *LOSSES,
                    *SEGMENTATION_LOSSES,
                    *detection.ONE_STAGE_LOSSES,
                    *detection.TWO_STAGE_LOSSES,
                ]
            )
        ),
        metavar="LOSS",
        help=f"losses to compare (default: all of the task's; classification: "
        f"{', '.join(LOSSES)}; segmentation: {', '.join(SEGMENTATION_LOSSES)}; detection: "
        f"one-stage {', '.join(detection.ONE_STAGE_LOSSES)}, two-stage "
        f"{', '.join(detection.TWO_STAGE_LOSSES)})",
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default per data set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist), the "
        f"Omniglot zip folder (default {DEFAULT_OMNIGLOT_DIR}) or the CamVid folder "
        f"(default {DEFAULT_CAMVID_DIR})",
    )
    parser.add_argument(
        "--limit-images",
        type=int,
        help="segmentation: use only the first N images of each split (quick checks)",
    )
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default OUT/cache)")
    parser.add_argument("--log-dir", type=Path, help="also write TensorBoard scalars here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    # detection: its own options (tasks/detection.py)
    detection.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.task != "classification" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(
            f"eqlosses compare: torchrun: only the classification task runs distributed, "
            f"got --task {args.task}",
            file=sys.stderr,
        )
        return 2
    if args.task == "segmentation":
        return run_segmentation(args)
    if args.task == "detection":
        return detection.run_comparison(args)
    unknown = [loss for loss in args.losses or () if loss not in LOSSES]
    if unknown:
        print(
            f"eqlosses compare: --losses: expected classification losses among "
            f"{', '.join(LOSSES)}, got {', '.join(unknown)}",
            file=sys.stderr,
        )
        return 2
    args.losses = args.losses or list(LOSSES)
    ranks = init_from_environment()
    try:
        return _compare(args, ranks)
    finally:
        shutdown()


def _compare(args: argparse.Namespace, ranks: Ranks) -> int:
    out: Path = args.out
    (out / "runs").mkdir(parents=True, exist_ok=True)
    base = DEFAULT_CONFIG[args.dataset]
    config = replace(base, epochs=args.epochs or base.epochs)
    omniglot: OmniglotSource | None = None
    if args.dataset == "omniglot":
        omniglot = OmniglotSource(
            args.data_dir or DEFAULT_OMNIGLOT_DIR, args.cache_dir or out / "cache"
        )

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        pending = [loss for loss in args.losses if not run_path(out, loss, seed).exists()]
        for loss in args.losses:
            if loss not in pending:
                runs.append(json.loads(run_path(out, loss, seed).read_text()))
        if not pending:
            continue
        if omniglot is not None:
            data = omniglot.split(seed)
        else:
            data = fashion_mnist_lt(args.data_dir, args.imbalance_ratio, seed)
        for loss in pending:
            hook, writer = (None, None)
            if args.log_dir is not None and ranks.is_main:
                groups = class_groups(data.train_counts)
                hook, writer = tensorboard_hook(
                    args.log_dir,
                    f"{loss}__seed{seed}",
                    {name: groups[name] for name in ("head", "middle", "tail")},
                )
            record = train_one(
                data, loss, seed, config, ranks, on_epoch=hook, progress=not args.no_progress
            )
            if writer is not None:
                writer.close()
            if ranks.is_main:
                run_path(out, loss, seed).write_text(json.dumps(record))
                print(
                    f"{loss:>16} seed {seed}: overall {record['metrics']['overall']:.3f} "
                    f"tail {record['metrics']['tail']:.3f} ({record['seconds']:.0f} s)",
                    flush=True,
                )
            runs.append(record)

    if not ranks.is_main:
        return 0
    table = report.markdown_table(runs, args.losses, METRICS, BASELINE)
    payload = {
        "config": {
            "dataset": args.dataset,
            "imbalance_ratio": args.imbalance_ratio if args.dataset == "fashion-mnist" else None,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "seeds": args.seeds,
            "losses": args.losses,
            "world_size": ranks.world_size,
        },
        "summary": report.summarise(runs, args.losses, METRICS),
        "runs": runs,
    }
    report.write_results(out, payload)
    (out / "results.md").write_text(table)
    report.plot_per_class(
        runs,
        args.losses,
        out / "per_class_accuracy.png",
        ylabel="test accuracy",
        xlabel="training images of the class",
    )
    report.plot_grad_ratio(runs, out / "grad_ratio.png")
    print()
    print(table)
    print(f"results in {out}/ (results.json, results.md, per_class_accuracy.png, grad_ratio.png)")
    return 0
