"""Statistics under torch.distributed: two real processes, gloo backend, CPU.

One spawned pair of processes (world size 2, FileStore rendezvous in a temporary
directory) runs every scenario for every loss module and saves what each rank saw after
every step; the tests below compare those records with each other and with one process
fed the whole batch (the parent process, which never initialises a process group).

Scenarios, per loss module:

* ``stream``: a 5-step stream; each rank gets its part of every batch: halves, one step
  where rank 0 gets the whole batch and rank 1 an EMPTY one (0 rows), one uneven split
  (4 / 12 rows) and one step where rank 1's half has no positive sample.
* ``group``: the same stream with ``process_group=dist.new_group([0, 1])``.
* ``nan`` / ``inf``: one good step, then a step where only rank 0's logits hold a NaN
  (or +inf): the step must be dropped on both ranks, then one more good step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from gloo_ranks import run_ranks
from torch import nn

from eqlosses import EQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, SigmoidEQL, SoftmaxEQL

C = 4
WORLD_SIZE = 2
BATCH = 16
IMAGE_COUNTS = [800, 30, 5, 300]
NUM_IMAGES = 1000


@dataclass(frozen=True)
class Case:
    build: Callable[..., nn.Module]  # keyword process_group
    columns: int
    background: bool  # labels in [0, C], C = background
    scored: bool = False


CASES: dict[str, Case] = {
    "sigmoid_eql": Case(lambda **kw: SigmoidEQL(C, **kw), C, True),
    "sigmoid_eql_objectness": Case(lambda **kw: SigmoidEQL(C, objectness=True, **kw), C + 1, True),
    "softmax_eql": Case(lambda **kw: SoftmaxEQL(C, **kw), C, False),
    "softmax_eql_prior": Case(lambda **kw: SoftmaxEQL(C, form="prior", **kw), C, False),
    "efl": Case(lambda **kw: EqualizedFocalLoss(C, loss_weight=2.0, **kw), C, True),
    "eqfl": Case(lambda **kw: EqualizedQualityFocalLoss(C, **kw), C, True, scored=True),
    "eql_sigmoid": Case(lambda **kw: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, **kw), C, True),
    "eql_softmax": Case(
        lambda **kw: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, activation="softmax", drop_prob=1.0, **kw),
        C,
        False,
    ),
}

# rows of each rank per step of the stream: (rank 0 rows, rank 1 rows) of BATCH rows
HALF = ((0, BATCH // 2), (BATCH // 2, BATCH))
SPLITS = (
    HALF,
    HALF,
    ((0, BATCH), (BATCH, BATCH)),  # rank 1 gets an empty batch
    ((0, 4), (4, BATCH)),  # uneven
    HALF,  # rank 1's half is all background (sigmoid / focal losses)
)
STEPS = len(SPLITS)
BAD_RANK_ROWS = HALF


def _batch(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """The whole batch of one step: logits, labels, extra arguments (EQFL's score)."""
    case = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(BATCH, case.columns, generator=gen, dtype=torch.float32)
    if case.background:
        probs = torch.tensor([0.25, 0.08, 0.04, 0.13, 0.5])
    else:
        probs = torch.tensor([0.5, 0.25, 0.05, 0.2])
    labels = torch.multinomial(probs, BATCH, replacement=True, generator=gen)
    if case.background:
        labels[: BATCH // 2][labels[: BATCH // 2] == C] = 0  # positives on rank 0's half
        if seed % 100 == STEPS - 1:
            labels[BATCH // 2 :] = C  # no positive on rank 1's half
    extra: tuple[torch.Tensor, ...] = ()
    if case.scored:
        extra = (torch.rand(BATCH, generator=gen),)
    return logits, labels, extra


def _stream_batch(name: str, step: int):
    return _batch(name, 1000 + 100 * list(CASES).index(name) + step)


def _record(criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    stats = criterion.statistics
    return stats.pos_grad.clone(), stats.neg_grad.clone(), stats.num_updates.clone()


def _train_step(criterion: nn.Module, batch, rows: tuple[int, int]) -> torch.Tensor:
    logits, labels, extra = batch
    start, stop = rows
    part = logits[start:stop].clone().requires_grad_()
    loss = criterion(part, labels[start:stop], *(e[start:stop] for e in extra))
    loss.backward()
    assert part.grad is not None and part.grad.shape == part.shape
    return loss.detach()


def _run_stream(name: str, rank: int | None, process_group=None):
    """Statistics after every step; ``rank=None``: one process fed the whole batch."""
    criterion = CASES[name].build(process_group=process_group)
    records = []
    for step in range(STEPS):
        rows = (0, BATCH) if rank is None else SPLITS[step][rank]
        _train_step(criterion, _stream_batch(name, step), rows)
        records.append(_record(criterion))
    return records


def _run_bad_step(name: str, rank: int | None, value: float):
    """good step, step with a non-finite logit on rank 0 only, good step."""
    criterion = CASES[name].build()
    records = []
    for step in range(3):
        logits, labels, extra = _batch(name, 7000 + step)
        if step == 1:
            logits = logits.clone()
            logits[0, 0] = value  # row 0 belongs to rank 0
        rows = (0, BATCH) if rank is None else BAD_RANK_ROWS[rank]
        loss = _train_step(criterion, (logits, labels, extra), rows)
        records.append((*_record(criterion), loss))
    return records


def _records(rank: int) -> dict[str, object]:
    group = dist.new_group([0, 1])
    results: dict[str, object] = {}
    for name in CASES:
        results[f"stream/{name}"] = _run_stream(name, rank)
        results[f"group/{name}"] = _run_stream(name, rank, process_group=group)
        results[f"nan/{name}"] = _run_bad_step(name, rank, float("nan"))
        results[f"inf/{name}"] = _run_bad_step(name, rank, float("inf"))
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """Spawn the two ranks once for the module; the records of rank 0 and rank 1."""
    return run_ranks(_records, WORLD_SIZE, tmp_path_factory.mktemp("dist"))


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == torch.float64, what
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-9), (what, got, want)


# --------------------------------------------------------------------------------------
# no process group: the single-process reference itself


def test_parent_has_no_process_group() -> None:
    assert not dist.is_initialized()


@pytest.mark.parametrize("name", list(CASES))
def test_without_process_group_nothing_crashes(name: str) -> None:
    records = _run_stream(name, rank=None)
    assert not dist.is_initialized()
    for step, (pos, neg, count) in enumerate(records):
        assert int(count) == step + 1
        assert torch.isfinite(pos).all() and torch.isfinite(neg).all()
    # an explicit process group of None also works without initialisation
    criterion = CASES[name].build(process_group=None)
    _train_step(criterion, _stream_batch(name, 0), (0, BATCH))
    assert int(criterion.statistics.num_updates) == 1


# --------------------------------------------------------------------------------------
# two ranks


@pytest.mark.parametrize("scenario", ["stream", "group"])
@pytest.mark.parametrize("name", list(CASES))
def test_ranks_agree_with_one_process_on_the_whole_batch(
    ranks: list[dict[str, object]], name: str, scenario: str
) -> None:
    reference = _run_stream(name, rank=None)
    rank0 = ranks[0][f"{scenario}/{name}"]
    rank1 = ranks[1][f"{scenario}/{name}"]
    assert len(rank0) == len(rank1) == STEPS
    for step in range(STEPS):
        for i, field in enumerate(("pos_grad", "neg_grad", "num_updates")):
            # both ranks hold identical statistics after every step
            assert torch.equal(rank0[step][i], rank1[step][i]), (step, field)
        assert int(rank0[step][2]) == step + 1
        _assert_close(rank0[step][0], reference[step][0], f"step {step} pos_grad")
        _assert_close(rank0[step][1], reference[step][1], f"step {step} neg_grad")


def test_statistics_are_not_trivially_equal(ranks: list[dict[str, object]]) -> None:
    """The streams are informative: a per-rank normalisation (the reference
    implementations' R-fold scale) would not pass the comparison above."""
    for name in ("softmax_eql", "efl", "eqfl"):
        reference = _run_stream(name, rank=None)
        rank0 = ranks[0][f"stream/{name}"]
        # a loss with a 'mean' normaliser: summing per-rank normalised increments differs
        per_rank_normalised = _per_rank_normalised_first_step(name)
        assert not torch.allclose(per_rank_normalised, reference[0][0], rtol=1e-3)
        assert torch.allclose(rank0[0][0], reference[0][0], rtol=1e-5)
        assert (reference[-1][0] > 0).any() and (reference[-1][1] > 0).all()


def _per_rank_normalised_first_step(name: str) -> torch.Tensor:
    total = torch.zeros(C, dtype=torch.float64)
    for rank in range(WORLD_SIZE):
        criterion = CASES[name].build()
        _train_step(criterion, _stream_batch(name, 0), SPLITS[0][rank])
        total += criterion.pos_grad
    return total


def test_first_step_matches_autograd_of_the_whole_batch_loss(
    ranks: list[dict[str, object]],
) -> None:
    """Independent value of the first step (initial factors): the summed statistics are
    |dL/dz| of the whole-batch loss, split by target, including the normaliser."""
    # Softmax-EQL with I = 0 is plain cross-entropy, mean over samples.
    logits, labels, _ = _stream_batch("softmax_eql", 0)
    z = logits.double().requires_grad_()
    F.cross_entropy(z, labels).backward()
    onehot = F.one_hot(labels, C).double()
    grad = z.grad.abs()
    want_pos = (grad * onehot).sum(0)
    want_neg = (grad * (1 - onehot)).sum(0)
    for rank in range(WORLD_SIZE):
        pos, neg, _ = ranks[rank]["stream/softmax_eql"][0]
        _assert_close(pos, want_pos, "softmax pos")
        _assert_close(neg, want_neg, "softmax neg")

    # EFL with g = 1 is the sigmoid focal loss (γ = 2, α = 0.25) over the positives,
    # times loss_weight = 2.
    logits, labels, _ = _stream_batch("efl", 0)
    z = logits.double().requires_grad_()
    y = F.one_hot(labels, C + 1)[:, :C].double()
    p = torch.sigmoid(z)
    pt = torch.where(y > 0, p, 1 - p)
    alpha_t = torch.where(y > 0, 0.25, 0.75)
    loss = -(alpha_t * (1 - pt) ** 2 * F.logsigmoid(torch.where(y > 0, z, -z))).sum()
    (2.0 * loss / max(int((labels < C).sum()), 1)).backward()
    grad = z.grad.abs()
    for rank in range(WORLD_SIZE):
        pos, neg, _ = ranks[rank]["stream/efl"][0]
        _assert_close(pos, (grad * y).sum(0), "efl pos")
        _assert_close(neg, (grad * (1 - y)).sum(0), "efl neg")


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("name", list(CASES))
def test_non_finite_step_on_one_rank_is_dropped_on_both(
    ranks: list[dict[str, object]], name: str, value: str
) -> None:
    rank0 = ranks[0][f"{value}/{name}"]
    rank1 = ranks[1][f"{value}/{name}"]
    for step in range(3):
        for i in range(3):
            assert torch.equal(rank0[step][i], rank1[step][i]), (step, i)
    # step 1 (the bad one) changed nothing on either rank ...
    for rank_records in (rank0, rank1):
        (pos0, neg0, count0, _), (pos1, neg1, count1, _) = rank_records[0], rank_records[1]
        assert int(count0) == 1
        assert int(count1) == 1, "the non-finite step was counted"
        assert torch.equal(pos1, pos0)
        assert torch.equal(neg1, neg0)
        # ... and the ranks still join the next all-reduce together
        assert int(rank_records[2][2]) == 2
        assert torch.isfinite(rank_records[2][0]).all()
        assert torch.isfinite(rank_records[2][1]).all()
    # the rank without a bad value still got a finite loss of its own
    assert torch.isfinite(rank1[1][3])


if __name__ == "__main__":  # pragma: no cover - manual run
    sys.exit(pytest.main([__file__, "-q"]))


# --------------------------------------------------------------------------------------
# every forward joins exactly one all-reduce (else the ranks deadlock), whatever its batch


@pytest.mark.parametrize("batch_kind", ["normal", "empty", "ignored", "nan", "inf"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_updating_forward_joins_one_all_reduce(
    monkeypatch: pytest.MonkeyPatch, name: str, batch_kind: str
) -> None:
    calls: list[torch.Tensor] = []

    def fake_all_reduce(tensor, op=None, group=None, async_op=False):
        calls.append(tensor.clone())  # a second rank with an all-zero contribution

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    case = CASES[name]
    logits, labels, extra = _stream_batch(name, 0)
    if batch_kind == "empty":
        logits, labels, extra = logits[:0], labels[:0], tuple(e[:0] for e in extra)
    elif batch_kind == "ignored":
        labels = torch.full_like(labels, -100)
    elif batch_kind in ("nan", "inf"):
        logits = logits.clone()
        logits[0, 0] = float(batch_kind)
    criterion = case.build()
    part = logits.clone().requires_grad_()
    criterion(part, labels, *extra)
    assert len(calls) == 1
    assert calls[0].dtype == torch.float64
    # no update outside training or without grad: no all-reduce either, on every rank alike
    criterion.eval()
    criterion(logits, labels, *extra)
    criterion.train()
    with torch.no_grad():
        criterion(logits, labels, *extra)
    assert len(calls) == 1
