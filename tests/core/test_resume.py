"""Checkpoint and resume: model, optimiser and loss state_dicts into FRESH objects.

For every loss module a stream of 6 steps of a tiny linear model trained with SGD is run
once without interruption and once interrupted after ``k`` steps (saved through bytes,
loaded into newly built objects with a different random initialisation). The resumed
run must reproduce the uninterrupted one exactly: losses, statistics, parameters.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from eqlosses import EQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, SigmoidEQL, SoftmaxEQL

C = 4
FEATURES = 6
BATCH = 12
STEPS = 6
IMAGE_COUNTS = [800, 30, 5, 300]  # classes 1 and 2 are rare under threshold 0.05
NUM_IMAGES = 1000


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    columns: int
    background: bool  # labels in [0, C] (C = background) instead of [0, C)
    scored: bool = False  # EQFL takes a quality score per row
    initial_ratio: float = 1.0


CASES = {
    "sigmoid_eql": Case(lambda: SigmoidEQL(C), C, True, initial_ratio=100.0),
    "sigmoid_eql_objectness": Case(
        lambda: SigmoidEQL(C, objectness=True), C + 1, True, initial_ratio=100.0
    ),
    "softmax_eql": Case(lambda: SoftmaxEQL(C), C, False),
    "softmax_eql_prior": Case(lambda: SoftmaxEQL(C, form="prior"), C, False),
    "softmax_eql_neg": Case(lambda: SoftmaxEQL(C, indicator="neg", loss_weight=0.5), C, False),
    "efl": Case(lambda: EqualizedFocalLoss(C), C, True),
    "eqfl": Case(lambda: EqualizedQualityFocalLoss(C), C, True, scored=True),
    "eql_sigmoid": Case(lambda: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05), C, True),
    # drop_prob=1 makes the softmax form deterministic (every rare negative dropped)
    "eql_softmax": Case(
        lambda: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, activation="softmax", drop_prob=1.0),
        C,
        False,
    ),
}


def _stream(case: Case) -> list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]]:
    """Deterministic batches (features, labels, extra args), long-tailed labels."""
    gen = torch.Generator().manual_seed(2024)
    if case.background:
        # background (label C) dominates, class 2 is rare and absent from the first steps
        probs = torch.tensor([0.2, 0.08, 0.04, 0.13, 0.55])
    else:
        probs = torch.tensor([0.55, 0.25, 0.05, 0.15])
    batches = []
    for step in range(STEPS):
        x = torch.randn(BATCH, FEATURES, generator=gen)
        labels = torch.multinomial(probs, BATCH, replacement=True, generator=gen)
        if step < 2:
            labels = torch.where(labels == 2, labels.new_tensor(0), labels)
        extra: tuple[torch.Tensor, ...] = ()
        if case.scored:
            extra = (torch.rand(BATCH, generator=gen),)
        batches.append((x, labels, extra))
    return batches


@dataclass
class Trainer:
    model: nn.Linear
    optimizer: torch.optim.Optimizer
    criterion: nn.Module


def _build(case: Case, seed: int) -> Trainer:
    torch.manual_seed(seed)
    model = nn.Linear(FEATURES, case.columns)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    criterion = case.build()
    criterion.train()
    return Trainer(model, optimizer, criterion)


def _step(trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]):
    x, labels, extra = batch
    trainer.optimizer.zero_grad()
    loss = trainer.criterion(trainer.model(x), labels, *extra)
    loss.backward()
    trainer.optimizer.step()
    stats = trainer.criterion.statistics
    return (
        loss.detach().clone(),
        stats.pos_grad.clone(),
        stats.neg_grad.clone(),
        stats.num_updates.clone(),
    )


def _through_bytes(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _checkpoint(trainer: Trainer) -> dict:
    return _through_bytes(
        {
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "loss": trainer.criterion.state_dict(),
        }
    )


def _uninterrupted(case: Case):
    trainer = _build(case, seed=0)
    return [_step(trainer, batch) for batch in _stream(case)], trainer


def _assert_same_record(got, want, step: int) -> None:
    for name, a, b in zip(("loss", "pos_grad", "neg_grad", "num_updates"), got, want, strict=True):
        assert a.dtype == b.dtype, (step, name)
        assert torch.equal(a, b), (step, name, a, b)


@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_resume_reproduces_uninterrupted_run(name: str, k: int) -> None:
    case = CASES[name]
    batches = _stream(case)
    reference, reference_trainer = _uninterrupted(case)

    first = _build(case, seed=0)
    for step in range(k):
        _step(first, batches[step])
    checkpoint = _checkpoint(first)
    del first

    resumed = _build(case, seed=1)
    # the fresh objects differ before loading, so the load is what makes them agree
    assert not torch.equal(resumed.model.weight, checkpoint["model"]["weight"])
    resumed.model.load_state_dict(checkpoint["model"])
    resumed.optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.criterion.load_state_dict(checkpoint["loss"])

    stats = resumed.criterion.statistics
    assert stats.pos_grad.dtype == torch.float64
    assert stats.num_updates.dtype == torch.int64
    assert int(stats.num_updates) == k
    if k == 0:
        # resumed before the first update: the initial ratio, not g = 0
        expected = torch.full((C,), case.initial_ratio, dtype=torch.float64)
        assert torch.equal(resumed.criterion.grad_ratio, expected)

    for step in range(k, STEPS):
        got = _step(resumed, batches[step])
        _assert_same_record(got, reference[step], step)

    assert torch.equal(resumed.model.weight, reference_trainer.model.weight)
    assert torch.equal(resumed.model.bias, reference_trainer.model.bias)


@pytest.mark.parametrize("name", list(CASES))
def test_loss_state_dict_keys(name: str) -> None:
    criterion = CASES[name].build()
    keys = set(criterion.state_dict())
    expected = {"statistics.pos_grad", "statistics.neg_grad", "statistics.num_updates"}
    if name.startswith("eql"):
        expected |= {"rare", "_extra_state"}  # the softmax form's random state
    assert keys == expected


@pytest.mark.parametrize("name", ["sigmoid_eql", "efl", "eqfl"])
def test_resume_before_first_update_keeps_initial_factors(name: str) -> None:
    """A checkpoint taken before the first update restores "not yet updated".

    Statistics of all zeros with the counter at 0 give the initial ratio (100 for
    Sigmoid-EQL: all weights 1; 1 for EFL: γ = γ_b, w = 1). Were the counter lost, a
    resumed run would use g = 0: a neg weight of ≈7e-5 or γ = γ_b + s = 10.
    """
    case = CASES[name]
    _x, labels, extra = _stream(case)[0]
    logits = torch.randn(BATCH, case.columns, generator=torch.Generator().manual_seed(5))

    saved = _through_bytes(case.build().state_dict())
    resumed = case.build()
    resumed.load_state_dict(saved)
    plain = case.build()
    loss_resumed = resumed(logits.clone().requires_grad_(), labels, *extra)
    loss_plain = plain(logits.clone().requires_grad_(), labels, *extra)
    assert torch.equal(loss_resumed, loss_plain)

    # the independent value of the first step, from the initial factors
    z = logits.double()
    valid_fg = labels < C
    onehot = torch.zeros(BATCH, C + 1, dtype=torch.float64)
    onehot[torch.arange(BATCH), labels] = 1.0
    y = onehot[:, :C]
    if name == "sigmoid_eql":
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum")
        expected = bce / BATCH
    else:
        p = torch.sigmoid(z)
        if name == "efl":
            pt = torch.where(y > 0, p, 1 - p)
            alpha_t = torch.where(y > 0, 0.25, 0.75)
            entries = -alpha_t * (1 - pt) ** 2 * torch.log(pt)
        else:
            (score,) = extra
            t = y * score.double().unsqueeze(1)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")
            entries = (t - p).abs() ** 2 * bce
        expected = entries.sum() / max(int(valid_fg.sum()), 1)
    assert torch.allclose(loss_resumed.double(), expected, rtol=1e-5, atol=1e-7)

    # and the reloaded counter still says "not yet updated" when a dirty module is loaded
    dirty = case.build()
    dirty(logits.clone().requires_grad_(), labels, *extra)
    assert int(dirty.statistics.num_updates) == 1
    dirty.load_state_dict(saved)
    assert int(dirty.statistics.num_updates) == 0
    assert torch.equal(dirty.grad_ratio, torch.full((C,), case.initial_ratio, dtype=torch.float64))
    loss_dirty = dirty(logits.clone().requires_grad_(), labels, *extra)
    assert torch.equal(loss_dirty, loss_plain)


def test_resumed_statistics_drive_the_next_loss() -> None:
    """Statistics restored into a fresh module change the loss the way the saved ones do
    (guards against a resume that restores the buffers but recomputes factors elsewhere)."""
    case = CASES["sigmoid_eql"]
    batches = _stream(case)
    trainer = _build(case, seed=0)
    for step in range(3):
        _step(trainer, batches[step])
    saved = _through_bytes(trainer.criterion.state_dict())
    x, labels, _ = batches[3]
    logits = trainer.model(x).detach()

    resumed = case.build()
    resumed.load_state_dict(saved)
    fresh = case.build()
    with torch.no_grad():
        loss_resumed = resumed(logits, labels)
        loss_trained = trainer.criterion(logits, labels)
        loss_fresh = fresh(logits, labels)
    assert torch.equal(loss_resumed, loss_trained)
    assert not torch.allclose(loss_resumed, loss_fresh)
    # no update under no_grad
    assert int(resumed.statistics.num_updates) == 3
