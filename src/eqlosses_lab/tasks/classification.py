"""Long-tailed image classification: data preparation, training one run, evaluation.

Two settings:

* ``fashion-mnist``: Fashion-MNIST-LT (exponential profile, imbalance ratio ρ), a small
  CNN trained end to end, so the loss shapes the features.
* ``omniglot``: Omniglot-LT (292 characters, 5 balanced test drawings each, training
  drawings from 15 down to 1), frozen ImageNet EfficientNet-Lite0 features (cached) and a
  linear classifier per loss.

A seed fixes the long-tailed subset, the initialisation and the data order. Under
``torchrun`` each global batch is split across the ranks; every rank scales its mean loss
by its share of the batch and the gradients are summed, so training equals one process
fed the whole batch up to float rounding (the models hold no batch statistics).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

import eqlosses
from eqlosses import StatisticsLoss

from .. import report
from ..data.fashion_mnist import load_fashion_mnist
from ..data.features import cached_features
from ..data.longtail import longtail_subset
from ..data.omniglot import load_omniglot, omniglot_lt_split
from ..errors import SettingsError
from ..metrics import class_groups, group_accuracy
from ..models.efficientnet_lite import extract_features
from ..models.small_cnn import SmallCNN, grayscale_batch
from ..registry import CLASSIFICATION, LossContext
from .distributed import Ranks
from .progress import EpochHook, epoch_iterator, tensorboard_hook
from .runner import Record, TaskOutputs
from .settings import Dataset, TrainConfig

# Omniglot glyphs are resized to this before the ImageNet extractor.
OMNIGLOT_FEATURE_SIZE = 112
METRICS = ("overall", "head", "middle", "tail", "many", "medium", "few")


@dataclass
class ClassificationData:
    dataset: Dataset
    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> list[int]:
        counts = torch.bincount(self.train_labels, minlength=self.num_classes)
        return [int(c) for c in counts]


class OmniglotSource:
    """Omniglot images and their cached features, loaded once for every seed."""

    def __init__(self, data_dir: Path, cache_dir: Path) -> None:
        omniglot = load_omniglot(data_dir)
        self.labels = torch.as_tensor(omniglot.labels)
        self.class_names = list(omniglot.class_names)
        archives = sorted(p.name for p in data_dir.glob("*.zip"))
        key = f"omniglot|{archives}|efficientnet-lite0|size={OMNIGLOT_FEATURE_SIZE}"
        self.features = cached_features(
            cache_dir,
            key,
            lambda: extract_features(omniglot.images, size=OMNIGLOT_FEATURE_SIZE),
        )

    def split(self, seed: int) -> ClassificationData:
        split = omniglot_lt_split(self.labels.numpy(), seed=seed)
        train = torch.as_tensor(split.train)
        test = torch.as_tensor(split.test)
        # standardise with training statistics only
        mean = self.features[train].mean(0)
        std = self.features[train].std(0).clamp_min(1e-6)
        features = (self.features - mean) / std
        return ClassificationData(
            "omniglot",
            features[train],
            self.labels[train],
            features[test],
            self.labels[test],
            self.class_names,
        )


def fashion_mnist_lt(data_dir: Path, imbalance_ratio: float, seed: int) -> ClassificationData:
    """Fashion-MNIST-LT: the seeded long-tailed subset of the training split (the smallest
    class's size as the head count), the whole test split."""
    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
    head = int(np.bincount(train.labels).min())
    if imbalance_ratio > head:
        raise SettingsError(
            f"--imbalance-ratio: expected at most {head} (the head class keeps {head} "
            f"training images, so a larger ratio leaves the tail class none), got "
            f"{imbalance_ratio:g}"
        )
    keep = torch.as_tensor(longtail_subset(train.labels, imbalance_ratio, seed=seed))
    return ClassificationData(
        "fashion-mnist",
        grayscale_batch(train.images)[keep],
        torch.as_tensor(train.labels)[keep],
        grayscale_batch(test.images),
        torch.as_tensor(test.labels),
        list(train.class_names),
    )


def build_model(data: ClassificationData) -> nn.Module:
    if data.dataset == "fashion-mnist":
        return SmallCNN(data.num_classes)
    return nn.Linear(data.train_inputs.shape[1], data.num_classes)


def predict_scores(loss: nn.Module, logits: Tensor) -> Tensor:
    """Class scores the way the loss's method scores at test time."""
    predict = getattr(loss, "predict", None)
    if predict is None:
        return torch.softmax(logits, dim=-1)
    scores: Tensor = predict(logits)
    return scores


def _sum_gradients(model: nn.Module) -> None:
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)


