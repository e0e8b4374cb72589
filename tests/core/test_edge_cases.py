"""The edges of every public loss: second derivatives, dropped rows (ignored or weighing 0)
holding anything, inputs that must not carry gradients, failed calls that change nothing,
and the errors of odd arguments."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from loss_cases import Case, loss_cases
from torch import nn

from eqlosses import (
    EQL,
    BalancedSoftmax,
    EqualizedFocalLoss,
    EqualizedQualityFocalLoss,
    FederatedLoss,
    FocalLoss,
    SeesawLoss,
    SigmoidEQL,
    SoftmaxEQL,
    functional,
)

C = 5
N = 12
COUNTS = [400, 90, 30, 6, 1]
IGNORE = -100


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# the per-pixel layout has no edge of its own here; Softmax-EQL's τ = 0 (plain
# cross-entropy) does
CASES = {
    name: case
    for name, case in loss_cases(
        COUNTS, num_images=500, drop_prob=0.5, sample_classes=3, generator=lambda: _seeded(3)
    ).items()
    if not case.pixels
} | {"softmax_eql_tau0": Case(lambda: SoftmaxEQL(C, tau=0.0), C, C - 1)}
NAMES = list(CASES)


def _labels(case: Case, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, case.highest_label + 1, (N,), generator=gen)


def _extra(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.rand(N, generator=gen, dtype=torch.float64),) if case.scored else ()


def _logits(case: Case, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(N, case.columns, generator=gen, dtype=torch.float64)


def _state(module: nn.Module) -> dict[str, object]:
    return {
        key: value.clone() if isinstance(value, torch.Tensor) else value
        for key, value in module.state_dict().items()
    }


def _assert_state_equal(module: nn.Module, before: dict[str, object]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, before[key]), key  # type: ignore[arg-type]


def _step(
    module: nn.Module,
    logits: torch.Tensor,
    labels: torch.Tensor,
    *extra: torch.Tensor,
    **kw: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.clone().requires_grad_()
    loss = module(z, labels, *extra, **kw)
    loss.backward()
    assert z.grad is not None
    return loss.detach(), z.grad


# --------------------------------------------------------------------- second derivatives


@pytest.mark.parametrize("name", NAMES)
def test_a_gradient_penalty_raises_instead_of_a_silent_zero(name: str) -> None:
    case = CASES[name]
    gen = _seeded(1)
    logits, labels, extra = _logits(case, gen), _labels(case, gen), _extra(case, gen)
    z = logits.clone().requires_grad_()
    (first,) = torch.autograd.grad(case.build()(z, labels, *extra), z, create_graph=True)
    # the first derivative itself is right with create_graph=True
    _, plain = _step(case.build(), logits, labels, *extra)
    torch.testing.assert_close(first.detach(), plain)
    with pytest.raises(RuntimeError, match="second derivatives"):
        first.pow(2).sum().backward()


@pytest.mark.parametrize("name", ["softmax_eql_tau0", "sigmoid_eql", "efl", "focal", "eql"])
def test_a_hessian_vector_product_raises(name: str) -> None:
    case = CASES[name]
    gen = _seeded(2)
    logits, labels = _logits(case, gen), _labels(case, gen)
    module = case.build()
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.functional.hvp(lambda z: module(z, labels), logits, torch.ones_like(logits))


def test_plain_cross_entropy_does_have_a_hessian() -> None:
    # what the error stands in for: a true Hessian-vector product that is not zero
    gen = _seeded(2)
    logits = torch.randn(N, C, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, C, (N,), generator=gen)
    _, product = torch.autograd.functional.hvp(
        lambda z: F.cross_entropy(z, labels), logits, torch.randn(N, C, generator=gen).double()
    )
    assert product.abs().sum() > 0


@pytest.mark.parametrize("name", ["sigmoid_eql", "softmax_eql", "efl"])
def test_backward_twice_through_a_retained_graph(name: str) -> None:
    case = CASES[name]
    gen = _seeded(4)
    logits, labels = _logits(case, gen), _labels(case, gen)
    z = logits.clone().requires_grad_()
    loss = case.build()(z, labels)
    loss.backward(retain_graph=True)
    once = z.grad.clone()
    loss.backward()
    torch.testing.assert_close(z.grad, 2 * once, rtol=0, atol=0)


@pytest.mark.parametrize("upstream", [0.0, -2.5, 3.0])
@pytest.mark.parametrize("name", NAMES)
def test_scalar_upstream_gradient_scales_the_gradient(name: str, upstream: float) -> None:
    """On the CPU backward skips its multiply when the upstream gradient is 1
    (``loss.backward()``): any other value must still scale the gradient."""
    case = CASES[name]
    gen = _seeded(5)
    logits, labels = _logits(case, gen), _labels(case, gen)
    extra = _extra(case, gen)
    gradients = []
    for scale in (1.0, upstream):
        torch.manual_seed(0)
        z = logits.clone().requires_grad_()
        loss = case.build()(z, labels, *extra)
        loss.backward(torch.tensor(scale, dtype=loss.dtype))
        gradients.append(z.grad)
    assert gradients[0].abs().sum() > 0
    torch.testing.assert_close(gradients[1], upstream * gradients[0], rtol=0, atol=0)


# ------------------------------------------------------------------- dropped rows


def _weighted_and_ignored(
    case: Case, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels, weights with zeros at some rows, and the same batch with those rows
    labelled ignore_index instead (their weights arbitrary)."""
    labels = _labels(case, gen)
    weight = 0.5 + torch.rand(N, generator=gen, dtype=torch.float64)
    dropped = torch.tensor([1, 4, 5, 9])
    zero_weight = weight.clone()
    zero_weight[dropped] = 0.0
    ignored = labels.clone()
    ignored[dropped] = IGNORE
    weight[dropped] = 7.0
    return labels, zero_weight, ignored, weight


