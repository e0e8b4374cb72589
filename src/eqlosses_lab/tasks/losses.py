"""The losses a comparison can train with, by name, each with its paper's defaults."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from eqlosses import (
    EQL,
    BalancedSoftmax,
    ClassBalancedLoss,
    FocalLoss,
    SeesawLoss,
    SigmoidEQL,
    SoftmaxEQL,
)

# EQL v1 has no verified classification default (SPEC §5): the classes of the tail third
# by training count are the rare ones, and β ~ Bernoulli(0.9) as public ports use.
EQL_DROP_PROB = 0.9

LossFactory = Callable[[Sequence[int], int], nn.Module]


def _eql(train_counts: Sequence[int], seed: int) -> nn.Module:
    order = sorted(range(len(train_counts)), key=lambda c: -train_counts[c])
    tail = order[round(2 * len(order) / 3) :]
    total = sum(train_counts)
    # λ just above the most frequent tail class, so exactly the tail third is rare
    threshold = (max(train_counts[c] for c in tail) + 0.5) / total
    generator = torch.Generator().manual_seed(seed)
    return EQL(
        train_counts,
        total,
        threshold,
        activation="softmax",
        drop_prob=EQL_DROP_PROB,
        generator=generator,
    )


LOSSES: dict[str, LossFactory] = {
    "ce": lambda counts, seed: nn.CrossEntropyLoss(),
    "focal": lambda counts, seed: FocalLoss(len(counts)),
    "class-balanced": lambda counts, seed: ClassBalancedLoss(counts),
    "balanced-softmax": lambda counts, seed: BalancedSoftmax(counts),
    "seesaw": lambda counts, seed: SeesawLoss(len(counts)),
    "eql": _eql,
    "softmax-eql": lambda counts, seed: SoftmaxEQL(len(counts)),
    "sigmoid-eql": lambda counts, seed: SigmoidEQL(len(counts)),
}
BASELINE = "ce"


def build_loss(name: str, train_counts: Sequence[int], seed: int) -> nn.Module:
    if name not in LOSSES:
        known = ", ".join(LOSSES)
        raise ValueError(f"loss: expected one of {known}, got {name!r}")
    return LOSSES[name](train_counts, seed)


def predict_scores(loss: nn.Module, logits: Tensor) -> Tensor:
    """Class scores the way the loss's method scores at test time."""
    predict = getattr(loss, "predict", None)
    if predict is None:
        return torch.softmax(logits, dim=-1)
    scores: Tensor = predict(logits)
    return scores
