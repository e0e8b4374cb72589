"""Speed and memory benchmark of the equalization losses.

For every loss, at LVIS-like sizes and at a small head, three implementations of the
same training step (forward, backward and the statistics update) are compared:

(a) ``eqlosses``: the loss module in training mode, updating its statistics, as a user
    runs it;
(b) the straightforward autograd form of the same formula, written the way the reference
    implementations write it: a one-hot target, expanded weight matrices, probabilities
    and powers, and a separate statistics pass. It computes the same loss, gradient and
    statistics as (a); :func:`verify` checks that before anything is timed;
(c) the plain PyTorch loss the equalization loss replaces: BCE-with-logits on a one-hot
    target built from the integer labels, ``F.cross_entropy``, or an autograd sigmoid
    focal loss.

Timing: every repeat round runs (a), (b) and (c) once each, in a rotating order, after a
warm-up; a call shorter than 10 ms is repeated within its sample so a sample lasts at
least that long. The table gives the median and the interquartile range in ms and the
ratios a/b and a/c of the medians.

Fixed overhead (small heads): wall-clock differences of a millisecond or less move with
the machine's other load and include the per-entry work. So (a) and (c) are also timed
on 16 rows of the same columns, where the arithmetic is negligible, in CPU time of the
calling thread with one intra-op thread (:func:`fixed_overhead`): their difference is
what a step of this library costs beyond the plain loss whatever its size.

Memory: every (case, implementation) runs in a fresh Python process
(``python -m eqlosses_lab.benchmark --memory-case CASE:IMPL``). It creates and touches the
inputs, runs one warm-up step, resets the peak resident set size (``/proc/self/clear_refs``),
runs one measured step and keeps the returned gradient; the peak RSS above that baseline
is reported in units of one logit-sized float32 tensor. The child runs with glibc's
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` fixed, so that freed tensors
leave the resident set and the peak follows the live tensors.

Labels follow LVIS v1 instance counts (the csv named by ``--lvis-counts`` or
``EQLOSSES_LVIS_COUNTS``; a synthetic Zipf profile otherwise): two-stage detection samples
512 RoIs per image with 75% background, one-stage detection 1% positive anchors,
classification all rows; per-pixel labels follow the class frequencies of the CamVid
training labels, its 4% unlabelled pixels mapped to the ignore label 255.

Run ``python -m eqlosses_lab.benchmark --help`` (or ``eqlosses benchmark``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from eqlosses import EQL, StatisticsLoss
from eqlosses.functional import native_kernel_status

from .arguments import Distinct, non_negative_int, positive_int
from .errors import DatasetNotFoundError
from .locations import LVIS_COUNTS
from .registry import BENCHMARK, LossContext

__all__ = ["CASES", "BenchmarkError", "add_arguments", "measure_memory", "run", "verify"]

IMPLEMENTATIONS = ("a", "b", "c")
IMPLEMENTATION_NAMES = {"a": "eqlosses", "b": "straightforward", "c": "plain"}
RESULT_MARKER = "EQLOSSES_MEMORY_RESULT "
# glibc settings of the memory children: every allocation of 64 KiB or more is its own
# mapping, returned to the system when freed, so the resident set follows live tensors.
MEMORY_CHILD_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
LVIS_V1_TRAIN_IMAGES = 100_170
PIXEL_IGNORE_INDEX = 255
# Per-pixel class frequencies (%) of the CamVid training labels (SegNet's 11 classes,
# 367 images at 240x180); the last entry is the unlabelled share, mapped to the ignore label.
CAMVID_PIXEL_PERCENT = (
    16.751,
    23.230,
    0.984,
    31.790,
    4.482,
    9.708,
    1.170,
    1.127,
    5.864,
    0.639,
    0.291,
    3.964,
)
MIN_SAMPLE_SECONDS = 0.01
MAX_INNER_CALLS = 200
# The fixed overhead is timed on this many rows (of the small head's columns), where
# the arithmetic is negligible, in thread CPU time over this many calls per sample.
FIXED_OVERHEAD_ROWS = 16
FIXED_OVERHEAD_CALLS = 40


class BenchmarkError(RuntimeError):
    """The benchmark cannot give a meaningful answer (e.g. (a) and (b) disagree)."""


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Target:
    """A speed or memory target of a case: ``metric <= limit``."""

    metric: str  # "a/b", "a/c", "loaded a/c", "mem a" or "fixed a-c ms"
    limit: float


@dataclass(frozen=True)
class Case:
    """One benchmarked shape of one loss."""

    key: str
    loss: str
    title: str
    setting: str
    shape: tuple[int, ...]
    smoke_shape: tuple[int, ...]
    labels: str  # "two_stage", "one_stage", "classification" or "pixel"
    plain: str
    straightforward: str
    targets: tuple[Target, ...] = ()

    def shape_for(self, size: str) -> tuple[int, ...]:
        return self.smoke_shape if size == "smoke" else self.shape

    def num_classes(self, shape: Sequence[int]) -> int:
        """Foreground classes ``C`` of logits of ``shape``."""
        columns = shape[1]
        return columns - 1 if self.loss == "sigmoid-eql" else columns


# "loaded a/c": the same ratio with --load busy processes beside the benchmark (training
# beside data-loader workers is the normal case)
_SIGMOID_TARGETS = (
    Target("a/c", 0.8),
    Target("loaded a/c", 0.8),
    Target("a/b", 0.25),
    Target("mem a", 1.5),
)
_FOCAL_TARGETS = (
    Target("a/c", 0.3),
    Target("loaded a/c", 0.3),
    Target("a/b", 0.2),
    Target("mem a", 1.5),
)
_SOFTMAX_TARGETS = (Target("a/c", 1.3), Target("mem a", 1.5))
# "Small head: report it; the fixed overhead stays a fraction of a millisecond": the
# wall-clock times are in the table, the fixed overhead (below) must stay under 1 ms.
_SMALL_TARGETS = (Target("fixed a-c ms", 1.0),)
_BCE = "BCE-with-logits, one-hot from labels"
_FOCAL = "sigmoid focal loss (autograd)"
_CE = "F.cross_entropy"

CASES: dict[str, Case] = {
    case.key: case
    for case in (
        Case(
            "sigmoid-eql", "sigmoid-eql", "Sigmoid-EQL", "LVIS two-stage, C+1 logits",
            (8192, 1204), (256, 42), "two_stage", _BCE,
            "EQLv2 expanded weights + stats pass", _SIGMOID_TARGETS,
        ),
        Case(
            "sigmoid-eql/small", "sigmoid-eql", "Sigmoid-EQL", "small head, C+1 logits",
            (1024, 81), (64, 9), "two_stage", _BCE,
            "EQLv2 expanded weights + stats pass", _SMALL_TARGETS,
        ),
        Case(
            "eql", "eql", "EQL", "LVIS two-stage, C logits",
            (8192, 1203), (256, 41), "two_stage", _BCE,
            "EQL v1 expanded weights + stats pass", _SIGMOID_TARGETS,
        ),
        Case(
            "eql/small", "eql", "EQL", "small head, C logits",
            (1024, 81), (64, 9), "two_stage", _BCE,
            "EQL v1 expanded weights + stats pass", _SMALL_TARGETS,
        ),
        Case(
            "efl", "efl", "EFL", "LVIS one-stage anchors",
            (65536, 1203), (1024, 41), "one_stage", _FOCAL,
            "autograd EFL + analytic stats pass", _FOCAL_TARGETS,
        ),
        Case(
            "efl/small", "efl", "EFL", "small head",
            (1024, 81), (64, 9), "one_stage", _FOCAL,
            "autograd EFL + analytic stats pass", _SMALL_TARGETS,
        ),
        Case(
            "eqfl", "eqfl", "EQFL", "LVIS one-stage anchors",
            (65536, 1203), (1024, 41), "one_stage", _FOCAL,
            "autograd EQFL + analytic stats pass", _FOCAL_TARGETS,
        ),
        Case(
            "eqfl/small", "eqfl", "EQFL", "small head",
            (1024, 81), (64, 9), "one_stage", _FOCAL,
            "autograd EQFL + analytic stats pass", _SMALL_TARGETS,
        ),
        Case(
            "softmax-eql", "softmax-eql", "Softmax-EQL", "classification",
            (1024, 1000), (128, 40), "classification", _CE,
            "adjusted logits + softmax stats pass", _SOFTMAX_TARGETS,
        ),
        Case(
            "softmax-eql/pixel", "softmax-eql", "Softmax-EQL", "per pixel, CamVid-like",
            (8, 12, 180, 240), (2, 12, 9, 12), "pixel", _CE,
            "adjusted logits + softmax stats pass", _SOFTMAX_TARGETS,
        ),
        Case(
            "softmax-eql/small", "softmax-eql", "Softmax-EQL", "small head",
            (1024, 81), (64, 9), "classification", _CE,
            "adjusted logits + softmax stats pass", _SMALL_TARGETS,
        ),
    )
}  # fmt: skip
LOSSES = BENCHMARK.names


def select_cases(names: Sequence[str] | None) -> list[Case]:
    """Cases of the named losses (``efl``) or named cases (``efl/small``), in table order."""
    if not names:
        return list(CASES.values())
    wanted: set[str] = set()
    for name in names:
        for item in name.split(","):
            item = item.strip()
            if not item:
                continue
            matches = [c.key for c in CASES.values() if item in (c.loss, c.key)]
            if not matches:
                raise ValueError(
                    f"--losses: expected loss names ({', '.join(LOSSES)}) or case names "
                    f"({', '.join(CASES)}), got {item!r}"
                )
            wanted.update(matches)
    return [c for c in CASES.values() if c.key in wanted]


# ---------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelProfile:
    """Per-class instance and image counts the label streams are drawn from."""

    instance_counts: Tensor  # float64 (K,)
    image_counts: Tensor  # float64 (K,)
    num_images: int
    source: str

    def restricted(self, num_classes: int) -> tuple[Tensor, Tensor]:
        """Counts of the first ``num_classes`` classes (by id), repeated if there are
        fewer."""
        reps = math.ceil(num_classes / self.instance_counts.numel())
        instances = self.instance_counts.repeat(reps)[:num_classes]
        images = self.image_counts.repeat(reps)[:num_classes]
        return instances, images


def load_profile(path: str | Path | None) -> LabelProfile:
    """LVIS counts from a csv (columns id,name,frequency,image_count,instance_count), or
    a synthetic Zipf profile of 1203 classes when ``path`` is None."""
    if path is None:
        ranks = torch.arange(1, 1204, dtype=torch.float64)
        instances = torch.floor(20000.0 / ranks.pow(1.1)) + 1.0
        images = torch.clamp(torch.ceil(instances * 0.6), max=LVIS_V1_TRAIN_IMAGES)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(instances.numel(), generator=generator)
        return LabelProfile(
            instances[order],
            images[order],
            LVIS_V1_TRAIN_IMAGES,
            "synthetic Zipf profile (1203 classes, exponent 1.1)",
        )
    rows: list[tuple[int, float, float]] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            rows.append((int(row["id"]), float(row["instance_count"]), float(row["image_count"])))
    if not rows:
        raise BenchmarkError(f"--lvis-counts: no rows in {path}")
    rows.sort()
    instances = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    images = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    num_images = max(LVIS_V1_TRAIN_IMAGES, int(images.max()))
    return LabelProfile(
        instances.clamp_min(1.0), images, num_images, f"{path} ({len(rows)} classes)"
    )


def sample_labels(
    case: Case, shape: Sequence[int], profile: LabelProfile, generator: torch.Generator
) -> Tensor:
    """Integer labels of a batch of logits of ``shape`` (see the module docstring)."""
    if case.labels == "pixel":
        probs = torch.tensor(CAMVID_PIXEL_PERCENT, dtype=torch.float64)
        rows_shape = (shape[0], *shape[2:])
        num_rows = math.prod(rows_shape)
        drawn = torch.multinomial(probs, num_rows, replacement=True, generator=generator)
        unlabelled = len(CAMVID_PIXEL_PERCENT) - 1
        drawn = torch.where(drawn == unlabelled, PIXEL_IGNORE_INDEX, drawn)
        return drawn.reshape(rows_shape)
    num_rows = shape[0]
    num_classes = case.num_classes(shape)
    instances, _ = profile.restricted(num_classes)
    drawn = torch.multinomial(instances, num_rows, replacement=True, generator=generator)
    if case.labels == "classification":
        return drawn
    share = 0.25 if case.labels == "two_stage" else 0.01
    num_foreground = max(1, round(share * num_rows))
    labels = torch.full((num_rows,), num_classes, dtype=torch.long)
    rows = torch.randperm(num_rows, generator=generator)[:num_foreground]
    labels[rows] = drawn[:num_foreground]
    return labels


@dataclass
class Inputs:
    """What one training step gets: logits (a leaf), labels and, for EQFL, IoU scores."""

    logits: Tensor
    target: Tensor
    score: Tensor | None = None

    def clone(self) -> Inputs:
        score = None if self.score is None else self.score.clone()
        logits = self.logits.detach().clone().requires_grad_(True)
        return Inputs(logits, self.target.clone(), score)


def make_inputs(
    case: Case,
    shape: Sequence[int],
    profile: LabelProfile,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Inputs:
    """One step's inputs, drawn on the CPU (the same numbers for every device) and moved
    to ``device``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    if case.loss != "softmax-eql":
        # sigmoid heads sit mostly on the negative side
        logits.mul_(2.0).sub_(2.0)
    target = sample_labels(case, shape, profile, generator)
    score = None
    if case.loss == "eqfl":
        score = torch.rand(shape[0], generator=generator, dtype=dtype).mul_(0.7).add_(0.25)
        score = score.to(device)
    return Inputs(logits.to(device).requires_grad_(True), target.to(device), score)