@pytest.mark.parametrize("name", NAMES)
def test_zero_weight_rows_are_exactly_ignored_rows(name: str) -> None:
    case = CASES[name]
    by_weight, by_label = case.build(), case.build()
    gen = _seeded(5)
    for _ in range(3):
        logits, extra = _logits(case, gen), _extra(case, gen)
        labels, zero_weight, ignored, weight = _weighted_and_ignored(case, gen)
        got = _step(by_weight, logits, labels, *extra, weight=zero_weight)
        want = _step(by_label, logits, ignored, *extra, weight=weight)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
        _assert_state_equal(by_weight, _state(by_label))


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_of_zero_weights_is_no_statistics_step(name: str) -> None:
    case = CASES[name]
    module = case.build()
    before = _state(module)
    gen = _seeded(6)
    loss, grad = _step(
        module,
        _logits(case, gen),
        _labels(case, gen),
        *_extra(case, gen),
        weight=torch.zeros(N, dtype=torch.float64),
    )
    assert float(loss) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    if isinstance(module, SeesawLoss | FederatedLoss | EQL):
        return  # their random or counted state is checked elsewhere
    _assert_state_equal(module, before)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("how", ["ignore_index", "zero_weight"])
@pytest.mark.parametrize("name", NAMES)
def test_dropped_rows_holding_non_finite_logits_change_nothing(
    name: str, how: str, value: float
) -> None:
    case = CASES[name]
    finite, poisoned = case.build(), case.build()
    gen = _seeded(7)
    for _ in range(2):
        logits, extra = _logits(case, gen), _extra(case, gen)
        labels, zero_weight, ignored, _ = _weighted_and_ignored(case, gen)
        rows = torch.tensor([1, 4, 5, 9])
        bad = logits.clone()
        bad[rows] = value
        kw = {"weight": zero_weight} if how == "zero_weight" else {}
        target = labels if how == "zero_weight" else ignored
        want_loss, want_grad = _step(finite, logits, target, *extra, **kw)
        got_loss, got_grad = _step(poisoned, bad, target, *extra, **kw)
        assert torch.equal(got_loss, want_loss)
        assert torch.equal(got_grad, want_grad)
        assert torch.equal(got_grad[rows], torch.zeros_like(got_grad[rows]))
        _assert_state_equal(poisoned, _state(finite))


def test_ignored_rows_with_nan_logits_match_cross_entropy() -> None:
    gen = _seeded(8)
    logits = torch.randn(N, C, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, C, (N,), generator=gen)
    labels[[2, 7]] = IGNORE
    want = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    logits[[2, 7]] = math.nan
    got = SoftmaxEQL(C, ignore_index=IGNORE)(logits, labels)
    torch.testing.assert_close(got, want)


# ------------------------------------------------- inputs that must not require grad


def test_weight_that_requires_grad_is_refused() -> None:
    gen = _seeded(9)
    for name in NAMES:
        case = CASES[name]
        weight = torch.ones(N, dtype=torch.float64, requires_grad=True)
        module = case.build()
        before = _state(module)
        with pytest.raises(ValueError, match=r"^weight: .*requires grad"):
            module(_logits(case, gen), _labels(case, gen), *_extra(case, gen), weight=weight)
        _assert_state_equal(module, before)
        with torch.no_grad():  # nothing is differentiated there: fine
            module(_logits(case, gen), _labels(case, gen), *_extra(case, gen), weight=weight)


