"""Input validation of every loss module, non-finite inputs and empty batches.

Each bad input raises a ValueError whose message names the argument and says what came
(the shape, the value, the dtype). ``validate=False`` skips only the checks that read
tensor values; shape checks always run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqlosses import (
    EQL,
    EqualizedFocalLoss,
    EqualizedQualityFocalLoss,
    SigmoidEQL,
    SoftmaxEQL,
    functional,
)

C = 4
N = 6
IMAGE_COUNTS = [800, 30, 5, 300]
NUM_IMAGES = 1000


@dataclass(frozen=True)
class Case:
    build: Callable[..., nn.Module]  # accepts keyword arguments of the module
    columns: int
    background: bool  # labels in [0, C] with C = background; else [0, C)
    scored: bool = False
    float_targets_allowed: bool = False

    @property
    def highest_label(self) -> int:
        return C if self.background else C - 1


CASES = {
    "sigmoid_eql": Case(lambda **kw: SigmoidEQL(C, **kw), C, True, float_targets_allowed=True),
    "sigmoid_eql_objectness": Case(
        lambda **kw: SigmoidEQL(C, objectness=True, **kw), C + 1, True, float_targets_allowed=True
    ),
    "softmax_eql": Case(lambda **kw: SoftmaxEQL(C, **kw), C, False, float_targets_allowed=True),
    "softmax_eql_prior": Case(
        lambda **kw: SoftmaxEQL(C, form="prior", **kw), C, False, float_targets_allowed=True
    ),
    "efl": Case(lambda **kw: EqualizedFocalLoss(C, **kw), C, True),
    "eqfl": Case(lambda **kw: EqualizedQualityFocalLoss(C, **kw), C, True, scored=True),
    "eql_sigmoid": Case(lambda **kw: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, **kw), C, True),
    "eql_softmax": Case(
        lambda **kw: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, activation="softmax", drop_prob=0.5, **kw),
        C,
        False,
    ),
}
NAMES = list(CASES)


def _good_labels(case: Case, n: int = N) -> torch.Tensor:
    return torch.arange(n) % (case.highest_label + 1)


def _extra(case: Case, n: int = N) -> tuple[torch.Tensor, ...]:
    return (torch.linspace(0.1, 0.9, n),) if case.scored else ()


def _logits(case: Case, n: int = N, columns: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n)
    cols = case.columns if columns is None else columns
    return torch.randn(n, cols, generator=gen).requires_grad_()


def _raises(call: Callable[[], object], *needles: str) -> str:
    """The call raises ValueError whose message contains every needle."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def _stats_snapshot(criterion: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in criterion.statistics.state_dict().items()}


