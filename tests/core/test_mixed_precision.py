"""Mixed precision: autocast, low-precision logits, half models, extreme logits.

The losses compute in float32 whatever the logits' dtype, return the gradient in the
logits' dtype and keep float64 statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqlosses import EQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, SigmoidEQL, SoftmaxEQL

C = 5
FEATURES = 16
BATCH = 48
IMAGE_COUNTS = [800, 30, 5, 300, 2]
NUM_IMAGES = 1000


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    columns: int
    background: bool
    scored: bool = False


CASES = {
    "sigmoid_eql": Case(lambda: SigmoidEQL(C), C, True),
    "sigmoid_eql_objectness": Case(lambda: SigmoidEQL(C, objectness=True), C + 1, True),
    "softmax_eql": Case(lambda: SoftmaxEQL(C), C, False),
    "softmax_eql_prior": Case(lambda: SoftmaxEQL(C, form="prior"), C, False),
    "efl": Case(lambda: EqualizedFocalLoss(C), C, True),
    "eqfl": Case(lambda: EqualizedQualityFocalLoss(C), C, True, scored=True),
    "eql_sigmoid": Case(lambda: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05), C, True),
    "eql_softmax": Case(
        lambda: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, activation="softmax", drop_prob=1.0),
        C,
        False,
    ),
}
NAMES = list(CASES)
LOW = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _labels(case: Case, n: int, gen: torch.Generator) -> tuple[torch.Tensor, tuple]:
    if case.background:
        probs = torch.tensor([0.2, 0.1, 0.05, 0.1, 0.05, 0.5])
    else:
        probs = torch.tensor([0.4, 0.2, 0.1, 0.2, 0.1])
    labels = torch.multinomial(probs, n, replacement=True, generator=gen)
    extra: tuple[torch.Tensor, ...] = ()
    if case.scored:
        extra = (torch.rand(n, generator=gen),)
    return labels, extra


def _assert_stats_float64(criterion: nn.Module) -> None:
    stats = criterion.statistics
    assert stats.pos_grad.dtype == torch.float64
    assert stats.neg_grad.dtype == torch.float64
    assert stats.num_updates.dtype == torch.int64


# --------------------------------------------------------------------------------------
# autocast


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bfloat16_linear(name: str) -> None:
    case = CASES[name]
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(0)
    layer = nn.Linear(FEATURES, case.columns)
    crit32, crit_amp = case.build(), case.build()
    for _ in range(3):
        x = torch.randn(BATCH, FEATURES, generator=gen)
        labels, extra = _labels(case, BATCH, gen)

        logits32 = layer(x)
        logits32.retain_grad()
        loss32 = crit32(logits32, labels, *extra)
        loss32.backward()
        layer.zero_grad()

        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = layer(x)
            assert logits.dtype == torch.bfloat16
            logits.retain_grad()
            loss = crit_amp(logits, labels, *extra)
        assert torch.isfinite(loss).all()
        loss.backward()
        assert logits.grad is not None
        assert logits.grad.dtype == torch.bfloat16
        assert torch.isfinite(logits.grad).all()
        assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
        assert torch.isfinite(layer.weight.grad).all()
        layer.zero_grad()

        assert torch.allclose(loss.float(), loss32, rtol=2e-2, atol=1e-3)
        assert torch.allclose(logits.grad.float(), logits32.grad, rtol=5e-2, atol=2e-3)
        _assert_stats_float64(crit_amp)
        for attr in ("pos_grad", "neg_grad"):
            amp_value, ref_value = getattr(crit_amp, attr), getattr(crit32, attr)
            scale = float(ref_value.abs().max())
            assert torch.allclose(amp_value, ref_value, rtol=2e-2, atol=2e-3 * scale), attr
    assert int(crit_amp.statistics.num_updates) == 3


def _plain_and_autocast(name: str, dtype: str):
    """Three steps of the same low-precision logits through two fresh modules, one
    outside and one inside autocast; yields what each step gave."""
    case = CASES[name]
    gen = torch.Generator().manual_seed(12)
    plain, amp = case.build(), case.build()
    for _ in range(3):
        logits = (3.0 * torch.randn(BATCH * 8, case.columns, generator=gen)).to(LOW[dtype])
        labels, extra = _labels(case, BATCH * 8, gen)
        a = logits.clone().requires_grad_()
        b = logits.clone().requires_grad_()
        loss_plain = plain(a, labels, *extra)
        loss_plain.backward()
        with torch.autocast("cpu", dtype=LOW[dtype]):
            loss_amp = amp(b, labels, *extra)
        loss_amp.backward()
        yield plain, amp, a.grad, b.grad, loss_plain, loss_amp


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", NAMES)
def test_autocast_statistics_are_computed_in_float32(name: str, dtype: str) -> None:
    """The same low-precision logits give the same statistics and gradient inside and
    outside autocast: they are computed in float32 either way, not by the
    reduced-precision kernels autocast picks for ops such as matmul."""
    for plain, amp, grad_plain, grad_amp, _, _ in _plain_and_autocast(name, dtype):
        _assert_stats_float64(amp)
        assert torch.equal(amp.pos_grad, plain.pos_grad)
        assert torch.equal(amp.neg_grad, plain.neg_grad)
        assert torch.equal(grad_amp, grad_plain)


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", NAMES)
def test_autocast_does_not_change_the_loss(name: str, dtype: str) -> None:
    """The loss value does not depend on an enclosing autocast either: under autocast it
    comes back in float32 (like torch's own losses), outside in the logits' dtype, the
    same float32 value rounded."""
    for _, _, _, _, loss_plain, loss_amp in _plain_and_autocast(name, dtype):
        assert loss_amp.dtype == torch.float32
        assert loss_plain.dtype == LOW[dtype]
        assert torch.equal(loss_amp.to(loss_plain.dtype), loss_plain)


@pytest.mark.parametrize("name", NAMES)
def test_float16_autocast_survives_a_loss_scale_of_65536(name: str) -> None:
    """GradScaler starts at a scale of 65536 (2**16): ``scaler.scale(loss).backward()``
    must give finite logit gradients equal to 65536 x the unscaled ones, as it does
    for torch's own losses under autocast (their loss is float32, so the upstream
    gradient 65536 is not first rounded to float16, where it is inf)."""
    case = CASES[name]
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(BATCH, case.columns, generator=gen).half()
    labels, extra = _labels(case, BATCH, gen)
    scale = torch.tensor(65536.0)

    unscaled = logits.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = case.build()(unscaled, labels, *extra)
    loss.backward()

    scaled = logits.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = case.build()(scaled, labels, *extra)
    (loss * scale).backward()
    assert torch.isfinite(scaled.grad).all()
    want = unscaled.grad.float() * 65536.0
    assert torch.allclose(scaled.grad.float(), want, rtol=2e-3, atol=1e-2)


# --------------------------------------------------------------------------------------
# low-precision logits passed directly


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_logits_compute_in_float32(name: str, dtype: str) -> None:
    case = CASES[name]
    gen = torch.Generator().manual_seed(21)
    low_crit, ref_crit = case.build(), case.build()
    for _ in range(3):
        values = (3.0 * torch.randn(BATCH, case.columns, generator=gen)).to(LOW[dtype])
        labels, extra = _labels(case, BATCH, gen)
        low = values.clone().requires_grad_()
        ref = values.float().requires_grad_()  # the same values, in float32

        loss_low = low_crit(low, labels, *extra)
        loss_ref = ref_crit(ref, labels, *extra)
        assert torch.isfinite(loss_low).all()
        loss_low.backward()
        loss_ref.backward()

        assert low.grad.dtype == LOW[dtype]
        # one float32 computation, rounded once at the end
        assert torch.equal(low.grad, ref.grad.to(LOW[dtype]))
        assert torch.allclose(loss_low.float(), loss_ref, rtol=1e-2)
        # the statistics are those of the float32 run on the same values, exactly
        _assert_stats_float64(low_crit)
        assert torch.equal(low_crit.pos_grad, ref_crit.pos_grad)
        assert torch.equal(low_crit.neg_grad, ref_crit.neg_grad)
        assert torch.equal(low_crit.statistics.num_updates, ref_crit.statistics.num_updates)


@pytest.mark.parametrize("name", ["sigmoid_eql", "softmax_eql", "efl"])
def test_float16_small_gradients_do_not_underflow_in_statistics(name: str) -> None:
    """Entries whose gradient is below float16's smallest subnormal (~6e-8) still count:
    the statistics come from the float32 gradient, not from a float16 copy."""
    case = CASES[name]
    n = 64
    labels = torch.zeros(n, dtype=torch.long)  # every sample is class 0
    logits = torch.full((n, case.columns), -20.0)
    logits[:, 0] = 20.0  # confidently right: gradients ~ 2e-9 / n
    crit16, crit32 = case.build(), case.build()
    crit16(logits.half().requires_grad_(), labels)
    crit32(logits.float().requires_grad_(), labels)
    assert (crit32.neg_grad[1:] > 0).all()
    assert torch.equal(crit16.neg_grad, crit32.neg_grad)
    assert torch.equal(crit16.pos_grad, crit32.pos_grad)


# --------------------------------------------------------------------------------------
# a model cast with .half() that contains the loss


class _Net(nn.Module):
    def __init__(self, case: Case) -> None:
        super().__init__()
        self.body = nn.Linear(FEATURES, case.columns)
        self.criterion = case.build()

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *extra: torch.Tensor):
        return self.criterion(self.body(x), labels, *extra)


@pytest.mark.parametrize("cast", ["half", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_cast_model_containing_the_loss_keeps_float64_statistics(name: str, cast: str) -> None:
    case = CASES[name]
    gen = torch.Generator().manual_seed(31)
    torch.manual_seed(0)
    net = _Net(case)
    for _ in range(2):
        x = torch.randn(BATCH, FEATURES, generator=gen)
        labels, extra = _labels(case, BATCH, gen)
        net(x, labels, *extra).backward()
    before = {k: v.clone() for k, v in net.criterion.statistics.state_dict().items()}
    assert int(before["num_updates"]) == 2

    dtype = torch.float16 if cast == "half" else torch.bfloat16
    if cast == "half":
        net.half()
    else:
        net.to(torch.bfloat16)
    assert net.body.weight.dtype == dtype
    _assert_stats_float64(net.criterion)
    for key, value in before.items():
        assert torch.equal(net.criterion.statistics.state_dict()[key], value), key

    # a forward of the cast model updates the float64 statistics
    x = torch.randn(BATCH, FEATURES, generator=gen).to(dtype)
    labels, extra = _labels(case, BATCH, gen)
    loss = net(x, labels, *extra)
    assert torch.isfinite(loss).all()
    loss.backward()
    assert net.body.weight.grad.dtype == dtype
    _assert_stats_float64(net.criterion)
    assert int(net.criterion.statistics.num_updates) == 3
    assert torch.isfinite(net.criterion.pos_grad).all()
    assert torch.isfinite(net.criterion.neg_grad).all()
    # the statistics of the half step are its float32 computation on the half logits
    twin = case.build()
    twin.statistics.load_state_dict(before)
    twin(net.body(x).detach().float().requires_grad_(), labels, *extra)
    assert torch.equal(twin.pos_grad, net.criterion.pos_grad)
    assert torch.equal(twin.neg_grad, net.criterion.neg_grad)

    net.float()
    _assert_stats_float64(net.criterion)


def test_half_model_sum_beyond_float16_range() -> None:
    net = _Net(CASES["sigmoid_eql"])
    net.criterion.statistics.pos_grad.fill_(70000.5)
    net.criterion.statistics.num_updates.fill_(1)
    net.half()
    assert float(net.criterion.pos_grad[0]) == 70000.5
    assert math.isfinite(float(net.criterion.grad_ratio[0]))


# --------------------------------------------------------------------------------------
# extreme logits


def _extreme_logits(case: Case, labels: torch.Tensor, right: bool) -> torch.Tensor:
    """±60 everywhere: confidently right (``right``) or confidently wrong."""
    logits = torch.full((labels.shape[0], case.columns), -60.0)
    if case.columns == C + 1:  # objectness column: positive for background rows
        logits[:, C] = torch.where(labels == C, 60.0, -60.0)
    rows = torch.nonzero(labels < C).squeeze(1)
    logits[rows, labels[rows]] = 60.0
    return logits if right else -logits


@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_stay_finite(name: str, dtype: str, right: bool) -> None:
    case = CASES[name]
    gen = torch.Generator().manual_seed(41)
    labels, extra = _labels(case, 16, gen)
    criterion = case.build()
    for _ in range(2):
        logits = _extreme_logits(case, labels, right).to(LOW[dtype]).requires_grad_()
        loss = criterion(logits, labels, *extra)
        assert torch.isfinite(loss).all(), loss
        loss.backward()
        assert logits.grad.dtype == LOW[dtype]
        assert torch.isfinite(logits.grad).all()
    # both steps were accepted and the statistics are finite
    assert int(criterion.statistics.num_updates) == 2
    assert torch.isfinite(criterion.pos_grad).all()
    assert torch.isfinite(criterion.neg_grad).all()


@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
def test_efl_extreme_float16_logits_match_float64_formula(right: bool) -> None:
    """EFL at the initial factors (γ = 2, w = 1) is the sigmoid focal loss. In float16
    the reference's log(sigmoid(-60)) is log(0) = -inf; the loss here matches the
    float64 value of the formula."""
    case = CASES["efl"]
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 0, 5, 2])
    logits = _extreme_logits(case, labels, right)
    loss = EqualizedFocalLoss(C)(logits.half().requires_grad_(), labels)

    assert torch.isinf(torch.log(torch.sigmoid(torch.tensor(-60.0).half())))  # the trap
    z = logits.double()
    y = F.one_hot(labels, C + 1)[:, :C].double()
    log_pt = F.logsigmoid(torch.where(y > 0, z, -z))
    pt = log_pt.exp()
    alpha_t = torch.where(y > 0, 0.25, 0.75)
    want = -(alpha_t * (1 - pt) ** 2 * log_pt).sum() / int((labels < C).sum())
    assert torch.isfinite(loss)
    assert torch.allclose(loss.double(), want, rtol=2e-3, atol=1e-6)