def train_one(
    data: ClassificationData,
    loss_name: str,
    seed: int,
    config: TrainConfig,
    ranks: Ranks,
    *,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
) -> Record:
    """Train one model with one loss and evaluate it; returns the run's record."""
    torch.manual_seed(seed)
    model = build_model(data)
    loss_fn = CLASSIFICATION.build(loss_name, LossContext(data.train_counts, seed=seed))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    num_train = data.train_labels.shape[0]
    steps_per_epoch = -(-num_train // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch
    )
    order_generator = torch.Generator().manual_seed(seed)
    history: list[list[float]] = []
    started = time.perf_counter()

    epochs = epoch_iterator(config.epochs, f"{loss_name} seed {seed}", progress and ranks.is_main)
    for epoch in epochs:
        model.train()
        loss_fn.train()
        order = torch.randperm(num_train, generator=order_generator)
        total, seen = 0.0, 0
        for batch in torch.split(order, config.batch_size):
            local = ranks.share(batch)
            logits = model(data.train_inputs[local])
            loss = loss_fn(logits, data.train_labels[local])
            # each rank's mean weighs by its share, so summed gradients are the global mean's
            share = local.numel() / batch.numel()
            optimizer.zero_grad(set_to_none=False)
            (loss * share).backward()
            if ranks.world_size > 1:
                _sum_gradients(model)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * local.numel()
            seen += local.numel()
        if isinstance(loss_fn, StatisticsLoss):
            history.append([float(g) for g in loss_fn.grad_ratio])
        if on_epoch is not None:
            on_epoch(epoch, total / max(seen, 1), loss_fn)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{total / max(seen, 1):.3f}")

    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in torch.split(data.test_inputs, 1024)])
        predictions = predict_scores(loss_fn, logits).argmax(dim=1)
    result = group_accuracy(predictions, data.test_labels, data.train_counts)
    return {
        "loss": loss_name,
        "seed": seed,
        "metrics": {"overall": result.overall, **result.groups},
        "per_class": result.per_class,
        "class_sizes": data.train_counts,
        "grad_ratio_history": history or None,
        "seconds": time.perf_counter() - started,
    }


class ClassificationTask:
    """``eqlosses compare --task classification``: the runs of one data set (see
    :class:`~eqlosses_lab.tasks.runner.Task`)."""

    name = "classification"
    metrics = METRICS
    baseline = CLASSIFICATION.baseline

    def __init__(
        self,
        dataset: Dataset,
        data_dir: Path,
        imbalance_ratio: float | None,
        config: TrainConfig,
        *,
        ranks: Ranks,
        threads: int,
        cache_dir: Path,
        log_dir: Path | None = None,
        progress: bool = True,
    ) -> None:
        self.dataset = dataset
        self.data_dir = data_dir
        self.imbalance_ratio = imbalance_ratio
        self.config = config
        self.ranks = ranks
        self.threads = threads
        self.cache_dir = cache_dir
        self.log_dir = log_dir
        self.progress = progress
        self._omniglot: OmniglotSource | None = None
        self._data: ClassificationData | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "dataset": self.dataset,
            "data_dir": str(self.data_dir.resolve()),
            "imbalance_ratio": self.imbalance_ratio,
            **asdict(self.config),
            "threads": self.threads,
            "world_size": self.ranks.world_size,
            "torch_version": torch.__version__,
            "eqlosses_version": eqlosses.__version__,
        }

    def prepare(self, seed: int) -> None:
        if self.dataset == "fashion-mnist":
            assert self.imbalance_ratio is not None
            self._data = fashion_mnist_lt(self.data_dir, self.imbalance_ratio, seed)
            return
        if self._omniglot is None:
            self._omniglot = OmniglotSource(self.data_dir, self.cache_dir)
        self._data = self._omniglot.split(seed)

    def train(self, loss: str, seed: int, record_path: Path) -> Record:
        data = self._data
        assert data is not None, "prepare(seed) comes first"
        hook, writer = None, None
        if self.log_dir is not None and self.ranks.is_main:
            groups = class_groups(data.train_counts)
            hook, writer = tensorboard_hook(
                self.log_dir,
                f"{loss}__seed{seed}",
                {name: groups[name] for name in ("head", "middle", "tail")},
            )
        try:
            return train_one(
                data, loss, seed, self.config, self.ranks, on_epoch=hook, progress=self.progress
            )
        finally:
            if writer is not None:
                writer.close()

    def reuse(self, record: Record, record_path: Path) -> Record:
        return record

    def describe(self, record: Record) -> str:
        metrics = record["metrics"]
        return f"overall {metrics['overall']:.3f} tail {metrics['tail']:.3f}"

    def write_outputs(
        self, out: Path, runs: Sequence[Record], losses: Sequence[str], seeds: Sequence[int]
    ) -> TaskOutputs:
        report.plot_per_class(
            runs,
            losses,
            out / "per_class_accuracy.png",
            ylabel="test accuracy",
            xlabel="training images of the class",
        )
        files = ["per_class_accuracy.png"]
        if report.plot_grad_ratio(
            runs, out / "grad_ratio.png", size_label="training images of the class"
        ):
            files.append("grad_ratio.png")
        return TaskOutputs(files=files)
