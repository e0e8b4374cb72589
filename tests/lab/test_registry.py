"""One registry of losses for every task and the benchmark: the command line's choices,
the per-task settings each loss is built with, and what is refused."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from eqlosses import EQL, FederatedLoss, SeesawLoss, SoftmaxEQL
from eqlosses_lab import benchmark
from eqlosses_lab.registry import (
    BENCHMARK,
    CLASSIFICATION,
    COMPARISONS,
    EQL_LVIS_V1_THRESHOLD,
    ONE_STAGE,
    SEGMENTATION,
    TWO_STAGE,
    LossContext,
)
from eqlosses_lab.tasks import compare
from eqlosses_lab.tasks.settings import TwoStageConfig


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return parser


def test_the_command_line_offers_exactly_the_registered_losses() -> None:
    option = next(a for a in _compare_parser()._actions if a.dest == "losses")
    assert option.choices is not None
    registered = {name for table in COMPARISONS for name in table.names}
    assert set(option.choices) == registered
    # argparse wraps lines, at spaces and hyphens: compare without whitespace
    help_text = "".join(_compare_parser().format_help().split())
    for table in COMPARISONS:
        listed = f"{table.task}:{','.join(table.names)}(baseline{table.baseline})"
        assert listed in help_text
        assert table.baseline in table.names


def test_the_benchmark_names_its_losses_as_the_registry_does() -> None:
    assert set(benchmark.LOSSES) == set(BENCHMARK.names)
    assert {case.loss for case in benchmark.CASES.values()} == set(BENCHMARK.names)


def test_every_comparison_loss_builds_for_its_task() -> None:
    counts = [400, 120, 40, 12, 4, 1]
    context = LossContext(
        counts,
        seed=3,
        ignore_index=6,
        class_weights=torch.linspace(0.5, 2.0, 6),
        groups=["f", "f", "c", "c", "r", "r"],
        num_images=500,
        sampled_classes=3,
    )
    for name in CLASSIFICATION.names:
        assert isinstance(CLASSIFICATION.build(name, context), nn.Module)
    for name in SEGMENTATION.names:
        assert isinstance(SEGMENTATION.build(name, context), nn.Module)
    for name in ONE_STAGE.names:
        dense = ONE_STAGE.build(name, context)
        assert dense.takes_quality == (name in ("qfl", "eqfl"))
    for name in TWO_STAGE.names:
        assert TWO_STAGE.build(name, context).columns in (6, 7, 8)


def test_classification_eql_treats_the_tail_third_as_rare() -> None:
    counts = [90, 3, 50, 7, 20, 1]  # tail third by count: classes 1 and 5
    loss = CLASSIFICATION.build("eql", LossContext(counts, seed=0))
    assert isinstance(loss, EQL)
    assert loss.rare.tolist() == [False, True, False, False, False, True]


def test_two_stage_eql_treats_the_r_group_as_rare_and_federated_samples_its_share() -> None:
    context = LossContext(
        [120, 40, 5, 1], groups=["f", "c", "r", "r"], num_images=200, sampled_classes=3
    )
    eql = TWO_STAGE.build("eql", context).module
    assert isinstance(eql, EQL) and eql.rare.tolist() == [False, False, True, True]
    federated = TWO_STAGE.build("federated", context).module
    assert isinstance(federated, FederatedLoss) and federated.num_sample_classes == 3
    # the two-stage settings: the larger of a share of the classes and a floor, at most all
    assert TwoStageConfig().federated_classes(4) == 4
    assert TwoStageConfig().federated_classes(1203) == 50
    assert TwoStageConfig(federated_min_classes=2).federated_classes(4) == 2


def test_benchmark_eql_uses_the_lvis_threshold() -> None:
    images = torch.tensor([500.0, 110.0, 109.0, 3.0], dtype=torch.float64)
    loss = BENCHMARK.build("eql", LossContext(images, num_images=100_000))
    assert isinstance(loss, EQL)
    expected = (images / 100_000 < EQL_LVIS_V1_THRESHOLD).tolist()
    assert loss.rare.tolist() == expected == [False, False, True, True]


def test_segmentation_losses_ignore_the_task_label() -> None:
    context = LossContext([10, 20, 30], ignore_index=7)
    for name in ("seesaw", "softmax-eql"):
        loss = SEGMENTATION.build(name, context)
        assert isinstance(loss, SeesawLoss | SoftmaxEQL) and loss.ignore_index == 7


def test_unknown_names_and_missing_context_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^loss: expected one of focal, efl, .* for one-stage"):
        ONE_STAGE.build("seesaw", LossContext([1, 2]))
    with pytest.raises(ValueError, match=r"^context\.class_weights: this loss needs it"):
        SEGMENTATION.build("ce-median-freq", LossContext([1, 2]))
    with pytest.raises(ValueError, match=r"^context\.num_images"):
        TWO_STAGE.build("eql", LossContext([1, 2], groups=["r", "f"]))