# -------------------------------------------------------------------- implementations
class Implementation:
    """One way of computing a loss: ``impl(inputs)`` returns the loss to backward."""

    def __call__(self, inputs: Inputs) -> Tensor:
        raise NotImplementedError

    def statistics(self) -> tuple[Tensor, Tensor] | None:
        """``(pos_grad, neg_grad)`` cumulative float64 statistics, if it keeps any."""
        return None


class LibraryLoss(Implementation):
    """(a): an ``eqlosses`` module in training mode."""

    def __init__(self, module: StatisticsLoss, with_score: bool = False) -> None:
        self.module = module.train()
        self.with_score = with_score

    def __call__(self, inputs: Inputs) -> Tensor:
        if self.with_score:
            out: Tensor = self.module(inputs.logits, inputs.target, inputs.score)
        else:
            out = self.module(inputs.logits, inputs.target)
        return out

    def statistics(self) -> tuple[Tensor, Tensor]:
        return self.module.pos_grad, self.module.neg_grad


class _Statistics:
    """Cumulative statistics of a straightforward form, with the modules' conventions:
    the initial ratio until the first update, then ``pos / (neg + 1e-10)``."""

    def __init__(self, num_classes: int, initial_ratio: float) -> None:
        self.pos = torch.zeros(num_classes, dtype=torch.float64)
        self.neg = torch.zeros(num_classes, dtype=torch.float64)
        self.updates = 0
        self.initial_ratio = initial_ratio

    def ratio(self, device: torch.device) -> Tensor:
        if self.updates == 0:
            return torch.full_like(self.pos, self.initial_ratio, device=device)
        return (self.pos / (self.neg + 1e-10)).to(device)

    def add(self, pos: Tensor, neg: Tensor) -> None:
        self.pos = self.pos.to(pos.device) + pos.detach().double()
        self.neg = self.neg.to(neg.device) + neg.detach().double()
        self.updates += 1


