"""Semantic segmentation on CamVid: one decoder per (loss, seed), IoU on the test split.

The setting: a frozen ImageNet EfficientNet-Lite0 encoder whose multi-scale maps are
computed once per image and cached (float16), and a light FPN decoder
(:class:`~eqlosses_lab.models.segmentation.FPNDecoder`) trained per (loss, seed) on the 367
training images; logits are upsampled to 180x240 so each loss runs per pixel (about
350,000 pixels a batch of 8). The one augmentation, identical for every loss, is a
horizontal flip with probability 1/2 per image and epoch: the encoder maps of the flipped
images are cached too, so a flipped sample is exactly the flipped image's features (not
the flipped features, which a convolution stack does not commute with).

Evaluation: one confusion matrix over all pixels of the 233 test images (label 11
ignored); the number of epochs is fixed in advance, the learning rate was chosen on the
val split. A seed fixes the decoder's initialisation, the data order and the flips.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

import eqlosses
from eqlosses import StatisticsLoss

from .. import report
from ..data.camvid import (
    CAMVID_CLASSES,
    CAMVID_HEIGHT,
    CAMVID_IGNORE_INDEX,
    CAMVID_PALETTE,
    CAMVID_WIDTH,
    CamVid,
    load_camvid,
)
from ..data.features import cached_features
from ..metrics.segmentation import (
    confusion_matrix,
    median_frequency_weights,
    pixel_counts,
    rare_classes,
    segmentation_scores,
)
from ..models.efficientnet_lite import load_pretrained_efficientnet_lite0
from ..models.segmentation import LITE0_MAP_CHANNELS, FPNDecoder, extract_feature_maps
from ..registry import SEGMENTATION, LossContext
from .progress import EpochHook, epoch_iterator, tensorboard_hook
from .runner import DamagedRunError, Record, TaskOutputs, run_path, save_array
from .settings import SegmentationConfig

NUM_CLASSES = len(CAMVID_CLASSES)
METRICS = (
    "miou",
    "rare",
    "frequent",
    "class_accuracy",
    "pixel_accuracy",
    "rare_recall",
    "rare_precision",
)
# test images shown in the example picture: those with the most rare-class pixels
NUM_EXAMPLES = 3
EXAMPLES_SUFFIX = ".examples.npy"


@dataclass
class SegmentationData:
    """Cached encoder maps and labels of the training images (plain and flipped) and the
    test images."""

    train_maps: dict[int, Tensor]
    train_flipped_maps: dict[int, Tensor]
    train_labels: Tensor
    test_maps: dict[int, Tensor]
    test_labels: Tensor

    @property
    def train_counts(self) -> list[int]:
        counts = pixel_counts(self.train_labels, NUM_CLASSES, CAMVID_IGNORE_INDEX)
        return [int(c) for c in counts]


def _map_shapes() -> dict[int, tuple[int, int, int]]:
    return {
        stride: (channels, -(-CAMVID_HEIGHT // stride), -(-CAMVID_WIDTH // stride))
        for stride, channels in LITE0_MAP_CHANNELS.items()
    }


def _cached_maps(
    cache_dir: Path, root: Path, split: CamVid, split_name: str, flipped: bool
) -> dict[int, Tensor]:
    """The split's encoder maps, from the cache or computed once (all strides of an image
    flattened into one float16 row)."""
    names = hashlib.sha256("|".join(split.names).encode()).hexdigest()[:16]
    key = (
        f"camvid|{root.resolve()}|{split_name}|{names}|flipped={flipped}|"
        f"efficientnet-lite0|maps={sorted(LITE0_MAP_CHANNELS)}|float16"
    )
    shapes = _map_shapes()

    def compute() -> Tensor:
        images = split.images[:, :, ::-1] if flipped else split.images
        encoder = load_pretrained_efficientnet_lite0()
        maps = extract_feature_maps(np.ascontiguousarray(images), encoder)
        return torch.cat([maps[s].reshape(len(images), -1) for s in sorted(shapes)], dim=1)

    flat = cached_features(cache_dir, key, compute)
    maps: dict[int, Tensor] = {}
    start = 0
    for stride in sorted(shapes):
        size = int(np.prod(shapes[stride]))
        maps[stride] = flat[:, start : start + size].reshape(-1, *shapes[stride])
        start += size
    return maps


def load_segmentation_data(
    root: Path, cache_dir: Path, limit: int | None = None
) -> tuple[SegmentationData, CamVid]:
    """Training and test maps and labels (``limit``: first images of each split only);
    also returns the test split itself, for pictures."""
    train = load_camvid(root, "train", limit)
    test = load_camvid(root, "test", limit)
    data = SegmentationData(
        train_maps=_cached_maps(cache_dir, root, train, "train", flipped=False),
        train_flipped_maps=_cached_maps(cache_dir, root, train, "train", flipped=True),
        train_labels=torch.as_tensor(train.labels),
        test_maps=_cached_maps(cache_dir, root, test, "test", flipped=False),
        test_labels=torch.as_tensor(test.labels),
    )
    return data, test


def example_indices(labels: Tensor, rare: Sequence[int], count: int = NUM_EXAMPLES) -> list[int]:
    """The ``count`` images with the most pixels of the rare classes (ties: lower index)."""
    is_rare = torch.zeros(int(labels.max()) + 1, dtype=torch.bool)
    is_rare[list(rare)] = True
    per_image = is_rare[labels].flatten(1).sum(1)
    order = sorted(range(labels.shape[0]), key=lambda i: (-int(per_image[i]), i))
    return order[:count]


def _batch_maps(maps: dict[int, Tensor], index: Tensor) -> dict[int, Tensor]:
    return {stride: value[index].float() for stride, value in maps.items()}


def train_segmentation(
    data: SegmentationData,
    loss_name: str,
    seed: int,
    config: SegmentationConfig,
    *,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    examples: Sequence[int] = (),
) -> tuple[Record, npt.NDArray[np.uint8]]:
    """Train one decoder with one loss and evaluate it on the test images.

    Returns the run's record and the predicted label maps ``(len(examples), H, W)`` of the
    test images ``examples``.
    """
    torch.manual_seed(seed)
    counts = data.train_counts
    rare = rare_classes(counts)
    median_frequency = median_frequency_weights(data.train_labels, NUM_CLASSES, CAMVID_IGNORE_INDEX)
    decoder = FPNDecoder(NUM_CLASSES, width=config.width)
    loss_fn = SEGMENTATION.build(
        loss_name,
        LossContext(counts, ignore_index=CAMVID_IGNORE_INDEX, class_weights=median_frequency),
    )
    optimizer = torch.optim.AdamW(
        decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    num_train = data.train_labels.shape[0]
    steps_per_epoch = -(-num_train // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    size = (CAMVID_HEIGHT, CAMVID_WIDTH)
    history: list[list[float]] = []
    epoch_seconds: list[float] = []
    started = time.perf_counter()

    epochs = epoch_iterator(config.epochs, f"{loss_name} seed {seed}", progress)
    for epoch in epochs:
        epoch_start = time.perf_counter()
        decoder.train()
        loss_fn.train()
        order = torch.randperm(num_train, generator=generator)
        flips = torch.rand(num_train, generator=generator) < 0.5
        total, seen = 0.0, 0
        for batch in torch.split(order, config.batch_size):
            flip = flips[batch]
            plain = _batch_maps(data.train_maps, batch)
            mirrored = _batch_maps(data.train_flipped_maps, batch)
            maps = {s: torch.where(flip.view(-1, 1, 1, 1), mirrored[s], plain[s]) for s in plain}
            labels = data.train_labels[batch]
            labels = torch.where(flip.view(-1, 1, 1), labels.flip(-1), labels)
            loss = loss_fn(decoder(maps, size), labels)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * batch.numel()
            seen += batch.numel()
        if isinstance(loss_fn, StatisticsLoss):
            history.append([float(g) for g in loss_fn.grad_ratio])
        epoch_seconds.append(time.perf_counter() - epoch_start)
        if on_epoch is not None:
            on_epoch(epoch, total / max(seen, 1), loss_fn)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{total / max(seen, 1):.3f}")

    decoder.eval()
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    wanted = {index: k for k, index in enumerate(examples)}
    predicted = np.zeros((len(wanted), *size), dtype=np.uint8)
    with torch.no_grad():
        for batch in torch.split(torch.arange(data.test_labels.shape[0]), 16):
            # every loss here predicts with softmax or sigmoid of the raw logits, both
            # monotone per pixel, so the arg-max of the logits is each method's prediction
            prediction = decoder(_batch_maps(data.test_maps, batch), size).argmax(dim=1)
            confusion += confusion_matrix(
                prediction, data.test_labels[batch], NUM_CLASSES, CAMVID_IGNORE_INDEX
            )
            for row, index in enumerate(batch.tolist()):
                if index in wanted:
                    predicted[wanted[index]] = prediction[row].numpy().astype(np.uint8)
    total_pixels = sum(counts)
    record = {
        "loss": loss_name,
        "seed": seed,
        **_scores_fields(confusion, rare),
        "class_sizes": counts,
        "pixel_share": [c / total_pixels for c in counts],
        "rare_classes": rare,
        "confusion": confusion.tolist(),
        "grad_ratio_history": history or None,
        "epoch_seconds": epoch_seconds,
        "seconds": time.perf_counter() - started,
    }
    return record, predicted


def _scores_fields(confusion: Tensor, rare: Sequence[int]) -> dict[str, Any]:
    """A run record's ``metrics`` and ``per_class``, from its confusion matrix."""
    scores = asdict(segmentation_scores(confusion, rare))
    per_class = scores.pop("per_class")
    return {"metrics": scores, "per_class": per_class}