def _assert_stats_equal(criterion: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in criterion.statistics.state_dict().items():
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------------------
# logits


@pytest.mark.parametrize("delta", [-1, 1])
@pytest.mark.parametrize("name", NAMES)
def test_logit_columns_must_match(name: str, delta: int) -> None:
    case = CASES[name]
    criterion = case.build()
    logits = _logits(case, columns=case.columns + delta)
    _raises(
        lambda: criterion(logits, _good_labels(case), *_extra(case)),
        "logits",
        str(tuple(logits.shape)),
    )
    assert int(criterion.statistics.num_updates) == 0


def test_objectness_needs_the_extra_column() -> None:
    labels = _good_labels(CASES["sigmoid_eql"])
    # C columns where C + 1 are expected, and C + 1 where C are expected
    _raises(lambda: SigmoidEQL(C, objectness=True)(torch.randn(N, C), labels), "logits", "(6, 4)")
    _raises(lambda: SigmoidEQL(C)(torch.randn(N, C + 1), labels), "logits", "(6, 5)")


@pytest.mark.parametrize("name", NAMES)
def test_logits_without_class_dimension(name: str) -> None:
    case = CASES[name]
    criterion = case.build()
    _raises(lambda: criterion(torch.randn(N), _good_labels(case), *_extra(case)), "logits")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("name", NAMES)
def test_integer_logits(name: str, dtype: torch.dtype) -> None:
    case = CASES[name]
    logits = torch.ones(N, case.columns, dtype=dtype)
    _raises(
        lambda: case.build()(logits, _good_labels(case), *_extra(case)),
        "logits",
        str(dtype),
    )


# --------------------------------------------------------------------------------------
# labels


@pytest.mark.parametrize("name", NAMES)
def test_label_too_high(name: str) -> None:
    case = CASES[name]
    bad = case.highest_label + 1
    labels = _good_labels(case)
    labels[3] = bad
    labels[1] = -100  # an ignored row is fine
    message = _raises(lambda: case.build()(_logits(case), labels, *_extra(case)), "target")
    assert re.search(rf"\bgot {bad}\b", message), message


@pytest.mark.parametrize("bad", [-1, -7, -99])
@pytest.mark.parametrize("name", NAMES)
def test_negative_label_other_than_ignore_index(name: str, bad: int) -> None:
    case = CASES[name]
    labels = _good_labels(case)
    labels[2] = bad
    labels[4] = -100
    criterion = case.build()
    message = _raises(lambda: criterion(_logits(case), labels, *_extra(case)), "target")
    assert re.search(rf"\bgot {bad}\b", message), message
    assert int(criterion.statistics.num_updates) == 0


@pytest.mark.parametrize("name", NAMES)
def test_custom_ignore_index(name: str) -> None:
    case = CASES[name]
    labels = _good_labels(case)
    labels[0] = 255
    case.build(ignore_index=255)(_logits(case), labels, *_extra(case))  # accepted
    message = _raises(lambda: case.build()(_logits(case), labels, *_extra(case)), "target")
    assert re.search(r"\bgot 255\b", message), message


@pytest.mark.parametrize("name", ["sigmoid_eql", "efl", "eqfl", "eql_sigmoid"])
def test_background_first_label_range(name: str) -> None:
    case = CASES[name]
    labels = torch.tensor([0, 1, 2, 3, 4, 0])  # 0 = background, classes 1..C
    case.build(background_index="first")(_logits(case), labels, *_extra(case))
    labels[5] = C + 1
    message = _raises(
        lambda: case.build(background_index="first")(_logits(case), labels, *_extra(case)),
        "target",
    )
    assert re.search(rf"\bgot {C + 1}\b", message), message


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("name", ["sigmoid_eql", "efl", "eqfl", "eql_sigmoid"])
def test_background_first_is_the_last_layout_shifted(name: str, validate: bool) -> None:
    case = CASES[name]
    last = torch.tensor([4, 0, 1, 2, 3, -100])  # C = 4 is background
    first = torch.tensor([0, 1, 2, 3, 4, -100])  # 0 is background, classes 1..C
    for labels in (last, last[:5]):  # with and without an ignored row
        shifted = first[: labels.numel()]
        logits = _logits(case, labels.numel())
        extra = _extra(case, labels.numel())
        want = case.build(validate=validate)(logits, labels, *extra)
        got = case.build(validate=validate, background_index="first")(logits, shifted, *extra)
        assert torch.allclose(got, want, rtol=1e-6), (got, want)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.float_targets_allowed])
def test_float_targets_where_labels_are_required(name: str) -> None:
    case = CASES[name]
    target = _good_labels(case).float()
    message = _raises(lambda: case.build()(_logits(case), target, *_extra(case)), "target")
    assert "float" in message.lower()


# --------------------------------------------------------------------------------------
# shapes of target, weight, score


@pytest.mark.parametrize("name", NAMES)
def test_target_shape_mismatch(name: str) -> None:
    case = CASES[name]
    for labels in (_good_labels(case, N + 1), _good_labels(case, N).reshape(2, 3)):
        _raises(
            lambda labels=labels: case.build()(_logits(case), labels, *_extra(case)),
            "target",
            str(tuple(labels.shape)),
        )


@pytest.mark.parametrize("name", ["sigmoid_eql", "sigmoid_eql_objectness", "softmax_eql"])
def test_float_target_shape_mismatch(name: str) -> None:
    case = CASES[name]
    target = torch.zeros(N, C + 2)
    _raises(lambda: case.build()(_logits(case), target), "target", str(tuple(target.shape)))


@pytest.mark.parametrize("name", NAMES)
def test_weight_shape_mismatch(name: str) -> None:
    case = CASES[name]
    weight = torch.ones(N + 2)
    criterion = case.build()
    if case.scored:
        call = lambda: criterion(_logits(case), _good_labels(case), *_extra(case), weight)  # noqa: E731
    else:
        call = lambda: criterion(_logits(case), _good_labels(case), weight)  # noqa: E731
    _raises(call, "weight", str(tuple(weight.shape)))


@pytest.mark.parametrize("shape", [(N + 1,), (N, 1), (N, C)])
def test_score_shape_mismatch(shape: tuple[int, ...]) -> None:
    case = CASES["eqfl"]
    score = torch.rand(shape)
    _raises(lambda: case.build()(_logits(case), _good_labels(case), score), "score", str(shape))


def test_score_out_of_range() -> None:
    case = CASES["eqfl"]
    score = torch.linspace(0.0, 1.5, N)
    _raises(lambda: case.build()(_logits(case), _good_labels(case), score), "score")
    # validate=False reads no values
    case.build(validate=False)(_logits(case), _good_labels(case), score)


