"""The mmdet adapters under torch.distributed: two real processes, gloo backend, CPU.

Each rank calls its loss like a dense head (three FPN levels per step, one avg_factor
per rank) or a box head (one call), and commits once per step, as
``CommitStatisticsHook`` does on every rank. In one step rank 1 makes no call at all (a
head that skipped its loss): it still commits, adding nothing. Both ranks must hold the
same statistics after every step, equal to one process that updates once per step
with the sums of every rank's and level's increments and normalisers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("mmdet")

import torch
from gloo_ranks import run_ranks
from torch import Tensor

from eqlosses import GradientStatistics
from eqlosses import functional as F
from eqlosses.integrations import mmdet as eqmm

C = 4
WORLD_SIZE = 2
STEPS = 3
SKIPPING = (1, 1)  # (step, rank): that rank's head makes no call in that step
LEVEL_ROWS = (24, 10, 4)
AVG_FACTORS = (3.0, 5.0)  # per rank


def _calls(name: str, step: int, rank: int) -> list[tuple[Tensor, Tensor, float]]:
    """The (logits, labels, avg_factor) of each call of a rank in a step."""
    if (step, rank) == SKIPPING:
        return []
    generator = torch.Generator().manual_seed(1000 * step + 100 * rank + len(name))
    rows = LEVEL_ROWS if name == "efl" else (32,)
    columns = C + 1 if name == "sigmoid_eql" else C
    calls = []
    for count in rows:
        logits = 2.0 * torch.randn(count, columns, generator=generator)
        labels = torch.randint(0, C + 1, (count,), generator=generator)
        calls.append((logits, labels, AVG_FACTORS[rank]))
    return calls


BUILD: dict[str, Callable[[], eqmm.MMDetStatisticsLoss]] = {
    "efl": lambda: eqmm.EqualizedFocalLoss(C, loss_weight=2.0),
    "sigmoid_eql": lambda: eqmm.SigmoidEQL(C),
}


def _statistics(loss: eqmm.MMDetStatisticsLoss) -> list[Tensor]:
    statistics = loss.criterion.statistics
    return [
        statistics.pos_grad.clone(),
        statistics.neg_grad.clone(),
        statistics.num_updates.clone(),
    ]


def _run(name: str, rank: int) -> list[list[Tensor]]:
    loss = BUILD[name]()
    records = []
    for step in range(STEPS):
        for logits, labels, avg_factor in _calls(name, step, rank):
            score = logits.clone().requires_grad_(True)
            loss(score, labels, torch.ones(len(labels)), avg_factor=avg_factor).backward()
        loss.commit_statistics()
        records.append(_statistics(loss))
    return records


def _records(rank: int) -> dict[str, list[list[Tensor]]]:
    return {name: _run(name, rank) for name in BUILD}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(_records, WORLD_SIZE, tmp_path_factory.mktemp("dist"))


def _reference(name: str) -> list[list[Tensor]]:
    """One process: per step, every rank's calls with the same factors, one update."""
    loss_weight = 2.0 if name == "efl" else 1.0
    statistics = GradientStatistics(C, initial_ratio=1.0 if name == "efl" else 100.0)
    records = []
    for step in range(STEPS):
        pos = torch.zeros(C, dtype=torch.float64)
        neg = torch.zeros(C, dtype=torch.float64)
        normaliser = 0.0
        num_samples = 0.0
        for rank in range(WORLD_SIZE):
            calls = _calls(name, step, rank)
            for logits, labels, avg_factor in calls:
                if name == "efl":
                    focusing, weighting = F.equalized_focal_factors(statistics.grad_ratio)
                    output = F.equalized_focal_loss(
                        logits, labels, focusing, weighting, avg_factor=avg_factor
                    )
                else:
                    q, r = F.sigmoid_eql_factors(statistics.grad_ratio)
                    output = F.sigmoid_eql(logits, labels, q, r, objectness=True, reduction="sum")
                pos = pos + output.pos_increment.double() * loss_weight
                neg = neg + output.neg_increment.double() * loss_weight
                num_samples += float(output.num_samples)
            if calls and name == "efl":
                normaliser += AVG_FACTORS[rank]
        statistics.update(pos, neg, normaliser if name == "efl" else None, num_samples=num_samples)
        records.append(_statistics_of(statistics))
    return records


def _statistics_of(statistics: GradientStatistics) -> list[Tensor]:
    return [
        statistics.pos_grad.clone(),
        statistics.neg_grad.clone(),
        statistics.num_updates.clone(),
    ]


@pytest.mark.parametrize("name", sorted(BUILD))
def test_ranks_agree_with_one_process_updating_once_per_step(
    ranks: list[dict[str, Any]], name: str
) -> None:
    reference = _reference(name)
    for step in range(STEPS):
        rank0, rank1 = ranks[0][name][step], ranks[1][name][step]
        for ours, theirs in zip(rank0, rank1, strict=True):
            assert torch.equal(ours, theirs), step
        assert int(rank0[2]) == step + 1
        torch.testing.assert_close(rank0[0], reference[step][0], rtol=1e-12, atol=0)
        torch.testing.assert_close(rank0[1], reference[step][1], rtol=1e-12, atol=0)
