"""The native CPU kernel of the softmax losses (csrc/softmax_rows.cpp) against the plain
formula of reference_losses.py and against the PyTorch-operation path it stands in for."""

import warnings

import pytest
import torch
from reference_losses import RefSoftmaxEQL, close, cross_entropy_ref, skewed_labels, split_by_target

from eqlosses import SoftmaxEQL
from eqlosses.functional import _native, softmax_eql
from eqlosses.functional.softmax import cross_entropy_blocks

STEPS = 4


@pytest.fixture(scope="module")
def kernel():
    built = _native.softmax_rows_kernel()
    assert built is not None, (
        "the native kernel did not build: the test environment needs ninja and g++ "
        f"(or set {_native.NATIVE_ENVIRONMENT_VARIABLE}=0 to run without it)"
    )
    return built


@pytest.fixture
def calls(kernel, monkeypatch):
    """How many times the native kernel ran in the test."""
    count = []

    def counted(*args):
        count.append(1)
        return kernel(*args)

    monkeypatch.setitem(_native._STATE, "kernel", counted)
    return count


@pytest.fixture
def torch_path(monkeypatch):
    """Run the losses on PyTorch operations only."""
    monkeypatch.setitem(_native._STATE, "kernel", None)


def labels(n, columns, gen):
    return skewed_labels(n, columns, gen, background=0.0, ignore=0.0)


def batch(shape, gen, scale=3.0):
    """Float64 logits of ``shape`` ((N, C) or channels first (N, C, ...)) and their labels."""
    logits = scale * torch.randn(shape, generator=gen, dtype=torch.float64)
    rows_shape = (shape[0], *shape[2:])
    return logits, labels(int(torch.tensor(rows_shape).prod()), shape[1], gen).view(rows_shape)


# (N, C) rows, and channels-first images whose positions cross a tile (256 positions for
# few classes) and the vector lanes
SHAPES = [(30, 5), (30, 17), (2, 5, 3, 3), (3, 3, 17, 19)]


# ------------------------------------------------------------- against the formula
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(30, 1), (30, 81), *SHAPES])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("rows_kind", ["every_row", "weighted_and_ignored"])
def test_stream_matches_reference(calls, dtype, shape, reduction, rows_kind):
    """Several steps of the module (its adjustment follows its statistics); the widths
    cross the vector lengths (8 and 16 float32 lanes), so the scalar tails run too. With
    weights and ignored rows, the rows that do not count (ignored, or weight 0) hold
    non-finite logits, which must reach nothing."""
    gen = torch.Generator().manual_seed(shape[1])
    module = SoftmaxEQL(shape[1], loss_weight=0.7, reduction=reduction)
    ref = RefSoftmaxEQL(shape[1], loss_weight=0.7, reduction=reduction)
    rows = (shape[0], *shape[2:])
    for _ in range(STEPS):
        logits, target = batch(shape, gen)
        weight = None
        x = logits.to(dtype)
        if rows_kind == "weighted_and_ignored":
            weight = 0.5 + torch.rand(rows, generator=gen, dtype=torch.float64)
            flat_target, flat_weight = target.view(-1), weight.view(-1)
            flat_target[1::7] = -100
            flat_weight[3::7] = 0.0
            dropped = (target == -100) | (weight == 0)
            class_last = x.movedim(1, -1)  # a view: writes reach x
            class_last[dropped] = float("nan")
            class_last[dropped.nonzero()[:1].unbind(1)] = float("inf")
            weight = weight.to(dtype)
        x.requires_grad_(True)
        loss = module(x, target, weight)
        loss.backward(torch.ones_like(loss))
        clean = torch.nan_to_num(x.detach().double(), nan=0.0, posinf=0.0)
        ref_loss, ref_grad = ref.step(clean, target, None if weight is None else weight.double())
        assert loss.dtype == dtype and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        stats_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        close(module.pos_grad, ref.pos, stats_dtype)
        close(module.neg_grad, ref.neg, stats_dtype)
    assert len(calls) == STEPS


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_adjustment", [True, False])
@pytest.mark.parametrize("shape", [(9, 19), (2, 19, 3, 2)])
def test_gradcheck_and_increments(calls, reduction, with_adjustment, shape):
    gen = torch.Generator().manual_seed(3)
    logits, target = batch(shape, gen, scale=2.0)
    adjustment = torch.linspace(-9.2, 0.7, 19, dtype=torch.float64) if with_adjustment else None
    logits.requires_grad_(True)

    def run(z):
        return cross_entropy_blocks(
            z, target, num_classes=19, adjustment=adjustment, entry_adjustment=None,
            weight=None, reduction=reduction, ignore_index=-100, label_smoothing=0.0,
            validate=True,
        )  # fmt: skip

    assert torch.autograd.gradcheck(lambda z: run(z).loss, (logits,))
    out = run(logits)
    ref_loss, t = cross_entropy_ref(logits, target, adjustment, reduction=reduction)
    close(out.loss, ref_loss, torch.float64)
    sum_loss, _ = cross_entropy_ref(logits, target, adjustment, reduction="sum")
    (grad,) = torch.autograd.grad(sum_loss, logits)
    pos, neg = split_by_target(grad.movedim(1, -1).reshape(-1, 19), t)
    close(out.pos_increment, pos, torch.float64)
    close(out.neg_increment, neg, torch.float64)
    assert len(calls) > 0