# --------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("name", NAMES)
def test_unknown_reduction(name: str) -> None:
    _raises(lambda: CASES[name].build(reduction="avg"), "reduction", "'avg'")


@pytest.mark.parametrize(
    "call",
    [
        lambda: functional.sigmoid_eql(
            torch.randn(N, C),
            torch.zeros(N, dtype=torch.long),
            torch.ones(C),
            torch.ones(C),
            reduction="batchmean",
        ),
        lambda: functional.softmax_eql(
            torch.randn(N, C),
            torch.zeros(N, dtype=torch.long),
            torch.zeros(C),
            reduction="batchmean",
        ),
        lambda: functional.equalized_focal_loss(
            torch.randn(N, C),
            torch.zeros(N, dtype=torch.long),
            torch.full((C,), 2.0),
            torch.ones(C),
            reduction="batchmean",
        ),
    ],
    ids=["sigmoid_eql", "softmax_eql", "efl"],
)
def test_unknown_reduction_functional(call: Callable[[], object]) -> None:
    _raises(call, "reduction", "'batchmean'")


@pytest.mark.parametrize(
    "build, argument, value",
    [
        (lambda: SoftmaxEQL(C, indicator="both"), "indicator", "'both'"),
        (lambda: SoftmaxEQL(C, form="margin"), "form", "'margin'"),
        (lambda: SigmoidEQL(C, background_index="middle"), "background_index", "'middle'"),
        (lambda: EqualizedFocalLoss(C, background_index=0), "background_index", "got 0"),
        (lambda: EqualizedQualityFocalLoss(C, background_index="end"), "background_index", "end"),
        (
            lambda: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, background_index="middle"),
            "background_index",
            "'middle'",
        ),
        (lambda: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, activation="tanh"), "activation", "'tanh'"),
        (
            lambda: EQL(IMAGE_COUNTS, NUM_IMAGES, 0.05, activation="softmax"),
            "drop_prob",
            "None",
        ),
        (
            lambda: functional.softmax_eql_adjustment(torch.ones(C), form="margin"),
            "form",
            "'margin'",
        ),
        (
            lambda: functional.sigmoid_eql(
                torch.randn(N, C),
                torch.zeros(N, dtype=torch.long),
                torch.ones(C),
                torch.ones(C),
                background_index="middle",
            ),
            "background_index",
            "'middle'",
        ),
    ],
    ids=[
        "indicator",
        "form",
        "sigmoid_background_index",
        "efl_background_index",
        "eqfl_background_index",
        "eql_background_index",
        "activation",
        "eql_softmax_drop_prob",
        "functional_form",
        "functional_background_index",
    ],
)
def test_unknown_option_values(build: Callable[[], object], argument: str, value: str) -> None:
    _raises(build, argument, value)


# --------------------------------------------------------------------------------------
# validate=False


@pytest.mark.parametrize("name", ["sigmoid_eql", "sigmoid_eql_objectness", "efl", "eqfl"])
def test_validate_false_skips_the_value_check(name: str) -> None:
    case = CASES[name]
    labels = _good_labels(case)
    labels[3] = C + 3  # out of range; the kernels treat it as a row without a positive
    _raises(lambda: case.build()(_logits(case), labels, *_extra(case)), "target")
    criterion = case.build(validate=False)
    loss = criterion(_logits(case), labels, *_extra(case))
    assert torch.isfinite(loss)
    loss.backward()
    assert int(criterion.statistics.num_updates) == 1


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ignored", ["none", "ignore_index", "ignore_index_in_range"])
@pytest.mark.parametrize("name", NAMES)
def test_label_check_shortcut_matches_the_masked_path(
    name: str, ignored: str, weighted: bool
) -> None:
    # With validate=True a batch without ignored rows skips the per-row mask; with
    # validate=False the mask is always built. Both must train identically.
    case = CASES[name]
    ignore_index = 1 if ignored == "ignore_index_in_range" else -100
    modules = []
    for validate in (True, False):
        torch.manual_seed(0)  # the same random source for EQL's softmax draws
        modules.append(case.build(validate=validate, ignore_index=ignore_index).double())
    for step in range(3):
        labels = _good_labels(case)
        if ignored == "ignore_index":
            labels[step + 1] = -100
        weight = torch.linspace(0.5, 2.0, N, dtype=torch.float64) if weighted else None
        logits = _logits(case).detach().double()
        results = []
        for module in modules:
            z = logits.clone().requires_grad_()
            loss = module(z, labels, *_extra(case), weight=weight)
            loss.backward()
            results.append(
                (loss.detach(), z.grad, module.pos_grad.clone(), module.neg_grad.clone())
            )
        for got, want in zip(results[0], results[1], strict=True):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-15), (step, got, want)


