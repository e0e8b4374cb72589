"""GradientStatistics on its own: storage, dtype guard, update rule, reset, shape checks.

No process group is initialised in this module, so ``update`` takes the local path.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.distributed as dist
from torch import nn

from eqlosses import GradientStatistics

C = 3
# Values that float16 and bfloat16 cannot hold exactly (and 1e-30 underflows in float16),
# so a cast-and-back round trip would change them.
POS = torch.tensor([1.0 / 3.0, 1e-30, 123456.789], dtype=torch.float64)
NEG = torch.tensor([2.0 / 7.0, 70000.125, 3.0e-8], dtype=torch.float64)


def _filled(initial_ratio: float = 100.0) -> GradientStatistics:
    stats = GradientStatistics(C, initial_ratio)
    accepted = stats.update(POS, NEG)
    assert bool(accepted)
    return stats


def _snapshot(stats: GradientStatistics) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in stats.state_dict().items()}


def _assert_unchanged(stats: GradientStatistics, before: dict[str, torch.Tensor]) -> None:
    after = stats.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key


def test_no_process_group_in_this_module() -> None:
    assert not (dist.is_available() and dist.is_initialized())


def test_state_dict_has_float64_sums_and_int64_counter() -> None:
    stats = GradientStatistics(C, 100.0)
    state = stats.state_dict()
    assert set(state) == {"pos_grad", "neg_grad", "num_updates"}
    assert state["pos_grad"].dtype == torch.float64
    assert state["neg_grad"].dtype == torch.float64
    assert state["pos_grad"].shape == (C,)
    assert state["neg_grad"].shape == (C,)
    assert state["num_updates"].dtype == torch.int64
    assert state["num_updates"].shape == ()
    assert int(state["num_updates"]) == 0
    assert torch.equal(state["pos_grad"], torch.zeros(C, dtype=torch.float64))
    # buffers, not parameters: nothing for an optimiser to touch
    assert list(stats.parameters()) == []


def test_state_dict_round_trip_through_bytes() -> None:
    stats = _filled()
    stats.update(POS * 2, NEG / 3, normaliser=7)
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    buffer.seek(0)
    fresh = GradientStatistics(C, 100.0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_unchanged(fresh, _snapshot(stats))
    assert torch.equal(fresh.grad_ratio, stats.grad_ratio)


def test_loading_a_low_precision_state_keeps_float64() -> None:
    stats = GradientStatistics(C, 100.0)
    state = {
        "pos_grad": torch.tensor([0.5, 1.5, 2.5], dtype=torch.float16),
        "neg_grad": torch.tensor([1.0, 2.0, 4.0], dtype=torch.float32),
        "num_updates": torch.tensor(4, dtype=torch.int32),
    }
    stats.load_state_dict(state)
    assert stats.pos_grad.dtype == torch.float64
    assert stats.neg_grad.dtype == torch.float64
    assert stats.num_updates.dtype == torch.int64
    assert torch.equal(stats.pos_grad, torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64))
    assert int(stats.num_updates) == 4


_CASTS = {
    "half": lambda m: m.half(),
    "to_float16": lambda m: m.to(torch.float16),
    "to_bfloat16": lambda m: m.to(torch.bfloat16),
    "bfloat16": lambda m: m.bfloat16(),
    "double": lambda m: m.double(),
    "float": lambda m: m.float(),
    "type_half": lambda m: m.type(torch.half),
}


@pytest.mark.parametrize("cast", list(_CASTS))
def test_parent_cast_keeps_float64_and_exact_values(cast: str) -> None:
    stats = _filled()
    stats.update(POS / 3, NEG * 5, normaliser=3)
    before = _snapshot(stats)
    parent = nn.Sequential(nn.Linear(2, 2), stats)
    _CASTS[cast](parent)
    # the cast did reach the rest of the model ...
    expected_param = {
        "double": torch.float64,
        "float": torch.float32,
        "to_bfloat16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }.get(cast, torch.float16)
    assert parent[0].weight.dtype == expected_param
    # ... but not the statistics: same dtypes, bit-identical values
    assert parent[1] is stats
    _assert_unchanged(stats, before)
    # and back again
    parent.float()
    _assert_unchanged(stats, before)
    # the module still updates in float64 after the round trip
    tiny = torch.tensor([0.0, 1e-20, 0.0])
    stats.update(tiny, torch.zeros(C))
    assert stats.pos_grad.dtype == torch.float64
    assert torch.equal(stats.pos_grad, before["pos_grad"] + tiny.double())
    assert float(stats.pos_grad[1]) != 1e-20  # the ~1.1e-30 already there is kept


def test_repeated_casts_never_lose_precision() -> None:
    stats = _filled()
    before = _snapshot(stats)
    parent = nn.Sequential(nn.Linear(2, 2), stats)
    for _ in range(3):
        parent.half()
        parent.to(torch.bfloat16)
        parent.double()
        parent.float()
    _assert_unchanged(stats, before)


def test_state_dict_of_cast_parent_is_float64() -> None:
    stats = _filled()
    parent = nn.Sequential(nn.Linear(2, 2), stats)
    parent.half()
    state = parent.state_dict()
    assert state["1.pos_grad"].dtype == torch.float64
    assert state["1.neg_grad"].dtype == torch.float64
    assert state["1.num_updates"].dtype == torch.int64
    assert torch.equal(state["1.pos_grad"], POS)


def test_device_move_keeps_dtype() -> None:
    stats = _filled()
    before = _snapshot(stats)
    parent = nn.Sequential(nn.Linear(2, 2), stats)
    parent.to("cpu")
    _assert_unchanged(stats, before)
    # a move to another device, alone and together with a dtype change
    parent.to("meta")
    assert stats.pos_grad.device.type == "meta"
    assert stats.pos_grad.dtype == torch.float64
    assert stats.neg_grad.dtype == torch.float64
    assert stats.num_updates.dtype == torch.int64
    moved = nn.Sequential(nn.Linear(2, 2), _filled())
    moved.to(device="meta", dtype=torch.float16)
    assert moved[0].weight.dtype == torch.float16
    assert moved[1].pos_grad.device.type == "meta"
    assert moved[1].pos_grad.dtype == torch.float64
    assert moved[1].num_updates.dtype == torch.int64


@pytest.mark.parametrize("initial_ratio", [100.0, 1.0, 0.25])
def test_grad_ratio_is_initial_until_first_update(initial_ratio: float) -> None:
    stats = GradientStatistics(C, initial_ratio)
    ratio = stats.grad_ratio
    assert ratio.dtype == torch.float64
    assert torch.equal(ratio, torch.full((C,), initial_ratio, dtype=torch.float64))
    # after one update, the plain ratio, even where it is 0 (class never positive)
    stats.update(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([2.0, 5.0, 0.0]))
    expected = torch.tensor(
        [1.0 / (2.0 + 1e-10), 0.0 / (5.0 + 1e-10), 3.0 / (0.0 + 1e-10)], dtype=torch.float64
    )
    assert torch.equal(stats.grad_ratio, expected)
    assert float(stats.grad_ratio[1]) == 0.0


def test_update_with_zero_increments_counts() -> None:
    # an accepted step of only-negative gradient makes g = 0 (not the initial ratio)
    stats = GradientStatistics(C, 100.0)
    stats.update(torch.zeros(C), torch.ones(C))
    assert int(stats.num_updates) == 1
    assert torch.equal(stats.grad_ratio, torch.zeros(C, dtype=torch.float64))


def test_manual_buffers_without_counter_still_report_initial_ratio() -> None:
    stats = GradientStatistics(C, 100.0)
    stats.pos_grad.fill_(1.0)
    stats.neg_grad.fill_(4.0)
    assert torch.equal(stats.grad_ratio, torch.full((C,), 100.0, dtype=torch.float64))
    stats.num_updates.fill_(1)
    assert torch.allclose(stats.grad_ratio, torch.full((C,), 0.25, dtype=torch.float64))


def test_update_accumulates_in_float64() -> None:
    stats = GradientStatistics(C, 1.0)
    inc32 = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32)
    inc16 = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float16)
    accepted = stats.update(inc32, inc16)
    assert accepted.dtype == torch.bool
    assert bool(accepted)
    assert torch.equal(stats.pos_grad, inc32.double())
    assert torch.equal(stats.neg_grad, inc16.double())
    assert int(stats.num_updates) == 1


def test_update_does_not_track_autograd() -> None:
    stats = GradientStatistics(C, 1.0)
    inc = torch.tensor([0.5, 1.0, 1.5], requires_grad=True)
    stats.update(inc * 2, inc * 3)
    assert not stats.pos_grad.requires_grad
    assert torch.equal(stats.pos_grad, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_normaliser_divides_each_step_then_sums() -> None:
    stats = GradientStatistics(C, 1.0)
    p1 = torch.tensor([3.0, 6.0, 9.0])
    n1 = torch.tensor([1.0, 2.0, 4.0])
    p2 = torch.tensor([5.0, 0.0, 1.0])
    n2 = torch.tensor([10.0, 20.0, 30.0])
    stats.update(p1, n1, normaliser=3)
    stats.update(p2, n2, normaliser=torch.tensor(5.0))
    expected_pos = p1.double() / 3 + p2.double() / 5
    expected_neg = n1.double() / 3 + n2.double() / 5
    assert torch.allclose(stats.pos_grad, expected_pos, rtol=1e-15, atol=0)
    assert torch.allclose(stats.neg_grad, expected_neg, rtol=1e-15, atol=0)
    assert int(stats.num_updates) == 2
    # not the sum of increments divided by the summed normaliser
    assert not torch.allclose(stats.pos_grad, (p1 + p2).double() / 8)


@pytest.mark.parametrize("normaliser", [0, 0.25, torch.tensor(0.0), torch.tensor(0.5)])
def test_normaliser_below_one_counts_as_one(normaliser: float | torch.Tensor) -> None:
    stats = GradientStatistics(C, 1.0)
    stats.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]), normaliser)
    assert torch.equal(stats.pos_grad, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.equal(stats.neg_grad, torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64))
    assert int(stats.num_updates) == 1


@pytest.mark.parametrize("num_samples", [0, 0.0, torch.tensor(0.0)], ids=["int", "float", "tensor"])
def test_a_step_without_samples_is_dropped(num_samples: float | torch.Tensor) -> None:
    # Losses pass the count as a Python number when no row was ignored, else a tensor.
    stats = _filled()
    before = _snapshot(stats)
    accepted = stats.update(POS, NEG, 2.0, num_samples=num_samples)
    assert accepted.dtype == torch.bool and not bool(accepted)
    _assert_unchanged(stats, before)
    assert bool(stats.update(POS, NEG, 2.0, num_samples=3))


def test_normaliser_none_means_no_division() -> None:
    stats = GradientStatistics(C, 1.0)
    stats.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]), None)
    stats.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
    assert torch.equal(stats.pos_grad, torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))
    assert torch.equal(stats.neg_grad, torch.tensor([8.0, 10.0, 12.0], dtype=torch.float64))


_BAD = [float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("where", ["pos", "neg", "normaliser"])
@pytest.mark.parametrize("bad", _BAD, ids=["inf", "-inf", "nan"])
def test_non_finite_step_is_dropped_entirely(where: str, bad: float) -> None:
    stats = _filled()
    stats.update(POS, NEG, normaliser=2)
    before = _snapshot(stats)
    ratio_before = stats.grad_ratio.clone()
    pos = torch.tensor([1.0, 2.0, 3.0])
    neg = torch.tensor([4.0, 5.0, 6.0])
    normaliser: float | torch.Tensor = 2.0
    if where == "pos":
        pos[1] = bad
    elif where == "neg":
        neg[2] = bad
    else:
        normaliser = torch.tensor(bad)
    accepted = stats.update(pos, neg, normaliser)
    if where == "normaliser":  # the same as a Python number, judged on the host
        assert not bool(stats.update(pos, neg, bad))
    assert accepted.dtype == torch.bool
    assert not bool(accepted)
    _assert_unchanged(stats, before)
    assert torch.equal(stats.grad_ratio, ratio_before)
    # a finite step afterwards is accepted as usual
    assert bool(stats.update(pos.nan_to_num(0, 0, 0), neg.nan_to_num(0, 0, 0)))
    assert int(stats.num_updates) == int(before["num_updates"]) + 1
    assert torch.isfinite(stats.pos_grad).all()
    assert torch.isfinite(stats.neg_grad).all()


@pytest.mark.parametrize("bad", _BAD, ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("shape", [(), (4, 3)], ids=["scalar", "per-entry"])
def test_non_finite_loss_drops_a_finite_step(bad: float, shape: tuple[int, ...]) -> None:
    stats = _filled()
    before = _snapshot(stats)
    loss = torch.ones(shape)
    loss.view(-1)[-1] = bad
    assert not bool(stats.update(POS, NEG, 2.0, loss=loss))
    _assert_unchanged(stats, before)
    # the same increments with a finite loss (large, in float16) are accepted
    assert bool(stats.update(POS, NEG, 2.0, loss=torch.full(shape, 6e4, dtype=torch.float16)))
    assert int(stats.num_updates) == int(before["num_updates"]) + 1


@pytest.mark.parametrize("bad", _BAD, ids=["inf", "-inf", "nan"])
def test_non_finite_first_step_keeps_initial_ratio(bad: float) -> None:
    stats = GradientStatistics(C, 100.0)
    accepted = stats.update(torch.tensor([1.0, bad, 0.0]), torch.ones(C))
    assert not bool(accepted)
    assert int(stats.num_updates) == 0
    assert torch.equal(stats.pos_grad, torch.zeros(C, dtype=torch.float64))
    assert torch.equal(stats.neg_grad, torch.zeros(C, dtype=torch.float64))
    assert torch.equal(stats.grad_ratio, torch.full((C,), 100.0, dtype=torch.float64))


def test_finite_float32_overflowing_to_inf_in_float16_is_kept() -> None:
    # 1e6 is finite in float32 (and float64); it must not be judged in float16
    stats = GradientStatistics(C, 1.0)
    assert bool(stats.update(torch.tensor([1e6, 0.0, 0.0]), torch.tensor([0.0, 1e30, 0.0])))
    assert float(stats.pos_grad[0]) == 1e6
    assert float(stats.neg_grad[1]) == float(torch.tensor(1e30, dtype=torch.float32))


def test_reset_statistics() -> None:
    stats = _filled(initial_ratio=100.0)
    stats.update(POS, NEG, normaliser=4)
    assert int(stats.num_updates) == 2
    stats.reset_statistics()
    assert torch.equal(stats.pos_grad, torch.zeros(C, dtype=torch.float64))
    assert torch.equal(stats.neg_grad, torch.zeros(C, dtype=torch.float64))
    assert int(stats.num_updates) == 0
    assert stats.pos_grad.dtype == torch.float64
    assert stats.num_updates.dtype == torch.int64
    assert torch.equal(stats.grad_ratio, torch.full((C,), 100.0, dtype=torch.float64))
    # usable again afterwards, from scratch
    stats.update(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([4.0, 1.0, 0.0]))
    assert torch.equal(stats.pos_grad, torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))
    assert int(stats.num_updates) == 1


def test_reset_statistics_keeps_buffers_in_place() -> None:
    # an optimiser or a DDP wrapper may hold references to the buffers
    stats = _filled()
    pos, neg, count = stats.pos_grad, stats.neg_grad, stats.num_updates
    stats.reset_statistics()
    assert stats.pos_grad is pos
    assert stats.neg_grad is neg
    assert stats.num_updates is count


@pytest.mark.parametrize(
    "pos_shape, neg_shape",
    [((C + 1,), (C,)), ((C,), (C - 1,)), ((C, 1), (C,)), ((), (C,)), ((1, C), (1, C))],
)
def test_update_shape_errors(pos_shape: tuple[int, ...], neg_shape: tuple[int, ...]) -> None:
    stats = _filled()
    before = _snapshot(stats)
    with pytest.raises(ValueError) as info:
        stats.update(torch.ones(pos_shape), torch.ones(neg_shape))
    message = str(info.value)
    assert "pos_increment" in message or "neg_increment" in message
    bad = pos_shape if pos_shape != (C,) else neg_shape
    assert str(tuple(bad)) in message
    assert f"({C},)" in message
    _assert_unchanged(stats, before)


@pytest.mark.parametrize("num_classes", [0, -2])
def test_constructor_rejects_bad_num_classes(num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_classes") as info:
        GradientStatistics(num_classes, 1.0)
    assert str(num_classes) in str(info.value)


def test_large_sums_after_half_stay_exact() -> None:
    stats = GradientStatistics(C, 100.0)
    parent = nn.Sequential(nn.Linear(2, 2), stats)
    parent.half()
    # far beyond float16's largest value (65504) and its 11-bit mantissa
    stats.update(torch.tensor([65504.0, 60000.0, 1.0]), torch.tensor([3.0, 70000.0, 0.5]))
    stats.update(torch.tensor([3.0, 60000.0, 0.0]), torch.tensor([0.0, 70000.0, 0.25]))
    assert stats.pos_grad.dtype == torch.float64
    assert stats.pos_grad.tolist() == [65507.0, 120000.0, 1.0]
    assert stats.neg_grad.tolist() == [3.0, 140000.0, 0.75]
    # many small increments: 1200 steps of 100.25 (exact in binary) = 120300
    inc = torch.tensor([100.25, 0.0, 0.0], dtype=torch.float64)
    for _ in range(1200):
        stats.update(inc, inc)
    parent.half()
    assert float(stats.pos_grad[0]) == 65507.0 + 1200 * 100.25
    assert float(stats.neg_grad[0]) == 3.0 + 1200 * 100.25
    assert int(stats.num_updates) == 1202
    assert stats.num_updates.dtype == torch.int64
    state = parent.state_dict()
    assert float(state["1.pos_grad"][0]) == 185807.0
    assert torch.isfinite(stats.grad_ratio).all()


def test_counter_beyond_float16_range_is_exact() -> None:
    stats = GradientStatistics(C, 1.0)
    stats.num_updates.fill_(70001)
    parent = nn.Sequential(nn.Linear(2, 2), stats)
    parent.half()
    parent.type(torch.half)
    assert stats.num_updates.dtype == torch.int64
    assert int(stats.num_updates) == 70001
    stats.update(torch.ones(C), torch.ones(C))
    assert int(stats.num_updates) == 70002


# --------------------------------------------------------------------------------------
# the update protocol against a simulated second rank (no process group needed)


class _FakeOtherRank:
    """Stands in for ``dist.all_reduce``: adds another rank's packed
    [pos, neg, normaliser, samples, loss sum] (one sample, a finite loss)."""

    def __init__(self, pos: list[float], neg: list[float], norm: float) -> None:
        self.other = torch.tensor([*pos, *neg, norm, 1.0, 0.0], dtype=torch.float64)
        self.groups: list[object] = []

    def __call__(self, tensor: torch.Tensor, op=None, group=None, async_op=False) -> None:
        assert op == dist.ReduceOp.SUM
        assert tensor.dtype == torch.float64
        self.groups.append(group)
        tensor += self.other


@pytest.fixture
def fake_rank(monkeypatch: pytest.MonkeyPatch):
    def install(pos: list[float], neg: list[float], norm: float) -> _FakeOtherRank:
        fake = _FakeOtherRank(pos, neg, norm)
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "all_reduce", fake)
        return fake

    return install


def test_sums_over_ranks_then_divides_by_summed_normaliser(fake_rank) -> None:
    fake = fake_rank([3.0, 0.0, 1.0], [5.0, 4.0, 2.0], 6.0)
    group = object()
    stats = GradientStatistics(C, 1.0, process_group=group)
    accepted = stats.update(
        torch.tensor([1.0, 2.0, 0.0]), torch.tensor([3.0, 0.0, 6.0]), torch.tensor(2.0)
    )
    assert bool(accepted)
    assert fake.groups == [group]
    # (local + other) / (2 + 6), not local / 2 + other / 6
    assert torch.equal(stats.pos_grad, torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64) / 8)
    assert torch.equal(stats.neg_grad, torch.tensor([8.0, 4.0, 8.0], dtype=torch.float64) / 8)
    assert int(stats.num_updates) == 1


def test_empty_local_batch_takes_the_other_ranks_step(fake_rank) -> None:
    fake_rank([3.0, 0.0, 1.0], [5.0, 4.0, 2.0], 4.0)
    stats = GradientStatistics(C, 100.0)
    stats.update(torch.zeros(C), torch.zeros(C), torch.tensor(0.0))
    assert torch.equal(stats.pos_grad, torch.tensor([0.75, 0.0, 0.25], dtype=torch.float64))
    assert int(stats.num_updates) == 1


def test_unnormalised_statistics_sum_over_ranks(fake_rank) -> None:
    # normaliser None: the summed "normaliser" slot is ignored, nothing is divided
    fake_rank([3.0, 0.0, 1.0], [5.0, 4.0, 2.0], 1.0)
    stats = GradientStatistics(C, 100.0)
    stats.update(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert torch.equal(stats.pos_grad, torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.equal(stats.neg_grad, torch.tensor([6.0, 5.0, 3.0], dtype=torch.float64))


def test_non_finite_loss_on_the_other_rank_drops_the_step_here(fake_rank) -> None:
    stats = _filled()
    before = _snapshot(stats)
    fake = fake_rank([3.0, 0.0, 1.0], [5.0, 4.0, 2.0], 4.0)
    fake.other[-1] = float("inf")  # that rank's loss was not finite
    assert not bool(stats.update(torch.ones(C), torch.ones(C), 2.0, loss=torch.tensor(0.5)))
    _assert_unchanged(stats, before)


@pytest.mark.parametrize("where", ["pos", "neg", "norm"])
def test_non_finite_on_the_other_rank_drops_the_step_here(fake_rank, where: str) -> None:
    pos, neg, norm = [3.0, 0.0, 1.0], [5.0, 4.0, 2.0], 4.0
    if where == "pos":
        pos[0] = float("nan")
    elif where == "neg":
        neg[2] = float("inf")
    else:
        norm = float("inf")
    stats = _filled()
    before = _snapshot(stats)
    fake_rank(pos, neg, norm)
    accepted = stats.update(torch.ones(C), torch.ones(C), torch.tensor(2.0))
    assert not bool(accepted)
    _assert_unchanged(stats, before)
