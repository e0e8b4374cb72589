"""The losses the lab trains and benchmarks, by name: for every task a loss applies to, how
it is built from what the task knows (:class:`LossContext`).

One table per task, in the order its comparison lists the losses, each with its
baseline:

* ``classification``: ``(N, C)`` logits, integer labels; modules called
  ``loss(logits, labels)``.
* ``segmentation``: ``(N, C, H, W)`` logits per pixel, label :attr:`LossContext.ignore_index`
  unlabelled; modules called ``loss(logits, labels)``.
* ``one-stage`` detection: ``C`` sigmoid logits per location, background label ``C``;
  :class:`DenseLoss`, every loss divided by the number of positive locations.
* ``two-stage`` detection: one row of logits per RoI in the loss's own column layout
  (:class:`RoILoss`), background label ``C``:

  ==================  ================================================================
  ``ce``              ``C + 1`` softmax, background last; score: softmax, bg dropped
  ``bce``             ``C`` sigmoid columns, background rows all zero; score ``σ``
  ``eql``             as ``bce``; rare classes (the ``'r'`` group) lose their negative
                      gradients on foreground RoIs
  ``sigmoid-eql``     ``C + 1``: background column in the loss, out of the statistics;
                      score ``σ(z_c) (1 - σ(z_bg))``
  ``seesaw``          ``C + 2``: Seesaw softmax over the ``C`` class columns on
                      foreground RoIs + a 2-way objectness softmax on all; score
                      ``softmax_c · p(fg)``
  ``federated``       ``C + 1``: background column dropped, sigmoid BCE on the batch's
                      classes plus sampled ones; score ``σ`` of the ``C`` columns
  ==================  ================================================================

  Every sigmoid head starts its class columns at ``σ =`` :data:`SIGMOID_PRIOR`; the
  softmax heads (``ce``, ``seesaw``) at bias 0.
* ``benchmark``: the statistics-keeping losses at LVIS-like sizes, as ``eqlosses
  benchmark`` times them.

Every loss gets its paper's defaults unless the task says otherwise here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqlosses import (
    EQL,
    BalancedSoftmax,
    ClassBalancedLoss,
    EqualizedFocalLoss,
    EqualizedQualityFocalLoss,
    FederatedLoss,
    FocalLoss,
    SeesawLoss,
    SigmoidEQL,
    SoftmaxEQL,
    StatisticsLoss,
)

Task = Literal["classification", "segmentation", "one-stage", "two-stage", "benchmark"]

# EQL v1 has no published classification default: the classes of the tail third by
# training count are the rare ones, and β ~ Bernoulli(0.9) as public ports use.
EQL_DROP_PROB = 0.9
# EQL v1's published LVIS v1 threshold λ (fraction of training images).
EQL_LVIS_V1_THRESHOLD = 0.0011
# A sigmoid head starts every class at this probability, as RetinaNet/FCOS heads (and
# CenterNet2's federated-loss RoI head) do: at bias 0 each RoI would push all C columns
# down from σ = 0.5 at once, and the first steps would drown the positives.
SIGMOID_PRIOR = 0.01


@dataclass(frozen=True)
class LossContext:
    """What a task knows when it builds a loss.

    Attributes:
        class_counts: training count of each class (images for classification and
            detection, labelled pixels for segmentation); its length is ``C``.
        seed: the run's seed; a loss that draws random numbers gets its own generator
            seeded with it.
        ignore_index: the label of rows (pixels) no loss sees.
        class_weights: per-class weights of a weighted baseline (segmentation: SegNet's
            median-frequency weights).
        groups: detection: each class's LVIS frequency group, ``'r'``, ``'c'`` or ``'f'``.
        num_images: detection and benchmark: the training images the class counts are
            frequencies of (EQL v1's threshold is a share of them).
        sampled_classes: two-stage detection: the classes the federated loss samples
            per step.
    """

    class_counts: Sequence[int] | Tensor
    seed: int = 0
    ignore_index: int = -100
    class_weights: Tensor | None = None
    groups: Sequence[str] | None = None
    num_images: int | None = None
    sampled_classes: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)


Needed = TypeVar("Needed")


def _needed(value: Needed | None, field: str) -> Needed:
    if value is None:
        raise ValueError(f"context.{field}: this loss needs it, got None")
    return value


@dataclass(frozen=True)
class DenseLoss:
    """A one-stage classification loss: ``loss(logits, labels, quality, num_pos)`` with
    ``(B, P, C)`` logits, ``(B, P)`` labels (``C`` = background), the IoU of each
    location's predicted box with its target (``None`` unless :attr:`takes_quality`)
    and the number of positive locations that normalises it."""

    module: nn.Module
    takes_quality: bool
    loss: Callable[[Tensor, Tensor, Tensor | None, Tensor], Tensor]
    scores: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RoILoss:
    """A two-stage classification loss: its module, column count, loss, test-time
    scoring and the initial probability of its class columns (``None``: bias 0, a
    softmax head)."""

    module: nn.Module
    columns: int
    loss: Callable[[Tensor, Tensor], Tensor]
    scores: Callable[[Tensor], Tensor]
    prior_prob: float | None = None


Built = TypeVar("Built")


@dataclass(frozen=True)
class TaskLosses(Generic[Built]):
    """The losses of one task, by name, in the order its outputs list them."""

    task: Task
    builders: dict[str, Callable[[LossContext], Built]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.builders)

    def build(self, name: str, context: LossContext) -> Built:
        """The loss ``name`` of this task, built for ``context``.

        Raises:
            ValueError: if the task has no loss of that name, naming the ones it has.

        Example:
            >>> loss = CLASSIFICATION.build("softmax-eql", LossContext([600, 60, 6]))
            >>> value = loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
            >>> value.shape, loss.num_classes
            (torch.Size([]), 3)
        """
        if name not in self.builders:
            known = ", ".join(self.builders)
            raise ValueError(f"loss: expected one of {known} for {self.task}, got {name!r}")
        return self.builders[name](context)


@dataclass(frozen=True)
class ComparisonLosses(TaskLosses[Built]):
    """The losses of a comparison task and the one the others are judged against."""

    baseline: str


# ------------------------------------------------------------------ classification


def _classification_eql(context: LossContext) -> nn.Module:
    counts = [int(n) for n in context.class_counts]
    order = sorted(range(len(counts)), key=lambda c: -counts[c])
    tail = order[round(2 * len(order) / 3) :]
    total = sum(counts)
    # λ just above the most frequent tail class, so exactly the tail third is rare
    threshold = (max(counts[c] for c in tail) + 0.5) / total
    generator = torch.Generator().manual_seed(context.seed)
    return EQL(
        counts,
        total,
        threshold,
        activation="softmax",
        drop_prob=EQL_DROP_PROB,
        generator=generator,
    )


CLASSIFICATION: ComparisonLosses[nn.Module] = ComparisonLosses(
    "classification",
    {
        "ce": lambda context: nn.CrossEntropyLoss(),
        "focal": lambda context: FocalLoss(context.num_classes),
        "class-balanced": lambda context: ClassBalancedLoss(context.class_counts),
        "balanced-softmax": lambda context: BalancedSoftmax(context.class_counts),
        "seesaw": lambda context: SeesawLoss(context.num_classes),
        "eql": _classification_eql,
        "softmax-eql": lambda context: SoftmaxEQL(context.num_classes),
        "sigmoid-eql": lambda context: SigmoidEQL(context.num_classes),
    },
    baseline="ce",
)


# -------------------------------------------------------------------- segmentation


class ClassLastLoss(nn.Module):
    """Feeds ``(N, C, H, W)`` logits to a loss that takes the classes last (the sigmoid
    focal loss's ``(..., C)`` layout, where every position is a row)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        out: Tensor = self.loss(logits.movedim(1, -1), target)
        return out


def _median_frequency_ce(context: LossContext) -> nn.Module:
    weights = _needed(context.class_weights, "class_weights")
    return nn.CrossEntropyLoss(weight=weights.float(), ignore_index=context.ignore_index)


# Cross-entropy is torch's own (the baseline users have).
SEGMENTATION: ComparisonLosses[nn.Module] = ComparisonLosses(
    "segmentation",
    {
        "ce": lambda context: nn.CrossEntropyLoss(ignore_index=context.ignore_index),
        "ce-median-freq": _median_frequency_ce,
        "focal": lambda context: ClassLastLoss(
            FocalLoss(context.num_classes, ignore_index=context.ignore_index)
        ),
        "balanced-softmax": lambda context: BalancedSoftmax(
            torch.as_tensor(context.class_counts), ignore_index=context.ignore_index
        ),
        "seesaw": lambda context: SeesawLoss(
            context.num_classes, ignore_index=context.ignore_index
        ),
        "softmax-eql": lambda context: SoftmaxEQL(
            context.num_classes, ignore_index=context.ignore_index
        ),
    },
    baseline="ce",
)


# ------------------------------------------------------------------------ one-stage


def _averaged(module: nn.Module, predict: Callable[[Tensor], Tensor]) -> DenseLoss:
    """A loss that divides by ``avg_factor`` itself."""
    return DenseLoss(module, False, lambda z, y, q, n: module(z, y, avg_factor=n), predict)


def _quality(module: EqualizedQualityFocalLoss) -> DenseLoss:
    return DenseLoss(module, True, lambda z, y, q, n: module(z, y, q, avg_factor=n), module.predict)


def _dense_focal(context: LossContext) -> DenseLoss:
    focal = FocalLoss(context.num_classes)
    return _averaged(focal, focal.predict)


def _dense_efl(context: LossContext) -> DenseLoss:
    efl = EqualizedFocalLoss(context.num_classes)
    return _averaged(efl, efl.predict)


def _dense_sigmoid_eql(context: LossContext) -> DenseLoss:
    # summed, then divided by the positives like the others
    eqlv2 = SigmoidEQL(context.num_classes, reduction="sum")
    return DenseLoss(eqlv2, False, lambda z, y, q, n: eqlv2(z, y) / n, eqlv2.predict)


ONE_STAGE: ComparisonLosses[DenseLoss] = ComparisonLosses(
    "one-stage",
    {
        "focal": _dense_focal,
        "efl": _dense_efl,
        # the quality focal loss itself: EQFL with s = 0 has γ_j = γ_b and w_j = 1 for
        # every class, so it separates the quality target's effect from equalization's
        "qfl": lambda context: _quality(EqualizedQualityFocalLoss(context.num_classes, scale=0.0)),
        "eqfl": lambda context: _quality(EqualizedQualityFocalLoss(context.num_classes)),
        "sigmoid-eql": _dense_sigmoid_eql,
    },
    baseline="focal",
)


# ------------------------------------------------------------------------ two-stage


def _roi_ce(context: LossContext) -> RoILoss:
    c = context.num_classes
    ce = nn.CrossEntropyLoss()
    return RoILoss(ce, c + 1, ce, lambda z: torch.softmax(z, dim=1)[:, :c])


def _roi_bce(context: LossContext) -> RoILoss:
    c = context.num_classes

    def bce(logits: Tensor, labels: Tensor) -> Tensor:
        target = F.one_hot(labels, c + 1)[:, :c].to(logits.dtype)
        summed = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        return summed / max(labels.shape[0], 1)

    return RoILoss(nn.Identity(), c, bce, torch.sigmoid, SIGMOID_PRIOR)


def _roi_eql(context: LossContext) -> RoILoss:
    num_images = _needed(context.num_images, "num_images")
    groups = _needed(context.groups, "groups")
    counts = [int(n) for n in context.class_counts]
    rare = [n for n, g in zip(counts, groups, strict=True) if g == "r"]
    # λ just above the most frequent 'r' class: the rare classes are LVIS's 'r' group
    threshold = (max(rare, default=0) + 0.5) / num_images
    eql = EQL(counts, num_images, threshold, activation="sigmoid")
    return RoILoss(eql, context.num_classes, eql, eql.predict, SIGMOID_PRIOR)


def _roi_sigmoid_eql(context: LossContext) -> RoILoss:
    eqlv2 = SigmoidEQL(context.num_classes, objectness=True)
    return RoILoss(eqlv2, context.num_classes + 1, eqlv2, eqlv2.predict, SIGMOID_PRIOR)


def _roi_seesaw(context: LossContext) -> RoILoss:
    c = context.num_classes
    seesaw = SeesawLoss(c, reduction="sum")

    def seesaw_layout(logits: Tensor, labels: Tensor) -> Tensor:
        # mmdetection's layout: Seesaw over the C class columns on foreground RoIs, a
        # 2-way objectness softmax (column C = foreground) on every RoI
        foreground = labels < c
        count = max(labels.shape[0], 1)
        objectness = F.cross_entropy(logits[:, c:], (~foreground).long())
        if not bool(foreground.any()):
            return objectness + logits[:, :c].sum() * 0.0
        classes: Tensor = seesaw(logits[foreground, :c], labels[foreground]) / count
        return classes + objectness

    def seesaw_scores(logits: Tensor) -> Tensor:
        foreground = torch.softmax(logits[:, c:], dim=1)[:, :1]
        return torch.softmax(logits[:, :c], dim=1) * foreground

    return RoILoss(seesaw, c + 2, seesaw_layout, seesaw_scores)


def _roi_federated(context: LossContext) -> RoILoss:
    federated = FederatedLoss(
        [int(n) for n in context.class_counts],
        num_sample_classes=_needed(context.sampled_classes, "sampled_classes"),
        generator=torch.Generator().manual_seed(context.seed),
    )
    return RoILoss(federated, context.num_classes + 1, federated, federated.predict, SIGMOID_PRIOR)


TWO_STAGE: ComparisonLosses[RoILoss] = ComparisonLosses(
    "two-stage",
    {
        "ce": _roi_ce,
        "bce": _roi_bce,
        "eql": _roi_eql,
        "sigmoid-eql": _roi_sigmoid_eql,
        "seesaw": _roi_seesaw,
        "federated": _roi_federated,
    },
    baseline="ce",
)


# ------------------------------------------------------------------------ benchmark


def _benchmark_eql(context: LossContext) -> StatisticsLoss:
    num_images = _needed(context.num_images, "num_images")
    return EQL(context.class_counts, num_images, EQL_LVIS_V1_THRESHOLD)


# The benchmark's own baselines are the plain PyTorch losses it times beside these.
BENCHMARK: TaskLosses[StatisticsLoss] = TaskLosses(
    "benchmark",
    {
        "sigmoid-eql": lambda context: SigmoidEQL(context.num_classes, objectness=True),
        "eql": _benchmark_eql,
        "efl": lambda context: EqualizedFocalLoss(context.num_classes),
        "eqfl": lambda context: EqualizedQualityFocalLoss(context.num_classes),
        "softmax-eql": lambda context: SoftmaxEQL(
            context.num_classes, ignore_index=context.ignore_index
        ),
    },
)

COMPARISONS: tuple[
    ComparisonLosses[nn.Module] | ComparisonLosses[DenseLoss] | ComparisonLosses[RoILoss], ...
] = (
    CLASSIFICATION,
    SEGMENTATION,
    ONE_STAGE,
    TWO_STAGE,
)
"""The tables of the comparison tasks (``eqlosses compare``)."""


def comparison_losses() -> tuple[str, ...]:
    """Every loss name some comparison task trains, each once, in first-listed order."""
    return tuple(dict.fromkeys(name for table in COMPARISONS for name in table.names))


def comparison_losses_help() -> str:
    """Each comparison task's losses and baseline, for ``--help``."""
    return "; ".join(
        f"{table.task}: {', '.join(table.names)} (baseline {table.baseline})"
        for table in COMPARISONS
    )