def per_class_table(runs: Sequence[dict[str, Any]], losses: Sequence[str]) -> str:
    """Markdown: per-class test IoU (mean over seeds, %) of each loss, with the classes'
    training pixel shares; rare classes marked with *."""
    first = runs[0]
    rare = set(first["rare_classes"])
    names = [f"{n}*" if c in rare else n for c, n in enumerate(CAMVID_CLASSES)]
    lines = [
        "| loss | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| pixel share | " + " | ".join(f"{100 * s:.1f}" for s in first["pixel_share"]) + " |",
    ]
    for loss in losses:
        mine = [r for r in runs if r["loss"] == loss]
        if not mine:
            continue
        means = np.nanmean(np.array([r["per_class"] for r in mine], dtype=float), axis=0)
        lines.append(f"| `{loss}` | " + " | ".join(f"{100 * v:.1f}" for v in means) + " |")
    return "\n".join(lines) + "\n"


class SegmentationTask:
    """``eqlosses compare --task segmentation`` (see
    :class:`~eqlosses_lab.tasks.runner.Task`); every run also saves the predicted maps of
    the example images beside its record."""

    name = "segmentation"
    metrics = METRICS
    baseline = SEGMENTATION.baseline

    def __init__(
        self,
        data_dir: Path,
        limit_images: int | None,
        config: SegmentationConfig,
        *,
        threads: int,
        cache_dir: Path,
        log_dir: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.limit_images = limit_images
        self.config = config
        self.threads = threads
        self.cache_dir = cache_dir
        self.log_dir = log_dir
        self.progress = progress
        self._loaded: tuple[SegmentationData, CamVid, list[int], list[int]] | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "dataset": "camvid-240x180",
            "data_dir": str(self.data_dir.resolve()),
            "limit_images": self.limit_images,
            **asdict(self.config),
            "threads": self.threads,
            "world_size": 1,
            "torch_version": torch.__version__,
            "eqlosses_version": eqlosses.__version__,
        }

    def _load(self) -> tuple[SegmentationData, CamVid, list[int], list[int]]:
        """The cached maps, the test split, the rare classes and the example images."""
        if self._loaded is None:
            data, test = load_segmentation_data(self.data_dir, self.cache_dir, self.limit_images)
            rare = rare_classes(data.train_counts)
            self._loaded = (data, test, rare, example_indices(data.test_labels, rare))
        return self._loaded

    def prepare(self, seed: int) -> None:
        self._load()

    def train(self, loss: str, seed: int, record_path: Path) -> Record:
        data, _, rare, examples = self._load()
        hook, writer = None, None
        if self.log_dir is not None:
            frequent = [c for c in range(NUM_CLASSES) if c not in set(rare)]
            hook, writer = tensorboard_hook(
                self.log_dir,
                f"segmentation-{loss}__seed{seed}",
                {"rare": rare, "frequent": frequent},
            )
        try:
            record, predicted = train_segmentation(
                data,
                loss,
                seed,
                self.config,
                on_epoch=hook,
                progress=self.progress,
                examples=examples,
            )
        finally:
            if writer is not None:
                writer.close()
        save_array(record_path.with_suffix(EXAMPLES_SUFFIX), predicted)
        return record

    def reuse(self, record: Record, record_path: Path) -> Record:
        examples = record_path.with_suffix(EXAMPLES_SUFFIX)
        if not examples.is_file():
            raise DamagedRunError(f"has lost its predicted example maps ({examples.name})")
        if "confusion" not in record or "rare_classes" not in record:
            raise DamagedRunError("has no confusion matrix")
        # scores are recomputed from the saved confusion matrix, so every saved run
        # reports every current metric the same way
        return {
            **record,
            **_scores_fields(torch.tensor(record["confusion"]), record["rare_classes"]),
        }

    def describe(self, record: Record) -> str:
        metrics = record["metrics"]
        return (
            f"mIoU {metrics['miou']:.3f} rare {metrics['rare']:.3f}, "
            f"{np.mean(record['epoch_seconds']):.1f} s/epoch"
        )

    def write_outputs(
        self, out: Path, runs: Sequence[Record], losses: Sequence[str], seeds: Sequence[int]
    ) -> TaskOutputs:
        data, test, rare, examples = self._load()
        classes = per_class_table(runs, losses)
        labelled = sum(data.train_counts)
        report.plot_per_class(
            runs,
            losses,
            out / "per_class_iou.png",
            ylabel="test IoU",
            xlabel=f"training pixels of the class (of {labelled / 1e6:.1f}M labelled)",
        )
        files = ["per_class_iou.png"]
        if report.plot_grad_ratio_by_class(
            runs, out / "grad_ratio.png", class_names=CAMVID_CLASSES, highlight=rare
        ):
            files.append("grad_ratio.png")
        predictions = {
            loss: np.load(run_path(out, loss, min(seeds)).with_suffix(EXAMPLES_SUFFIX))
            for loss in _shown_losses(runs, losses, self.baseline)
        }
        report.plot_segmentation_examples(
            test.images[examples],
            test.labels[examples],
            predictions,
            out / "examples.png",
            palette=CAMVID_PALETTE,
            class_names=CAMVID_CLASSES,
        )
        files.append("examples.png")
        details = {
            "train_images": int(data.train_labels.shape[0]),
            "test_images": int(data.test_labels.shape[0]),
            "encoder": "EfficientNet-Lite0 (ImageNet, frozen, cached float16)",
            "augmentation": "horizontal flip, p = 0.5",
            "class_names": list(CAMVID_CLASSES),
            "rare_classes": rare,
            "pixel_share": runs[0]["pixel_share"] if runs else None,
            "example_images": [test.names[i] for i in examples],
        }
        notes = "Per-class IoU (%), mean over seeds:\n\n" + classes
        return TaskOutputs(details=details, files=files, notes=notes)


def _shown_losses(runs: Sequence[Record], losses: Sequence[str], baseline: str) -> list[str]:
    """The baseline, the best loss by mean mIoU and Softmax-EQL, each once, if run."""
    summary = report.summarise(runs, losses, METRICS)
    best = max(summary, key=lambda loss: summary[loss]["miou"]["mean"])
    shown = [loss for loss in (baseline, best, "softmax-eql") if loss in summary]
    return list(dict.fromkeys(shown))