def test_quality_score_that_requires_grad_is_refused() -> None:
    gen = _seeded(10)
    case = CASES["eqfl"]
    score = torch.rand(N, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^score: .*requires grad.*score\.detach\(\)"):
        case.build()(_logits(case, gen), _labels(case, gen), score)


@pytest.mark.parametrize(
    "build", [lambda: SigmoidEQL(C), lambda: SoftmaxEQL(C)], ids=["multi-hot", "soft"]
)
def test_float_targets_that_require_grad_are_refused(build: Callable[[], nn.Module]) -> None:
    target = torch.rand(N, C, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^target: .*requires grad"):
        build()(torch.randn(N, C, dtype=torch.float64), target)


# ---------------------------------------------------------- a failed call changes nothing


BAD_CALLS: dict[str, Callable[[Case, torch.Generator], dict[str, object]]] = {
    "weight shape": lambda case, gen: {"weight": torch.ones(N + 1, dtype=torch.float64)},
    "negative weight": lambda case, gen: {"weight": -torch.ones(N, dtype=torch.float64)},
    "integer weight": lambda case, gen: {"weight": torch.ones(N, dtype=torch.long)},
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
@pytest.mark.parametrize("name", NAMES)
def test_a_call_that_raises_changes_no_state(name: str, bad: str) -> None:
    case = CASES[name]
    module = case.build()
    gen = _seeded(11)
    _step(module, _logits(case, gen), _labels(case, gen), *_extra(case, gen))  # some state
    before = _state(module)
    with pytest.raises(ValueError, match=r"^weight:"):
        module(
            _logits(case, gen), _labels(case, gen), *_extra(case, gen), **BAD_CALLS[bad](case, gen)
        )
    _assert_state_equal(module, before)


def test_seesaw_counts_only_after_a_successful_call() -> None:
    module = SeesawLoss(C)
    labels = torch.tensor([0, 1, 1, 2, 3, 4, 0, 0, 0, 1, 2, 2])
    with pytest.raises(ValueError, match=r"^weight:"):
        module(torch.randn(N, C), labels, weight=torch.ones(3))
    assert torch.equal(module.class_counts, torch.zeros(C, dtype=torch.float64))
    module(torch.randn(N, C), labels)
    assert module.class_counts.tolist() == [4.0, 3.0, 3.0, 1.0, 1.0]


# ------------------------------------------------------------------------ odd arguments


@pytest.mark.parametrize("value", [2.5, True, "4", 0, -3, None])
@pytest.mark.parametrize(
    "build",
    [SigmoidEQL, SoftmaxEQL, EqualizedFocalLoss, EqualizedQualityFocalLoss, FocalLoss, SeesawLoss],
)
def test_num_classes_must_be_a_positive_integer(
    build: Callable[..., nn.Module], value: object
) -> None:
    with pytest.raises(ValueError, match=r"^num_classes: expected an integer"):
        build(value)


NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    ("argument", "build"),
    [
        ("tau", lambda v: SoftmaxEQL(C, tau=v)),
        ("eps", lambda v: SoftmaxEQL(C, eps=v)),
        ("gamma", lambda v: SigmoidEQL(C, gamma=v)),
        ("mu", lambda v: SigmoidEQL(C, mu=v)),
        ("alpha", lambda v: SigmoidEQL(C, alpha=v)),
        ("gamma_b", lambda v: EqualizedFocalLoss(C, gamma_b=v)),
        ("scale", lambda v: EqualizedFocalLoss(C, scale=v)),
        ("scale", lambda v: EqualizedQualityFocalLoss(C, scale=v)),
        ("alpha", lambda v: EqualizedFocalLoss(C, alpha=v)),
        ("threshold", lambda v: EQL(COUNTS, 500, v)),
        ("loss_weight", lambda v: SigmoidEQL(C, loss_weight=v)),
        ("loss_weight", lambda v: SoftmaxEQL(C, loss_weight=v)),
        ("loss_weight", lambda v: EqualizedFocalLoss(C, loss_weight=v)),
        ("loss_weight", lambda v: EQL(COUNTS, 500, 0.1, loss_weight=v)),
        ("loss_weight", lambda v: SeesawLoss(C, loss_weight=v)),
        ("gamma", lambda v: FocalLoss(C, gamma=v)),
        ("tau", lambda v: BalancedSoftmax(COUNTS, tau=v)),
        ("p", lambda v: SeesawLoss(C, p=v)),
    ],
)
def test_non_finite_hyper_parameters_are_refused(
    argument: str, build: Callable[[float], nn.Module], value: float
) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: expected a finite number"):
        build(value)


@pytest.mark.parametrize(
    ("argument", "build"),
    [
        ("label_smoothing", lambda: SoftmaxEQL(C, label_smoothing=1.5)),
        ("label_smoothing", lambda: BalancedSoftmax(COUNTS, label_smoothing=-0.1)),
        ("drop_prob", lambda: EQL(COUNTS, 500, 0.1, activation="softmax", drop_prob=2.0)),
        ("loss_weight", lambda: SoftmaxEQL(C, loss_weight=-1.0)),
        ("objectness", lambda: SigmoidEQL(C, objectness="yes")),  # type: ignore[arg-type]
        ("generator", lambda: FederatedLoss(COUNTS, generator=0)),  # type: ignore[arg-type]
        ("ignore_index", lambda: SoftmaxEQL(C, ignore_index=2.5)),  # type: ignore[arg-type]
    ],
)
def test_out_of_range_options_are_refused_when_the_loss_is_built(
    argument: str, build: Callable[[], nn.Module]
) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        build()


@pytest.mark.parametrize("name", NAMES)
def test_python_lists_are_refused_by_name(name: str) -> None:
    case = CASES[name]
    gen = _seeded(12)
    logits, labels, extra = _logits(case, gen), _labels(case, gen), _extra(case, gen)
    module = case.build()
    with pytest.raises(ValueError, match=r"^logits: expected a torch.Tensor, got list"):
        module(logits.tolist(), labels, *extra)
    with pytest.raises(ValueError, match=r"^target: expected a torch.Tensor, got list"):
        module(logits, labels.tolist(), *extra)


@pytest.mark.parametrize("avg_factor", [torch.tensor([3.0, 4.0]), torch.tensor([])])
def test_avg_factor_of_several_values(avg_factor: torch.Tensor) -> None:
    gen = _seeded(13)
    case = CASES["efl"]
    with pytest.raises(ValueError, match=r"^avg_factor: expected a number or a one-element"):
        case.build()(_logits(case, gen), _labels(case, gen), avg_factor=avg_factor)


@pytest.mark.parametrize("avg_factor", [0.0, -2.0, math.nan, math.inf, torch.tensor(0.0)])
def test_avg_factor_must_be_positive_and_finite(avg_factor: float | torch.Tensor) -> None:
    gen = _seeded(14)
    case = CASES["efl"]
    with pytest.raises(ValueError, match=r"^avg_factor: expected a finite number > 0"):
        case.build()(_logits(case, gen), _labels(case, gen), avg_factor=avg_factor)


def test_nan_quality_score_of_a_positive_is_refused() -> None:
    gen = _seeded(15)
    case = CASES["eqfl"]
    labels = torch.zeros(N, dtype=torch.long)  # every row a positive
    score = torch.rand(N, dtype=torch.float64)
    score[3] = math.nan
    with pytest.raises(ValueError, match=r"^score: expected values in \[0, 1\]"):
        case.build()(_logits(case, gen), labels, score)
    # a background row reads no score: NaN there is fine
    labels[3] = C
    case.build()(_logits(case, gen), labels, score)


@pytest.mark.parametrize("name", ["sigmoid_eql", "softmax_eql"])
def test_nan_float_targets_are_refused(name: str) -> None:
    target = torch.rand(N, C, dtype=torch.float64)
    target[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"^target: expected"):
        CASES[name].build()(torch.randn(N, C, dtype=torch.float64), target)


def test_functional_forms_refuse_non_finite_options() -> None:
    ratio = torch.ones(C, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^gamma:"):
        functional.sigmoid_eql_factors(ratio, gamma=math.nan)
    with pytest.raises(ValueError, match=r"^scale:"):
        functional.equalized_focal_factors(ratio, scale=math.inf)
    with pytest.raises(ValueError, match=r"^tau:"):
        functional.softmax_eql_adjustment(ratio, tau=math.nan)
    with pytest.raises(ValueError, match=r"^drop_prob:"):
        functional.eql_softmax(torch.randn(N, C), torch.zeros(N, dtype=torch.long), ratio, 1.5)
