"""Every public loss as a test case: how to build it, how many logit columns it takes and
which labels it accepts. The tests that run the same check over all losses (edge cases,
the accelerator path, CUDA) share this table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

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
)


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    columns: int
    highest_label: int  # the background label where the loss has one
    scored: bool = False  # takes a quality score after the labels (EQFL)
    pixels: bool = False  # (N, C, H, W) logits


def loss_cases(
    counts: Sequence[int],
    *,
    num_images: int,
    drop_prob: float,
    sample_classes: int,
    generator: Callable[[], torch.Generator | None] = lambda: None,
) -> dict[str, Case]:
    """One case per loss (and per layout a loss has) over ``len(counts)`` classes.

    ``num_images``: the data set size EQL divides the image counts by; ``drop_prob``: the softmax
    EQL's drop probability; ``sample_classes``: the federated loss's sampled classes;
    ``generator``: what the random losses draw from (``None``: torch's default).
    """
    counts = list(counts)
    classes = len(counts)
    return {
        "sigmoid_eql": Case(lambda: SigmoidEQL(classes), classes, classes),
        "sigmoid_eql_objectness": Case(
            lambda: SigmoidEQL(classes, objectness=True), classes + 1, classes
        ),
        "softmax_eql": Case(lambda: SoftmaxEQL(classes), classes, classes - 1),
        "softmax_eql_per_pixel": Case(
            lambda: SoftmaxEQL(classes), classes, classes - 1, pixels=True
        ),
        "efl": Case(lambda: EqualizedFocalLoss(classes), classes, classes),
        "eqfl": Case(lambda: EqualizedQualityFocalLoss(classes), classes, classes, scored=True),
        "eql": Case(lambda: EQL(counts, num_images, 0.05), classes, classes),
        "eql_softmax": Case(
            lambda: EQL(
                counts,
                num_images,
                0.05,
                activation="softmax",
                drop_prob=drop_prob,
                generator=generator(),
            ),
            classes,
            classes - 1,
        ),
        "focal": Case(lambda: FocalLoss(classes), classes, classes),
        "balanced_softmax": Case(lambda: BalancedSoftmax(counts), classes, classes - 1),
        "class_balanced": Case(lambda: ClassBalancedLoss(counts), classes, classes - 1),
        "seesaw": Case(lambda: SeesawLoss(classes), classes, classes - 1),
        "federated": Case(
            lambda: FederatedLoss(counts, num_sample_classes=sample_classes, generator=generator()),
            classes + 1,
            classes,
        ),
    }
