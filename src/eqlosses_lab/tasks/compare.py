"""``eqlosses compare``: one model per (loss, seed) on a long-tailed task, then tables,
pictures and verdicts (:mod:`eqlosses_lab.tasks.runner` runs them).

The options are built from modules that need torch alone, so ``eqlosses compare --help``
works without the lab extra; a task's own modules (numpy, PIL, matplotlib, ...) are
imported when the command runs. Every value is checked as it is parsed; options that do
not fit the chosen task are refused before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..arguments import (
    Distinct,
    imbalance_ratio,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
)
from ..errors import SettingsError
from ..locations import CAMVID, FASHION_MNIST, OMNIGLOT
from ..registry import (
    CLASSIFICATION,
    ONE_STAGE,
    SEGMENTATION,
    TWO_STAGE,
    ComparisonLosses,
    DenseLoss,
    RoILoss,
    comparison_losses,
    comparison_losses_help,
)
from .distributed import Ranks, init_from_environment, shutdown
from .settings import (
    CANVAS_PRESETS,
    CENTER_RADIUS,
    CLASSIFICATION_CONFIG,
    DATASETS,
    DETECTION_CONFIG,
    DETECTORS,
    IMBALANCE_RATIO,
    TASKS,
    SegmentationConfig,
)

if TYPE_CHECKING:
    from .runner import Task

# Which task (or detector) each task-specific option belongs to; given for another, it
# would be ignored, so it is refused.
TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    "dataset": ("classification",),
    "imbalance_ratio": ("classification",),
    "limit_images": ("segmentation",),
    "log_dir": ("classification", "segmentation"),
    "detector": ("detection",),
    "canvas_preset": ("detection",),
    "canvases": ("detection",),
    "center_radius": ("one-stage",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``eqlosses compare``."""
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="classification",
        help="classification (--dataset), segmentation (CamVid) or detection (--detector); "
        "default classification",
    )
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        help="classification: Fashion-MNIST-LT (a small CNN) or Omniglot-LT (a linear head on "
        "cached features); default fashion-mnist",
    )
    parser.add_argument(
        "--imbalance-ratio",
        type=imbalance_ratio,
        metavar="RHO",
        help=f"classification on fashion-mnist: head over tail class count (default "
        f"{IMBALANCE_RATIO:g})",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=comparison_losses(),
        action=Distinct,
        metavar="LOSS",
        help=f"losses to compare (default: all of the task's): {comparison_losses_help()}",
    )
    defaults = ", ".join(
        [
            *(f"{name} {config.epochs}" for name, config in CLASSIFICATION_CONFIG.items()),
            f"segmentation {SegmentationConfig.epochs}",
            *(f"{name} {config.epochs}" for name, config in DETECTION_CONFIG.items()),
        ]
    )
    parser.add_argument(
        "--epochs", type=positive_int, help=f"training epochs (default: {defaults})"
    )
    parser.add_argument(
        "--seeds",
        type=non_negative_int,
        nargs="+",
        action=Distinct,
        default=[0, 1, 2],
        help="one run per loss and seed (default 0 1 2)",
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        help="output folder; a rerun into it resumes (default: runs/classification-"
        "fashion-mnist, runs/classification-omniglot, runs/segmentation-camvid, "
        "runs/detection-one-stage or runs/detection-two-stage)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"the data set's folder: Fashion-MNIST's IDX files (else ${FASHION_MNIST.variable}, "
        f"else {FASHION_MNIST.default}), the Omniglot zips (else ${OMNIGLOT.variable}; also "
        f"for detection) or CamVid 240x180 (else ${CAMVID.variable})",
    )
    parser.add_argument(
        "--limit-images",
        type=positive_int,
        metavar="N",
        help="segmentation: use only the first N images of each split (quick checks)",
    )
    parser.add_argument("--cache-dir", type=output_folder, help="feature cache (default OUT/cache)")
    parser.add_argument(
        "--log-dir",
        type=output_folder,
        help="classification, segmentation: also write TensorBoard scalars here",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--detector",
        choices=DETECTORS,
        help="detection: the FCOS-like one-stage detector or the two-stage one (default one-stage)",
    )
    parser.add_argument(
        "--canvas-preset",
        choices=tuple(CANVAS_PRESETS),
        help="detection: the Omniglot-Det canvases ('tiny' is a smoke test; default full)",
    )
    parser.add_argument(
        "--center-radius",
        type=positive_float,
        help="one-stage detection: the centre-sampling radius in strides (default "
        f"{CENTER_RADIUS}; smaller means fewer positive locations)",
    )
    parser.add_argument(
        "--canvases",
        type=positive_int,
        nargs=2,
        metavar=("TRAIN", "TEST"),
        help="detection: number of training and test canvases (default 2500 500)",
    )


def _scope(args: argparse.Namespace) -> tuple[str, ...]:
    """The task, and for detection its detector: what task-specific options belong to."""
    if args.task == "detection":
        return ("detection", args.detector or DETECTORS[0])
    return (args.task,)


def _check_options(args: argparse.Namespace, world_size: int) -> None:
    scope = _scope(args)
    for option, owners in TASK_OPTIONS.items():
        if getattr(args, option) is not None and not set(owners) & set(scope):
            flag = "--" + option.replace("_", "-")
            raise SettingsError(
                f"{flag}: only for {' or '.join(owners)}, got it with {' '.join(scope)}"
            )
    if args.imbalance_ratio is not None and args.dataset == "omniglot":
        raise SettingsError("--imbalance-ratio: only for fashion-mnist (Omniglot-LT is fixed)")
    if world_size > 1 and args.task != "classification":
        raise SettingsError(
            f"torchrun: only the classification task runs distributed, got --task {args.task}"
        )
    table = _losses(args)
    unknown = [loss for loss in args.losses or () if loss not in table.names]
    if unknown:
        raise SettingsError(
            f"--losses: {' '.join(scope)} takes {', '.join(table.names)}, got {', '.join(unknown)}"
        )


def _losses(
    args: argparse.Namespace,
) -> ComparisonLosses[nn.Module] | ComparisonLosses[DenseLoss] | ComparisonLosses[RoILoss]:
    """The registry's table of the chosen task (and detector)."""
    if args.task == "classification":
        return CLASSIFICATION
    if args.task == "segmentation":
        return SEGMENTATION
    return ONE_STAGE if (args.detector or DETECTORS[0]) == "one-stage" else TWO_STAGE


def default_output(args: argparse.Namespace) -> Path:
    """Each comparison's own folder under ``runs/``: comparisons of different tasks or
    data sets never share one."""
    variant = {
        "classification": args.dataset or DATASETS[0],
        "segmentation": "camvid",
        "detection": args.detector or DETECTORS[0],
    }[args.task]
    return Path("runs", f"{args.task}-{variant}")


def run(args: argparse.Namespace) -> int:
    """``eqlosses compare``; returns the exit code."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _check_options(args, world_size)
    losses: list[str] = list(args.losses or _losses(args).names)
    seeds: list[int] = list(args.seeds)
    out: Path = args.out or default_output(args)
    torch.set_num_threads(args.threads)
    # the runner and the tasks need the lab extra: imported now, not when parsing
    from .runner import compare

    ranks = init_from_environment()
    try:
        if args.task == "classification":
            task, words = _classification(args, out, ranks)
        elif args.task == "segmentation":
            task, words = _segmentation(args, out)
        else:
            task, words = _detection(args, out)
        words += ["--losses", *losses, "--seeds", *map(str, seeds)]
        words += ["--threads", str(args.threads), "--out", str(out)]
        launcher = ["eqlosses"]
        if ranks.world_size > 1:
            launcher = ["torchrun", f"--nproc_per_node={ranks.world_size}", "-m", "eqlosses"]
        command = shlex.join([*launcher, "compare", *words])
        return compare(task, losses, seeds, out, command, is_main=ranks.is_main)
    finally:
        shutdown()


def _classification(args: argparse.Namespace, out: Path, ranks: Ranks) -> tuple[Task, list[str]]:
    from .classification import ClassificationTask

    dataset = args.dataset or DATASETS[0]
    ratio = None
    if dataset == "fashion-mnist":
        data_dir = FASHION_MNIST.require(args.data_dir)
        ratio = args.imbalance_ratio if args.imbalance_ratio is not None else IMBALANCE_RATIO
    else:
        data_dir = OMNIGLOT.require(args.data_dir)
    base = CLASSIFICATION_CONFIG[dataset]
    config = replace(base, epochs=args.epochs or base.epochs)
    task = ClassificationTask(
        dataset,
        data_dir,
        ratio,
        config,
        ranks=ranks,
        threads=args.threads,
        cache_dir=args.cache_dir or out / "cache",
        log_dir=args.log_dir,
        progress=not args.no_progress,
    )
    words = ["--task", "classification", "--dataset", dataset]
    if ratio is not None:
        words += ["--imbalance-ratio", str(ratio)]
    words += ["--epochs", str(config.epochs), "--data-dir", str(data_dir.resolve())]
    return task, words


def _segmentation(args: argparse.Namespace, out: Path) -> tuple[Task, list[str]]:
    from .segmentation import SegmentationTask

    data_dir = CAMVID.require(args.data_dir)
    config = SegmentationConfig(epochs=args.epochs or SegmentationConfig.epochs)
    task = SegmentationTask(
        data_dir,
        args.limit_images,
        config,
        threads=args.threads,
        cache_dir=args.cache_dir or out / "cache",
        log_dir=args.log_dir,
        progress=not args.no_progress,
    )
    words = ["--task", "segmentation"]
    if args.limit_images is not None:
        words += ["--limit-images", str(args.limit_images)]
    words += ["--epochs", str(config.epochs), "--data-dir", str(data_dir.resolve())]
    return task, words


def _detection(args: argparse.Namespace, out: Path) -> tuple[Task, list[str]]:
    from .detection import DetectionTask

    detector = args.detector or DETECTORS[0]
    data_dir = OMNIGLOT.require(args.data_dir)
    base = DETECTION_CONFIG[detector]
    config = replace(base, epochs=args.epochs or base.epochs)
    preset = args.canvas_preset or "full"
    center_radius = args.center_radius if args.center_radius is not None else CENTER_RADIUS
    task = DetectionTask(
        detector,
        data_dir,
        config,
        canvas_preset=preset,
        canvas_counts=tuple(args.canvases) if args.canvases else None,
        center_radius=center_radius,
        threads=args.threads,
        cache_dir=args.cache_dir or out / "cache",
        progress=not args.no_progress,
    )
    words = ["--task", "detection", "--detector", detector, "--canvas-preset", preset]
    if args.canvases:
        words += ["--canvases", *map(str, args.canvases)]
    if detector == "one-stage":
        words += ["--center-radius", str(center_radius)]
    words += ["--epochs", str(config.epochs), "--data-dir", str(data_dir.resolve())]
    return task, words