def _one_hot_rows(logits: Tensor, labels: Tensor, num_columns: int) -> Tensor:
    """``(N, num_columns)`` one-hot of labels in ``[0, num_columns]`` (the last value: no
    positive), built the way the reference code does (a wider matrix, then a slice)."""
    rows = logits.shape[0]
    target = logits.new_zeros(rows, num_columns + 1)
    target[torch.arange(rows), labels] = 1.0
    return target[:, :num_columns]


class StraightSigmoidEQL(Implementation):
    """(b) for Sigmoid-EQL: EQLv2's expanded-weights form with the background column."""

    def __init__(self, num_classes: int, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0):
        self.stats = _Statistics(num_classes, 100.0)
        self.gamma, self.mu, self.alpha = gamma, mu, alpha

    def __call__(self, inputs: Inputs) -> Tensor:
        logits, labels = inputs.logits, inputs.target
        rows, columns = logits.shape
        target = logits.new_zeros(rows, columns)
        target[torch.arange(rows), labels] = 1.0
        neg_w = torch.sigmoid(self.gamma * (self.stats.ratio(logits.device) - self.mu))
        neg_w = torch.cat([neg_w, neg_w.new_ones(1)])  # the objectness column weighs 1
        pos_w = 1.0 + self.alpha * (1.0 - neg_w)
        neg_w = neg_w.to(logits.dtype).view(1, columns).expand(rows, columns)
        pos_w = pos_w.to(logits.dtype).view(1, columns).expand(rows, columns)
        weight = pos_w * target + neg_w * (1.0 - target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = torch.sum(bce * weight) / rows
        with torch.no_grad():
            prob = torch.sigmoid(logits)
            grad = torch.abs(target * (prob - 1.0) + (1.0 - target) * prob)
            pos = torch.sum(grad * target * weight, dim=0)[:-1]
            neg = torch.sum(grad * (1.0 - target) * weight, dim=0)[:-1]
        self.stats.add(pos, neg)
        return loss

    def statistics(self) -> tuple[Tensor, Tensor]:
        return self.stats.pos, self.stats.neg


class StraightEQL(Implementation):
    """(b) for EQL v1 (sigmoid): the exclude and threshold weight matrices of the paper's
    code, plus the diagnostic statistics the module records."""

    def __init__(self, rare: Tensor) -> None:
        self.rare = rare
        self.stats = _Statistics(rare.numel(), 1.0)

    def __call__(self, inputs: Inputs) -> Tensor:
        logits, labels = inputs.logits, inputs.target
        rows, classes = logits.shape
        target = _one_hot_rows(logits, labels, classes)
        exclude = (labels != classes).to(logits.dtype).view(rows, 1).expand(rows, classes)
        threshold = self.rare.to(logits).view(1, classes).expand(rows, classes)
        weight = 1.0 - exclude * threshold * (1.0 - target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = torch.sum(bce * weight) / rows
        with torch.no_grad():
            prob = torch.sigmoid(logits)
            grad = torch.abs(target * (prob - 1.0) + (1.0 - target) * prob)
            pos = torch.sum(grad * target * weight, dim=0)
            neg = torch.sum(grad * (1.0 - target) * weight, dim=0)
        self.stats.add(pos, neg)
        return loss

    def statistics(self) -> tuple[Tensor, Tensor]:
        return self.stats.pos, self.stats.neg


class StraightFocal(Implementation):
    """(b) for EFL (``quality=False``) and EQFL (``quality=True``): per-entry focusing
    and weighting matrices, ``pow``, and the statistics from the analytic gradient in a
    separate pass (the hook-free form of the reference)."""

    def __init__(
        self,
        num_classes: int,
        *,
        quality: bool,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        alpha: float = 0.25,
    ) -> None:
        self.stats = _Statistics(num_classes, 1.0)
        self.quality = quality
        self.gamma_b, self.scale, self.alpha = gamma_b, scale, alpha

    def __call__(self, inputs: Inputs) -> Tensor:
        logits, labels = inputs.logits, inputs.target
        rows, classes = logits.shape
        dtype = logits.dtype
        one_hot = _one_hot_rows(logits, labels, classes)
        ratio = self.stats.ratio(logits.device)
        focusing = self.gamma_b + self.scale * (1.0 - ratio.clamp(0.0, 1.0))
        weighting = focusing / self.gamma_b
        gamma = focusing.to(dtype).view(1, classes).expand(rows, classes)
        weight = weighting.to(dtype).view(1, classes).expand(rows, classes)
        normaliser = (labels < classes).sum().clamp_min(1).to(dtype)
        prob = torch.sigmoid(logits)
        if self.quality:
            assert inputs.score is not None
            target = one_hot * inputs.score.to(dtype).view(rows, 1)
            distance = torch.abs(target - prob)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            loss = torch.sum(bce * distance.pow(gamma) * weight) / normaliser
            with torch.no_grad():
                diff = prob - target
                grad = weight * (
                    gamma * distance.pow(gamma - 1.0) * torch.sign(diff) * prob * (1.0 - prob) * bce
                    + distance.pow(gamma) * diff
                )
                magnitude = torch.abs(grad)
        else:
            # pt is 1 - p_t: the probability of the wrong answer
            pt = (1.0 - prob) * one_hot + prob * (1.0 - one_hot)
            alpha_t = self.alpha * one_hot + (1.0 - self.alpha) * (1.0 - one_hot)
            focal_weight = alpha_t * pt.pow(gamma)
            bce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
            loss = torch.sum(bce * focal_weight * weight) / normaliser
            with torch.no_grad():
                # |d/dz α_t w q^γ (-log(1 - q))| = α_t w q^γ (γ (1 - q) (-log(1 - q)) + q)
                magnitude = alpha_t * weight * pt.pow(gamma) * (gamma * (1.0 - pt) * bce + pt)
        with torch.no_grad():
            pos = torch.sum(magnitude * one_hot, dim=0) / normaliser
            neg = torch.sum(magnitude * (1.0 - one_hot), dim=0) / normaliser
        self.stats.add(pos, neg)
        return loss

    def statistics(self) -> tuple[Tensor, Tensor]:
        return self.stats.pos, self.stats.neg


class StraightSoftmaxEQL(Implementation):
    """(b) for Softmax-EQL: the adjustment expanded over the batch, ``F.cross_entropy``,
    and the statistics ``(softmax(z̃) - y) / N`` from a one-hot target in a second pass."""

    def __init__(
        self, num_classes: int, *, ignore_index: int, tau: float = 1.0, eps: float = 1e-4
    ) -> None:
        self.stats = _Statistics(num_classes, 1.0)
        self.ignore_index = ignore_index
        self.tau, self.eps = tau, eps

    def __call__(self, inputs: Inputs) -> Tensor:
        logits, labels = inputs.logits, inputs.target
        classes = logits.shape[1]
        view = [1] * logits.dim()
        view[1] = classes
        adjustment = self.tau * torch.log(self.stats.pos.to(logits.device).clamp_min(self.eps))
        adjusted = logits + adjustment.to(logits.dtype).view(view).expand_as(logits)
        loss = F.cross_entropy(adjusted, labels, ignore_index=self.ignore_index)
        with torch.no_grad():
            valid = labels != self.ignore_index
            one_hot = F.one_hot(torch.where(valid, labels, 0), classes).to(logits.dtype)
            if logits.dim() > 2:
                one_hot = one_hot.movedim(-1, 1)
            mask = valid.to(logits.dtype).unsqueeze(1)
            count = valid.sum().clamp_min(1).to(logits.dtype)
            grad = (torch.softmax(adjusted, dim=1) - one_hot) * mask / count
            dims = [d for d in range(logits.dim()) if d != 1]
            pos = torch.sum(torch.abs(grad) * one_hot, dim=dims)
            neg = torch.sum(torch.abs(grad) * (1.0 - one_hot), dim=dims)
        self.stats.add(pos, neg)
        return loss

    def statistics(self) -> tuple[Tensor, Tensor]:
        return self.stats.pos, self.stats.neg


class PlainBCE(Implementation):
    """(c) for the sigmoid losses: BCE-with-logits on a one-hot target built from the
    integer labels (``objectness``: label ``C`` is the last column)."""

    def __init__(self, objectness: bool) -> None:
        self.objectness = objectness

    def __call__(self, inputs: Inputs) -> Tensor:
        logits, labels = inputs.logits, inputs.target
        rows, columns = logits.shape
        if self.objectness:
            target = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)
        else:
            target = torch.zeros_like(logits)
            positive = torch.nonzero(labels < columns).squeeze(1)
            target[positive, labels[positive]] = 1.0
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / rows


class PlainFocal(Implementation):
    """(c) for EFL/EQFL: the autograd sigmoid focal loss (torchvision's formula),
    normalised by the number of positive rows."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        self.gamma, self.alpha = gamma, alpha

    def __call__(self, inputs: Inputs) -> Tensor:
        logits, labels = inputs.logits, inputs.target
        classes = logits.shape[1]
        target = torch.zeros_like(logits)
        positive = torch.nonzero(labels < classes).squeeze(1)
        target[positive, labels[positive]] = 1.0
        prob = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = prob * target + (1 - prob) * (1 - target)
        loss = ce * ((1 - p_t) ** self.gamma)
        alpha_t = self.alpha * target + (1 - self.alpha) * (1 - target)
        return torch.sum(alpha_t * loss) / max(positive.numel(), 1)


class PlainCrossEntropy(Implementation):
    """(c) for Softmax-EQL: ``F.cross_entropy``."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, inputs: Inputs) -> Tensor:
        return F.cross_entropy(inputs.logits, inputs.target, ignore_index=self.ignore_index)


def build(
    case: Case,
    which: str,
    shape: Sequence[int],
    profile: LabelProfile,
    device: torch.device | str = "cpu",
) -> Implementation:
    """Implementation ``which`` (``'a'``, ``'b'`` or ``'c'``) of ``case`` for ``shape``;
    (a)'s module lives on ``device`` (the others follow their inputs)."""
    classes = case.num_classes(shape)
    ignore = PIXEL_IGNORE_INDEX if case.labels == "pixel" else -100
    _, images = profile.restricted(classes)
    context = LossContext(images, ignore_index=ignore, num_images=profile.num_images)
    if which == "a":
        module = BENCHMARK.build(case.loss, context).to(device)
        return LibraryLoss(module, with_score=case.loss == "eqfl")
    if case.loss in ("sigmoid-eql", "eql"):
        if which == "c":
            return PlainBCE(objectness=case.loss == "sigmoid-eql")
        if case.loss == "sigmoid-eql":
            return StraightSigmoidEQL(classes)
        # the same rare classes as (a)'s
        module = BENCHMARK.build("eql", context)
        assert isinstance(module, EQL)
        return StraightEQL(module.rare.clone())
    if case.loss in ("efl", "eqfl"):
        return StraightFocal(classes, quality=case.loss == "eqfl") if which == "b" else PlainFocal()
    if case.loss == "softmax-eql":
        if which == "b":
            return StraightSoftmaxEQL(classes, ignore_index=ignore)
        return PlainCrossEntropy(ignore)
    raise ValueError(f"unknown loss {case.loss!r}")


# ----------------------------------------------------------------------- verification
def _relative_error(a: Tensor, b: Tensor) -> float:
    scale = float(b.abs().max()) if b.numel() else 0.0
    if scale == 0.0:
        return float((a - b).abs().max()) if a.numel() else 0.0
    return float((a - b).abs().max()) / scale


def verify(
    cases: Sequence[Case],
    profile: LabelProfile,
    *,
    steps: int = 3,
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> dict[str, float]:
    """Check that (a) and (b) compute the same loss, gradient and statistics.

    Runs ``steps`` statistics-updating steps of each case at its smoke shape in float64,
    fresh labels each step (so later steps use non-trivial weights). Returns the largest
    relative difference per case; raises :class:`BenchmarkError` on a disagreement.
    """
    worst: dict[str, float] = {}
    for case in cases:
        shape = case.smoke_shape
        impl_a = build(case, "a", shape, profile)
        impl_b = build(case, "b", shape, profile)
        worst[case.key] = 0.0
        for step in range(steps):
            inputs_a = make_inputs(case, shape, profile, seed=1000 + step, dtype=torch.float64)
            inputs_b = inputs_a.clone()
            loss_a = impl_a(inputs_a)
            torch.autograd.backward(loss_a)
            loss_b = impl_b(inputs_b)
            torch.autograd.backward(loss_b)
            grad_a, grad_b = inputs_a.logits.grad, inputs_b.logits.grad
            assert grad_a is not None and grad_b is not None
            stats_a, stats_b = impl_a.statistics(), impl_b.statistics()
            assert stats_a is not None and stats_b is not None
            pairs = {
                "loss": (loss_a.detach(), loss_b.detach()),
                "gradient": (grad_a, grad_b),
                "pos_grad": (stats_a[0], stats_b[0]),
                "neg_grad": (stats_a[1], stats_b[1]),
            }
            for what, (x, y) in pairs.items():
                if x.shape != y.shape or not torch.allclose(x, y, rtol=rtol, atol=atol):
                    raise BenchmarkError(
                        f"{case.key}: (a) eqlosses and (b) the straightforward form disagree "
                        f"on the {what} at step {step + 1} (largest relative difference "
                        f"{_relative_error(x, y):.3g}); the comparison would not be like for "
                        "like"
                    )
                worst[case.key] = max(worst[case.key], _relative_error(x, y))
    return worst


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    samples_ms: list[float] = field(default_factory=list)
    inner: int = 1

    @property
    def quartiles(self) -> tuple[float, float, float]:
        data = sorted(self.samples_ms)
        if len(data) == 1:
            return data[0], data[0], data[0]
        q1, q2, q3 = statistics.quantiles(data, n=4, method="inclusive")
        return q1, q2, q3

    @property
    def median(self) -> float:
        return self.quartiles[1]

    @property
    def iqr(self) -> float:
        q1, _, q3 = self.quartiles
        return q3 - q1


def _step(impl: Implementation, inputs: Inputs) -> Tensor:
    inputs.logits.grad = None
    loss = impl(inputs)
    torch.autograd.backward(loss)
    return loss


def _synchronize(inputs: Inputs) -> None:
    """Wait for an accelerator's queued work, so that wall-clock time covers it."""
    if inputs.logits.device.type == "cuda":
        torch.cuda.synchronize(inputs.logits.device)


def _sample(impl: Implementation, inputs: Inputs, inner: int) -> float:
    """Milliseconds per forward+backward, averaged over ``inner`` calls."""
    _synchronize(inputs)
    start = time.perf_counter()
    for _ in range(inner):
        _step(impl, inputs)
    _synchronize(inputs)
    return (time.perf_counter() - start) * 1000.0 / inner


def time_case(
    impls: dict[str, Implementation],
    inputs: dict[str, Inputs],
    *,
    repeats: int,
    warmup: int,
) -> tuple[dict[str, Timing], dict[str, float]]:
    """Interleaved timing of ``impls``; also returns the first-call loss of each (the
    same statistics state for all, so (a) and (b) must agree)."""
    first_loss: dict[str, float] = {}
    # Each warm-up round calls every implementation for at least a sample's time; the
    # last round's fastest call sets how many calls a timed sample averages. (One call
    # is a poor estimate for a small head: its first calls run cold and slow, and too few
    # calls per sample would then time the cold start, not the steady state. So the last
    # round times at least two calls: the first after another implementation ran can be
    # slowed many times by the caches and pages that one left, and alone it would leave
    # a call of a few milliseconds timed one at a time.)
    per_call_ms: dict[str, float] = {}
    rounds = max(warmup, 1)
    for round_ in range(rounds):
        fewest_calls = 2 if round_ == rounds - 1 else 1
        for key, impl in impls.items():
            call_seconds: list[float] = []
            start = time.perf_counter()
            while (
                len(call_seconds) < fewest_calls or time.perf_counter() - start < MIN_SAMPLE_SECONDS
            ):
                call_start = time.perf_counter()
                loss = _step(impl, inputs[key])
                if key not in first_loss:
                    first_loss[key] = float(loss.detach())
                _synchronize(inputs[key])
                call_seconds.append(time.perf_counter() - call_start)
            per_call_ms[key] = min(call_seconds) * 1000.0
    timings = {
        key: Timing(inner=max(1, min(MAX_INNER_CALLS, math.ceil(MIN_SAMPLE_SECONDS * 1000.0 / ms))))
        for key, ms in ((k, max(v, 1e-3)) for k, v in per_call_ms.items())
    }
    order = list(impls)
    gc_was_enabled = gc.isenabled()
    for round_ in range(repeats):
        # the collector runs between rounds, never inside a timed call
        gc.collect()
        gc.disable()
        try:
            shift = round_ % len(order)
            for key in order[shift:] + order[:shift]:
                timings[key].samples_ms.append(_sample(impls[key], inputs[key], timings[key].inner))
        finally:
            if gc_was_enabled:
                gc.enable()
    for item in inputs.values():
        item.logits.grad = None
    return timings, first_loss


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` CPU-bound Python processes (each a busy loop) for the duration of the
    block; stopped however the block ends."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # under way before anything is timed
        yield processes
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def time_loaded(
    case: Case,
    profile: LabelProfile,
    shape: Sequence[int],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    processes: int,
) -> dict[str, Any]:
    """(a) and (c) of ``case`` timed again (fresh modules, the same inputs) while other
    processes compete for the CPU; their medians and the ratio a/c."""
    base = make_inputs(case, shape, profile, seed=0, device=device)
    inputs = {"a": base, "c": base.clone()}
    impls = {key: build(case, key, shape, profile, device) for key in inputs}
    timings, _ = time_case(impls, inputs, repeats=repeats, warmup=warmup)
    medians = {key: timing.median for key, timing in timings.items()}
    print(
        f"  loaded {case.key:18s} "
        + "  ".join(f"{k}={_ms(m)} ms" for k, m in medians.items())
        + f"  a/c={medians['a'] / medians['c']:.2f}",
        flush=True,
    )
    return {
        "processes": processes,
        "timings": {
            key: {"median_ms": t.median, "iqr_ms": t.iqr, "samples_ms": t.samples_ms}
            for key, t in timings.items()
        },
        "ratios": {"a/c": medians["a"] / medians["c"]},
    }


def fixed_overhead(
    case: Case,
    profile: LabelProfile,
    columns: int,
    *,
    repeats: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """CPU time per step of (a) and (c) on ``FIXED_OVERHEAD_ROWS`` rows: what a step costs
    whatever its size (dispatch, Python, bookkeeping), and (a)'s excess over (c).

    One intra-op thread and the calling thread's CPU time (``time.thread_time``), so that
    time the machine gives to other processes is not counted, as it is in wall-clock
    times; interleaved samples of ``FIXED_OVERHEAD_CALLS`` calls, medians.
    """
    shape = (FIXED_OVERHEAD_ROWS, columns)
    base = make_inputs(case, shape, profile, seed=0, device=device)
    inputs = {"a": base, "c": base.clone()}
    impls = {key: build(case, key, shape, profile, device) for key in inputs}
    samples: dict[str, list[float]] = {key: [] for key in impls}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc_was_enabled = gc.isenabled()
    try:
        for key, impl in impls.items():
            for _ in range(FIXED_OVERHEAD_CALLS):
                _step(impl, inputs[key])
        gc.collect()
        gc.disable()
        for round_ in range(max(repeats, 1) * 3):
            for key in ("a", "c") if round_ % 2 == 0 else ("c", "a"):
                start = time.thread_time()
                for _ in range(FIXED_OVERHEAD_CALLS):
                    _step(impls[key], inputs[key])
                samples[key].append((time.thread_time() - start) * 1000.0 / FIXED_OVERHEAD_CALLS)
    finally:
        torch.set_num_threads(threads)
        if gc_was_enabled:
            gc.enable()
    a_ms, c_ms = statistics.median(samples["a"]), statistics.median(samples["c"])
    return {"rows": FIXED_OVERHEAD_ROWS, "a_ms": a_ms, "c_ms": c_ms, "overhead_ms": a_ms - c_ms}


# ----------------------------------------------------------------------------- memory
def _proc_status_kib(name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    """Reset the peak resident set size (VmHWM) to the current one; False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    peak, current = _proc_status_kib("VmHWM"), _proc_status_kib("VmRSS")
    return peak is not None and current is not None and peak <= current + 256


def rss_resolution_bytes() -> int:
    """How far the kernel's resident-set counters may lag: Linux keeps them per CPU and
    folds in up to 32 pages per CPU at a time, so a peak is known only to this many bytes."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        page = 4096
    return 32 * page * (os.cpu_count() or 1)


def _peak_kib() -> int:
    peak = _proc_status_kib("VmHWM")
    if peak is not None:
        return peak
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage // 1024 if sys.platform == "darwin" else usage


def measure_memory(
    case_key: str, impl: str, *, size: str, profile: LabelProfile, threads: int
) -> dict[str, Any]:
    """Peak resident memory of one step above its inputs, in this process.

    ``impl`` is ``'a'``, ``'b'``, ``'c'``, or ``'allocK'``: allocate and fill ``K``
    logit-sized float32 tensors (a calibration that should read ``K``). Meant for a fresh
    process (see :func:`run_memory_case`).
    """
    torch.set_num_threads(threads)
    case = CASES[case_key]
    shape = case.shape_for(size)
    inputs = make_inputs(case, shape, profile, seed=0)
    unit = math.prod(shape) * 4

    step: Callable[[], list[Tensor]]
    if impl.startswith("alloc"):
        count = int(impl[len("alloc") :])

        def step() -> list[Tensor]:
            return [torch.ones(tuple(shape)) for _ in range(count)]

    elif impl in IMPLEMENTATIONS:
        implementation = build(case, impl, shape, profile)

        def step() -> list[Tensor]:
            _step(implementation, inputs)
            return [] if inputs.logits.grad is None else [inputs.logits.grad]

    else:
        raise ValueError(f"--memory-case: unknown implementation {impl!r}")

    resettable = _reset_peak()
    if resettable:
        # A first step at full size pays for lazy initialisation (thread pools, code
        # pages); the peak is reset after it.
        kept = step()
        del kept
        inputs.logits.grad = None
    gc.collect()
    if resettable:
        _reset_peak()
        baseline = _proc_status_kib("VmRSS") or 0
    else:
        baseline = _peak_kib()
    kept = step()
    peak = _peak_kib()
    del kept
    above = max(peak - baseline, 0) * 1024
    return {
        "case": case_key,
        "impl": impl,
        "shape": list(shape),
        "baseline_bytes": baseline * 1024,
        "peak_above_bytes": above,
        "logit_bytes": unit,
        "logit_units": above / unit,
        "resolution_units": rss_resolution_bytes() / unit,
        "method": "VmHWM after clear_refs" if resettable else "peak RSS since start",
    }


def memory_child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(MEMORY_CHILD_MALLOC)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def run_memory_case(
    case_key: str,
    impl: str,
    *,
    size: str,
    counts: str | None,
    threads: int,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Run :func:`measure_memory` in a fresh ``python -m eqlosses_lab.benchmark`` process."""
    command = [
        sys.executable,
        "-m",
        "eqlosses_lab.benchmark",
        "--memory-case",
        f"{case_key}:{impl}",
        "--size",
        size,
        "--threads",
        str(threads),
        "--lvis-counts",
        counts if counts is not None else "synthetic",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env=memory_child_env(), timeout=timeout
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
            return result
    raise BenchmarkError(
        f"memory case {case_key}:{impl} failed (exit {done.returncode}):\n"
        f"{done.stdout[-2000:]}{done.stderr[-4000:]}"
    )


# ---------------------------------------------------------------------------- report
def environment() -> dict[str, Any]:
    malloc = {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"
    }
    thp = "unknown"
    with contextlib.suppress(OSError):
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libc, libc_version = platform.libc_ver()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "libc": f"{libc} {libc_version}".strip(),
        "malloc_env": malloc,
        "transparent_hugepages": thp,
        "memory_child_malloc": MEMORY_CHILD_MALLOC,
        # built here, if it is due, so that no timed call pays for the build
        "softmax_cpu_kernel": native_kernel_status(),
    }


def _load_text() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _warn_if_busy(threads: int, *, counts_own: bool = False) -> None:
    """Say so when other processes compete for the CPUs: with more runnable threads than
    cores, every parallel region waits for descheduled threads and timings mean little.
    ``counts_own``: the load average already includes this benchmark's threads."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cpus = os.cpu_count() or 1
    others = load - threads if counts_own else load
    if others > max(cpus - threads, 0) + 0.5:
        print(
            f"warning: load average {load:.1f} on {cpus} CPUs: other processes compete with "
            f"the {threads} benchmark threads; timings are unreliable, rerun on an idle machine"
        )


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _shape_text(shape: Sequence[int]) -> str:
    return " × ".join(str(s) for s in shape)


def _metric(result: dict[str, Any], metric: str) -> float | None:
    if metric in ("a/b", "a/c"):
        value = result["ratios"].get(metric)
        return None if value is None else float(value)
    if metric == "loaded a/c":
        loaded = result.get("loaded")
        return None if loaded is None else float(loaded["ratios"]["a/c"])
    if metric == "mem a":
        memory = result.get("memory", {}).get("a")
        return None if memory is None else float(memory["logit_units"])
    if metric == "fixed a-c ms":
        fixed = result.get("fixed_overhead")
        return None if fixed is None else float(fixed["overhead_ms"])
    raise ValueError(metric)


def check_targets(result: dict[str, Any], case: Case) -> list[dict[str, Any]]:
    checks = []
    for target in case.targets:
        value = _metric(result, target.metric)
        checks.append(
            {
                "metric": target.metric,
                "limit": target.limit,
                "value": value,
                "met": None if value is None else value <= target.limit,
            }
        )
    return checks


def _coarse(memory: dict[str, Any]) -> bool:
    """Whether the counters' resolution is over a tenth of a logit tensor."""
    return float(memory.get("resolution_units", 0.0)) > 0.1


def _rows(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "loss",
        "setting",
        "logits",
        "(a) eqlosses ms",
        "(b) straightforward ms",
        "(c) plain ms",
        "a/b",
        "a/c",
        "a/c loaded",
        "mem a",
        "mem b",
        "mem c",
        "(c) is",
    ]
    rows = []
    for result in results:
        cells = [result["title"], result["setting"], _shape_text(result["shape"])]
        for impl in IMPLEMENTATIONS:
            timing = result["timings"].get(impl)
            cells.append(
                "-"
                if timing is None
                else f"{_ms(timing['median_ms'])} (IQR {_ms(timing['iqr_ms'])})"
            )
        for ratio in ("a/b", "a/c", "loaded a/c"):
            value = _metric(result, ratio)
            cells.append("-" if value is None else f"{value:.2f}")
        for impl in IMPLEMENTATIONS:
            memory = result.get("memory", {}).get(impl)
            if memory is None:
                cells.append("-")
            elif _coarse(memory):
                cells.append(f"({memory['logit_units']:.2f})")
            else:
                cells.append(f"{memory['logit_units']:.2f}")
        cells.append(result["plain"])
        rows.append(cells)
    return header, rows


def format_table(results: Sequence[dict[str, Any]], *, markdown: bool) -> str:
    """The results table: plain text, or Markdown for the README."""
    header, rows = _rows(results)
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        aligns = ["---" if i < 3 or i == len(header) - 1 else "---:" for i in range(len(header))]
        lines.append("| " + " | ".join(aligns) + " |")
        lines.extend("| " + " | ".join(row) + " |" for row in rows)
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for index, row in enumerate([header, *rows]):
        out.append(
            "  ".join(
                cell.ljust(widths[i]) if i < 3 or i == len(row) - 1 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
        )
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_targets(results: Sequence[dict[str, Any]], size: str) -> str:
    lines = []
    for result in results:
        parts = []
        for check in result["targets"]:
            if check["value"] is None:
                parts.append(f"{check['metric']} not measured")
                continue
            verdict = "met" if check["met"] else "MISSED"
            unit = " ms" if check["metric"].endswith("ms") else ""
            name = check["metric"].replace(" ms", "")
            parts.append(
                f"{name} = {check['value']:.2f}{unit} (≤ {check['limit']:g}{unit}: {verdict})"
            )
        if parts:
            lines.append(f"  {result['title']} {result['setting']}: " + "; ".join(parts))
    note = "" if size == "full" else " (the targets are for --size full; smoke sizes say nothing)"
    return "targets" + note + ":\n" + "\n".join(lines)


# ------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the benchmark (``eqlosses benchmark`` / ``python -m eqlosses_lab.benchmark``)."""
    parser.add_argument(
        "--size",
        choices=("full", "smoke"),
        default="full",
        help="full: LVIS-like sizes (a few minutes); smoke: tiny shapes (seconds)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=None,
        help="timed rounds per case, after the warm-up (default: 11 full, 3 smoke)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=None,
        help="warm-up rounds (default: 2 full, 1 smoke)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="torch.set_num_threads (default 2)"
    )
    parser.add_argument(
        "--load",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also time every case with N CPU-bound processes running beside it (the "
        "benchmark starts and stops them) and report the ratios with and without them "
        "(default 0: only a quiet machine)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the logits live (default cpu); on cuda, memory is not measured",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        type=_selection,
        action=Distinct,
        default=None,
        metavar="NAME",
        help=f"losses ({', '.join(LOSSES)}) or cases ({', '.join(CASES)}), also "
        "comma-separated; default all",
    )
    parser.add_argument(
        "--lvis-counts",
        default=None,
        metavar="PATH",
        help="LVIS category counts csv (id,name,frequency,image_count,instance_count); "
        f"default: ${LVIS_COUNTS.variable} if set, else a synthetic Zipf profile; "
        "'synthetic' forces the latter",
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure peak memory, each case in a fresh process (default: on for full, "
        "off for smoke: every case costs a Python start-up)",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="save the results here")
    parser.add_argument(
        "--markdown", action="store_true", help="print the table as Markdown (for the README)"
    )
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)


def _selection(text: str) -> str:
    """A ``--losses`` item: loss or case names, comma-separated."""
    try:
        select_cases([text])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--losses: ")) from None
    return text


def _counts_argument(value: str | None) -> tuple[str | None, str]:
    """(the counts csv, or None for the synthetic profile; how it was chosen)."""
    if value == "synthetic":
        return None, "requested"
    path = LVIS_COUNTS.locate(value)
    if path is None:
        return None, f"no csv given by {LVIS_COUNTS.option} or ${LVIS_COUNTS.variable}"
    if not path.is_file():
        raise LVIS_COUNTS.missing(path.parent, f"no file {path.name}")
    return str(path), "given" if value is not None else f"from ${LVIS_COUNTS.variable}"


def _run_memory_child(args: argparse.Namespace) -> int:
    case_key, _, impl = str(args.memory_case).rpartition(":")
    if case_key not in CASES:
        print(f"--memory-case: unknown case {case_key!r}", file=sys.stderr)
        return 2
    counts, _ = _counts_argument(args.lvis_counts)
    result = measure_memory(
        case_key, impl, size=args.size, profile=load_profile(counts), threads=args.threads
    )
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`)."""
    if args.memory_case:
        return _run_memory_child(args)
    smoke = args.size == "smoke"
    repeats = args.repeats if args.repeats is not None else (3 if smoke else 11)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 2)
    with_memory = args.memory if args.memory is not None else not smoke
    cases = select_cases(args.losses)
    counts, how = _counts_argument(args.lvis_counts)
    profile = load_profile(counts)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device: expected a CUDA device, but torch sees none")
    device = torch.device(args.device)
    if device.type != "cpu":
        with_memory = False  # the memory is the resident set of the host process
    torch.set_num_threads(args.threads)
    env = environment()
    malloc = " ".join(f"{k}={v}" for k, v in env["malloc_env"].items()) or "none (glibc defaults)"
    child = " ".join(f"{k}={v}" for k, v in MEMORY_CHILD_MALLOC.items())
    print(f"eqlosses benchmark: size={args.size}, {repeats} timed rounds after {warmup} warm-up")
    print(f"torch {env['torch']}, Python {env['python']}, {env['platform']}")
    print(f"CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs")
    print(
        f"threads: torch.set_num_threads({args.threads}) -> {env['torch_threads']} intra-op, "
        f"{env['torch_interop_threads']} inter-op"
    )
    print(
        f"allocator: {env['libc'] or 'unknown libc'} malloc, MALLOC_* in force: {malloc}; "
        f"transparent hugepages: {env['transparent_hugepages']}"
    )
    if with_memory:
        print(f"memory: one fresh process per case, run with {child}")
    else:
        print("memory: not measured (--memory to measure)")
    print(f"softmax losses on the CPU: {env['softmax_cpu_kernel']}")
    print(f"labels: {profile.source} [{how}]; device: {device}")
    if args.load:
        print(f"load: every case is timed again beside {args.load} busy processes")
    print(f"load average at start: {_load_text()}", flush=True)
    _warn_if_busy(args.threads)

    started = time.perf_counter()
    verification = verify(cases, profile)
    print(
        "verified: (a) and (b) agree on loss, gradient and statistics over 3 updating steps "
        f"in float64 at smoke size (largest relative difference "
        f"{max(verification.values(), default=0.0):.1e})",
        flush=True,
    )

    results: list[dict[str, Any]] = []
    for case in cases:
        shape = case.shape_for(args.size)
        base = make_inputs(case, shape, profile, seed=0, device=device)
        inputs = {"a": base, "b": base.clone(), "c": base.clone()}
        impls = {key: build(case, key, shape, profile, device) for key in IMPLEMENTATIONS}
        timings, first_loss = time_case(impls, inputs, repeats=repeats, warmup=warmup)
        del inputs, base
        gc.collect()
        loss_gap = abs(first_loss["a"] - first_loss["b"]) / max(abs(first_loss["b"]), 1e-12)
        if not loss_gap <= 1e-3:
            raise BenchmarkError(
                f"{case.key}: at {_shape_text(shape)} (a) gives loss {first_loss['a']:.6g} and "
                f"(b) {first_loss['b']:.6g} from the same state"
            )
        medians = {k: t.median for k, t in timings.items()}
        result: dict[str, Any] = {
            "case": case.key,
            "loss": case.loss,
            "title": case.title,
            "setting": case.setting,
            "shape": list(shape),
            "plain": case.plain,
            "straightforward": case.straightforward,
            "first_loss": first_loss,
            "timings": {
                key: {
                    "median_ms": t.median,
                    "iqr_ms": t.iqr,
                    "q1_ms": t.quartiles[0],
                    "q3_ms": t.quartiles[2],
                    "inner_calls": t.inner,
                    "samples_ms": t.samples_ms,
                }
                for key, t in timings.items()
            },
            "ratios": {
                "a/b": medians["a"] / medians["b"],
                "a/c": medians["a"] / medians["c"],
            },
            "memory": {},
        }
        results.append(result)
        print(
            f"  timed {case.key:18s} {_shape_text(shape):22s} "
            + "  ".join(f"{k}={_ms(medians[k])} ms" for k in IMPLEMENTATIONS),
            flush=True,
        )

    if args.load:
        with busy_processes(args.load):
            print(f"load average beside {args.load} busy processes: {_load_text()}", flush=True)
            for result in results:
                result["loaded"] = time_loaded(
                    CASES[result["case"]],
                    profile,
                    result["shape"],
                    repeats=repeats,
                    warmup=warmup,
                    device=device,
                    processes=args.load,
                )

    # After every wall-clock timing: the one-thread measurement changes the thread pool,
    # which was seen to slow the two-thread cases timed after it.
    for result in results:
        case = CASES[result["case"]]
        if any(target.metric == "fixed a-c ms" for target in case.targets):
            columns = result["shape"][1]
            result["fixed_overhead"] = fixed_overhead(
                case, profile, columns, repeats=repeats, device=device
            )

    calibration: dict[str, Any] | None = None
    if with_memory:
        for result in results:
            for impl in IMPLEMENTATIONS:
                result["memory"][impl] = run_memory_case(
                    result["case"], impl, size=args.size, counts=counts, threads=args.threads
                )
            print(
                f"  memory {result['case']:18s} "
                + "  ".join(
                    f"{k}={result['memory'][k]['logit_units']:.2f}" for k in IMPLEMENTATIONS
                ),
                flush=True,
            )
        calibration = run_memory_case(
            cases[0].key, "alloc2", size=args.size, counts=counts, threads=args.threads
        )
    for result in results:
        result["targets"] = check_targets(result, CASES[result["case"]])

    print()
    print(format_table(results, markdown=args.markdown))
    print()
    print(
        "ms: median (interquartile range) of forward+backward, with the statistics update, "
        "per call; a/b, a/c: ratios of the medians (a/c loaded: beside --load busy "
        "processes); mem: peak resident memory above "
        "the inputs during one step, counting the returned gradient, in logit-sized float32 "
        "tensors."
    )
    coarse = [
        m for r in results for m in r["memory"].values() if isinstance(m, dict) and _coarse(m)
    ]
    if coarse:
        print(
            "(parenthesised): these logits are within the resident-set counters' resolution "
            f"(±{rss_resolution_bytes() // 1024} KiB, "
            f"up to {max(m['resolution_units'] for m in coarse):.1f} logit tensors): noise."
        )
    if calibration is not None:
        print(
            f"memory calibration: allocating 2 logit-sized tensors reads "
            f"{calibration['logit_units']:.2f} ({calibration['method']})"
        )
    fixed = [r for r in results if "fixed_overhead" in r]
    if fixed:
        print(
            f"fixed overhead: CPU time per step on {FIXED_OVERHEAD_ROWS} rows, one thread, "
            "where the arithmetic is negligible (medians): "
            + "; ".join(
                f"{r['title']} a={_ms(r['fixed_overhead']['a_ms'])} "
                f"c={_ms(r['fixed_overhead']['c_ms'])} ms"
                for r in fixed
            )
        )
    print(format_targets(results, args.size))
    elapsed = time.perf_counter() - started
    print(f"done in {elapsed:.0f} s; load average at the end: {_load_text()}")
    _warn_if_busy(args.threads, counts_own=True)

    if args.json:
        payload = {
            "size": args.size,
            "repeats": repeats,
            "warmup": warmup,
            "threads": args.threads,
            "load": args.load,
            "device": str(device),
            "labels": profile.source,
            "environment": env,
            "verification_max_relative_difference": verification,
            "memory_calibration": calibration,
            "results": results,
            "seconds": elapsed,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results saved to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eqlosses_lab.benchmark",
        description="Speed and memory of the eqlosses losses against the straightforward "
        "autograd form and the plain PyTorch loss.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    except DatasetNotFoundError as error:
        print(f"benchmark: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