# ------------------------------------------------------- against the PyTorch path
def _outputs(logits, target, adjustment, reduction):
    x = logits.clone().requires_grad_(True)
    out = softmax_eql(x, target, adjustment, reduction=reduction)
    out.loss.backward(torch.ones_like(out.loss))
    return out.loss.detach(), x.grad, out.pos_increment, out.neg_increment


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 1),
        (3, 7),
        (64, 16),
        (33, 1000),
        (300, 81),
        (1, 1, 1, 1),
        (2, 12, 18, 24),
        (2, 150, 5, 7),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_native_equals_the_pytorch_path(kernel, monkeypatch, dtype, shape, reduction):
    gen = torch.Generator().manual_seed(sum(shape))
    logits, target = batch(shape, gen, scale=4.0)
    logits = logits.to(dtype)
    adjustment = torch.log(torch.rand(shape[1], generator=gen, dtype=torch.float64) + 1e-4)
    monkeypatch.setitem(_native._STATE, "kernel", None)
    expected = _outputs(logits, target, adjustment, reduction)
    monkeypatch.setitem(_native._STATE, "kernel", kernel)
    actual = _outputs(logits, target, adjustment, reduction)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        else:
            torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(500, 37), (3, 37, 20, 30)])
def test_result_does_not_depend_on_the_thread_count(calls, shape):
    gen = torch.Generator().manual_seed(5)
    logits, target = batch(shape, gen)
    logits = logits.float()
    adjustment = torch.randn(37, generator=gen, dtype=torch.float64)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_outputs(logits, target, adjustment, "mean"))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)
    assert len(calls) == 3


# ------------------------------------------------------------------ edge values
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("below", [0.0, 75.0, 120.0])
def test_a_target_far_below_the_rows_maximum_keeps_an_exact_loss(calls, dtype, below):
    """log Σ exp(z̃ - max) - (z̃_t - max): exact where p_t itself underflows."""
    logits = torch.zeros(4, 21, dtype=torch.float64)
    logits[:, 3] = 100.0
    logits[:, 7] = 100.0 - below
    target = torch.full((4,), 7)
    x = logits.to(dtype).requires_grad_(True)
    out = softmax_eql(x, target, torch.zeros(21, dtype=torch.float64))
    out.loss.backward()
    ref_loss, _ = cross_entropy_ref(logits, target)
    close(out.loss, ref_loss, dtype)
    assert float(out.loss.detach()) > below - 1e-3
    assert torch.isfinite(x.grad).all() and torch.isfinite(out.neg_increment).all()
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 2, 3)])
def test_a_non_finite_logit_gives_a_non_finite_loss_and_a_dropped_step(calls, bad, shape):
    """As on the PyTorch path: the loss shows the bad logit and the statistics skip the step."""
    gen = torch.Generator().manual_seed(8)
    module = SoftmaxEQL(5)
    logits, target = batch(shape, gen)
    logits = logits.float()
    module(logits, target)  # one accepted step
    pos, neg = module.pos_grad.clone(), module.neg_grad.clone()
    if logits.dim() == 2:
        logits[2] = bad
    else:
        logits[1, :, 0, 2] = bad
    loss = module(logits.requires_grad_(True), target)
    assert not torch.isfinite(loss)
    assert torch.equal(module.pos_grad, pos) and torch.equal(module.neg_grad, neg)
    assert int(module.statistics.num_updates) == 1
    assert len(calls) == 2


def test_the_kernel_refuses_a_label_outside_the_row(kernel):
    """The losses hand it checked labels only (unchecked ones take the PyTorch path, whose
    indexing raises); the kernel checks them anyway, so a bad one cannot reach memory
    outside the row."""
    logits, grad = torch.randn(4, 5), torch.empty(4, 5)
    for bad in (5, -1):
        with pytest.raises(RuntimeError, match=rf"target: expected labels in \[0, 4\], got {bad}"):
            kernel(logits, None, torch.tensor([0, bad, 2, 3]), None, None, 1.0, grad)


# ------------------------------------------------------------------ which path
@pytest.mark.parametrize(
    "case",
    ["label_smoothing", "soft_target", "transposed"],
)
def test_calls_it_does_not_cover_take_the_pytorch_path(calls, case):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(8, 5, generator=gen)
    target = labels(8, 5, gen)
    adjustment = torch.zeros(5, dtype=torch.float64)
    options = {}
    if case == "label_smoothing":
        options["label_smoothing"] = 0.1
    elif case == "soft_target":
        target = torch.softmax(torch.randn(8, 5, generator=gen), 1)
    else:
        logits = torch.randn(5, 8, generator=gen).t()
    out = softmax_eql(logits, target, adjustment, **options)
    assert torch.isfinite(out.loss)
    assert calls == []


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, torch_path):
    gen = torch.Generator().manual_seed(6)
    logits, target = torch.randn(10, 4, generator=gen), labels(10, 4, gen)
    adjustment = torch.zeros(4, dtype=torch.float64)
    expected = softmax_eql(logits, target, adjustment)

    def no_compiler():
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.delitem(_native._STATE, "kernel")
    monkeypatch.setattr(_native, "_build", no_compiler)
    with pytest.warns(RuntimeWarning, match="pip install ninja"):
        first = softmax_eql(logits, target, adjustment)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = softmax_eql(logits, target, adjustment)
    for out in (first, second):
        assert torch.equal(out.loss, expected.loss)
        assert torch.equal(out.neg_increment, expected.neg_increment)


def test_the_environment_variable_turns_it_off(monkeypatch, torch_path):
    def must_not_build():
        raise AssertionError("built although EQLOSSES_NATIVE=0")

    monkeypatch.delitem(_native._STATE, "kernel")
    monkeypatch.setattr(_native, "_build", must_not_build)
    monkeypatch.setenv(_native.NATIVE_ENVIRONMENT_VARIABLE, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = softmax_eql(torch.randn(3, 4), torch.tensor([0, 1, 3]), torch.zeros(4))
    assert torch.isfinite(out.loss)
    assert _native._STATE["kernel"] is None
