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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from eqlosses import StatisticsLoss

from ..data.fashion_mnist import load_fashion_mnist
from ..data.features import cached_features
from ..data.longtail import longtail_subset
from ..data.omniglot import load_omniglot, omniglot_lt_split
from ..metrics import group_accuracy
from ..models.efficientnet_lite import extract_features
from ..models.small_cnn import SmallCNN, grayscale_batch
from .distributed import Ranks
from .losses import build_loss, predict_scores
from .progress import EpochHook, epoch_iterator

Dataset = Literal["fashion-mnist", "omniglot"]
DATASETS: tuple[Dataset, ...] = ("fashion-mnist", "omniglot")
# Omniglot glyphs are resized to this before the ImageNet extractor.
OMNIGLOT_FEATURE_SIZE = 112


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


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    momentum: float = 0.9


DEFAULT_CONFIG: dict[Dataset, TrainConfig] = {
    "fashion-mnist": TrainConfig(epochs=6, batch_size=128, lr=0.05),
    "omniglot": TrainConfig(epochs=30, batch_size=128, lr=0.1),
}


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


def fashion_mnist_lt(
    data_dir: Path | None, imbalance_ratio: float, seed: int
) -> ClassificationData:
    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
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
) -> dict[str, Any]:
    """Train one model with one loss and evaluate it; returns the run's record."""
    torch.manual_seed(seed)
    model = build_model(data)
    loss_fn = build_loss(loss_name, data.train_counts, seed)
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