def test_validate_false_skips_float_target_range_check() -> None:
    target = torch.full((N, C), 1.5)
    _raises(lambda: SigmoidEQL(C)(_logits(CASES["sigmoid_eql"]), target), "target")
    loss = SigmoidEQL(C, validate=False)(_logits(CASES["sigmoid_eql"]), target)
    assert loss.dim() == 0


@pytest.mark.parametrize("name", NAMES)
def test_validate_false_keeps_shape_checks(name: str) -> None:
    case = CASES[name]
    criterion = case.build(validate=False)
    logits = _logits(case, columns=case.columns + 1)
    _raises(
        lambda: criterion(logits, _good_labels(case), *_extra(case)),
        "logits",
        str(tuple(logits.shape)),
    )
    labels = _good_labels(case, N + 1)
    _raises(lambda: criterion(_logits(case), labels, *_extra(case)), "target", str((N + 1,)))
    integer = torch.ones(N, case.columns, dtype=torch.long)
    _raises(lambda: criterion(integer, _good_labels(case), *_extra(case)), "logits")
    assert int(criterion.statistics.num_updates) == 0


# --------------------------------------------------------------------------------------
# non-finite logits


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_logits_leave_statistics_unchanged(name: str, value: str) -> None:
    case = CASES[name]
    criterion = case.build()
    criterion(_logits(case), _good_labels(case), *_extra(case)).backward()
    before = _stats_snapshot(criterion)
    assert int(before["num_updates"]) == 1

    for row, col in ((0, 0), (3, 1)):
        logits = _logits(case).detach().clone()
        logits[row, col] = float(value)
        logits.requires_grad_()
        criterion(logits, _good_labels(case), *_extra(case))
        _assert_stats_equal(criterion, before)

    # still updating on the next finite batch
    criterion(_logits(case), _good_labels(case), *_extra(case))
    assert int(criterion.statistics.num_updates) == 2
    assert torch.isfinite(criterion.pos_grad).all()
    assert torch.isfinite(criterion.neg_grad).all()


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("name", ["sigmoid_eql", "efl"])
def test_non_finite_first_step_keeps_initial_ratio(name: str, value: str) -> None:
    case = CASES[name]
    criterion = case.build()
    initial = criterion.grad_ratio.clone()
    logits = _logits(case).detach().clone()
    logits[:, :] = float(value)
    criterion(logits.requires_grad_(), _good_labels(case), *_extra(case))
    assert int(criterion.statistics.num_updates) == 0
    assert torch.equal(criterion.grad_ratio, initial)


# --------------------------------------------------------------------------------------
# empty batches


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_zero_loss_with_gradient(name: str, reduction: str) -> None:
    case = CASES[name]
    criterion = case.build(reduction=reduction)
    logits = torch.zeros(0, case.columns, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    extra = (torch.zeros(0),) if case.scored else ()
    loss = criterion(logits, labels, *extra)
    assert loss.shape == ()
    assert loss.requires_grad
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None
    assert logits.grad.shape == (0, case.columns)
    assert torch.equal(criterion.pos_grad, torch.zeros(C, dtype=torch.float64))
    assert torch.equal(criterion.neg_grad, torch.zeros(C, dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_in_a_linear_model(name: str) -> None:
    case = CASES[name]
    layer = nn.Linear(3, case.columns)
    criterion = case.build()
    extra = (torch.zeros(0),) if case.scored else ()
    loss = criterion(layer(torch.zeros(0, 3)), torch.zeros(0, dtype=torch.long), *extra)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert layer.weight.grad is not None
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))


@pytest.mark.parametrize("name", NAMES)
def test_all_ignored_rows_give_zero_loss_and_gradient(name: str) -> None:
    case = CASES[name]
    logits = _logits(case)
    labels = torch.full((N,), -100)
    loss = case.build()(logits, labels, *_extra(case))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_empty_segmentation_batch() -> None:
    logits = torch.zeros(0, C, 5, 5, requires_grad=True)
    loss = SoftmaxEQL(C)(logits, torch.zeros(0, 5, 5, dtype=torch.long))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad.shape == (0, C, 5, 5)


def test_empty_batch_value_is_independent_of_ignored_rows() -> None:
    """A batch of real rows plus ignored rows gives the plain cross-entropy of the real
    rows (independent reference: F.cross_entropy)."""
    logits = _logits(CASES["softmax_eql"])
    labels = torch.tensor([0, -100, 2, -100, 3, 1])
    loss = SoftmaxEQL(C)(logits, labels)
    want = F.cross_entropy(logits.detach(), labels, ignore_index=-100)
    assert torch.allclose(loss, want, rtol=1e-6)
