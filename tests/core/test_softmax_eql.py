"""Softmax-EQL against the plain references of reference_losses.py (Tan et al., TPAMI)."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference_losses import (
    RefSoftmaxEQL,
    close,
    cross_entropy_ref,
    margin_form_ref,
    skewed_labels,
    softmax_eql_adjustment_ref,
    split_by_target,
)

import eqlosses.checks
from eqlosses import SoftmaxEQL
from eqlosses.functional import softmax as softmax_module
from eqlosses.functional import softmax_eql, softmax_eql_adjustment

C = 5
STEPS = 5
FLOATS = [torch.float64, torch.float32]


def batch(gen, layout, n=30):
    """Float64 logits, targets (labels with ignored rows, or soft targets) and weights."""
    if layout == "pixel":  # (2, C, h, w) with 2·h·w ≈ n pixels
        h, w = (4, 5) if n >= 30 else (2, 3)
        logits = 2.0 * torch.randn(2, C, h, w, generator=gen, dtype=torch.float64)
        target = skewed_labels(2 * h * w, C, gen, background=0.0).reshape(2, h, w)
        weight = 0.5 + torch.rand(2, h, w, generator=gen, dtype=torch.float64)
        return logits, target, weight
    logits = 2.0 * torch.randn(n, C, generator=gen, dtype=torch.float64)
    weight = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    labels = skewed_labels(n, C, gen, background=0.0)
    if layout == "soft":  # half one-hot rows, half soft rows
        hard = F.one_hot(labels.clamp_min(0), C).double()
        soft = torch.softmax(3 * torch.randn(n, C, generator=gen, dtype=torch.float64), 1)
        return logits, torch.where(torch.arange(n)[:, None] % 2 == 0, hard, soft), weight
    return logits, labels, weight


STREAMS = {
    "plain": ("plain", {}),
    "pixel": ("pixel", {}),
    "smooth": ("plain", dict(label_smoothing=0.1)),
    "neg_indicator": ("plain", dict(indicator="neg", tau=0.5)),
    "prior": ("plain", dict(form="prior", tau=1.5)),
    "eps": ("plain", dict(eps=0.05, tau=2.0)),
    "soft": ("soft", {}),
    "sum": ("plain", dict(reduction="sum")),
}


# ------------------------------------------------------------------ (1) the stream
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", list(STREAMS))
def test_stream_matches_reference(dtype, name):
    _check_stream(dtype, name)


@pytest.mark.parametrize("block_rows", [7, 25])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name", ["plain", "pixel", "smooth"])
def test_stream_matches_reference_in_blocks_of_a_few_rows(dtype, name, block_rows, monkeypatch):
    """Several blocks per batch. Per pixel (20 positions an image), 7 rows: a block is a
    slice of an image's positions (the kernel's strided case); 25 rows: one whole image."""
    monkeypatch.setattr(softmax_module, "SOFTMAX_BLOCK_ELEMENTS", block_rows * C)
    _check_stream(dtype, name)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("name", ["plain", "soft"])
def test_stream_matches_reference_on_other_thread_counts(name, threads):
    """On the CPU the class sums run per intra-op thread's share of the rows (30 rows: 3
    shares of 10 on 3 threads; 1 thread sums them whole); the suite's default is 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_stream(torch.float32, name)
    finally:
        torch.set_num_threads(before)


def _check_stream(dtype, name):
    layout, options = STREAMS[name]
    gen = torch.Generator().manual_seed(11)
    module = SoftmaxEQL(C, loss_weight=0.7, **options)
    ref = RefSoftmaxEQL(C, loss_weight=0.7, **options)
    for _ in range(STEPS):
        logits, target, weight = batch(gen, layout)
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target, weight.to(dtype))
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target, weight)
        assert loss.dtype == dtype and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)
    # the adjustment is far from a constant by now (else the stream would test nothing)
    spread = ref.adjustment().max() - ref.adjustment().min()
    assert float(spread) > 0.2


# --------------------------------------------------------------- (2) gradcheck
ADJUSTMENT = torch.tensor([0.0, -1.0, -3.0, -9.2, 0.7], dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", ["plain", "pixel", "soft", "smooth"])
def test_functional_gradcheck_and_values(reduction, layout):
    gen = torch.Generator().manual_seed(12)
    logits, target, weight = batch(gen, "plain" if layout == "smooth" else layout, n=7)
    logits.requires_grad_(True)
    smoothing = 0.2 if layout == "smooth" else 0.0
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing)

    def fn(z):
        return softmax_eql(z, target, ADJUSTMENT, **kwargs).loss

    assert torch.autograd.gradcheck(fn, (logits,))
    out = softmax_eql(logits, target, ADJUSTMENT, **kwargs)
    ref_loss, t = cross_entropy_ref(logits, target, ADJUSTMENT, **kwargs)
    close(out.loss, ref_loss, torch.float64)
    expected_shape = () if reduction != "none" else (logits.shape[0], *logits.shape[2:])
    assert out.loss.shape == expected_shape
    # increments: the true gradient of the summed loss, split by target
    sum_loss, _ = cross_entropy_ref(logits, target, ADJUSTMENT, **{**kwargs, "reduction": "sum"})
    (grad,) = torch.autograd.grad(sum_loss, logits)
    pos, neg = split_by_target(grad.movedim(1, -1).reshape(-1, C), t)
    close(out.pos_increment, pos, torch.float64)
    close(out.neg_increment, neg, torch.float64)
    if reduction == "mean":
        valid = target.numel() if target.is_floating_point() else int((target != -100).sum())
        assert float(out.normaliser) == (logits.shape[0] if layout == "soft" else valid)
    else:
        assert out.normaliser is None


def test_adjustment_formulas():
    indicator = torch.tensor([5.0, 0.3, 1e-6, 0.0, 2.0], dtype=torch.float64)
    for tau, eps in [(1.0, 1e-4), (0.5, 0.01)]:
        close(
            softmax_eql_adjustment(indicator, tau, eps),
            softmax_eql_adjustment_ref(indicator, tau, eps),
            torch.float64,
        )
    close(
        softmax_eql_adjustment(indicator, 2.0, form="prior"),
        softmax_eql_adjustment_ref(indicator, 2.0, form="prior"),
        torch.float64,
    )


# ------------------------------------------------------------- (3) edge values
EDGE_DTYPES = [(torch.float64, 100.0), (torch.float32, 100.0), (torch.float16, 30.0),
               (torch.bfloat16, 30.0)]  # fmt: skip


def edge_batch(kind, big):
    if kind == "empty":
        return torch.zeros(0, C, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    signs = torch.tensor([[1, -1, 1, -1, 1], [-1, 1, -1, 1, -1], [1, 1, 1, 1, 1],
                          [-1, -1, -1, -1, -1], [1, -1, 0, 0, 1], [-1, -1, -1, -1, 1]],
                         dtype=torch.float64)  # fmt: skip
    if kind == "all_ignored":
        return big * signs, torch.full((6,), -100)
    if kind == "one_class":
        return big * signs, torch.full((6,), 4)
    return big * signs, torch.tensor([0, 0, 4, 3, -100, 2])  # right, wrong, ..., ignored


@pytest.mark.parametrize("dtype, big", EDGE_DTYPES)
@pytest.mark.parametrize("kind", ["saturated", "one_class", "all_ignored", "empty"])
def test_edge_values(dtype, big, kind):
    logits, target = edge_batch(kind, big)
    module = SoftmaxEQL(C, loss_weight=2.0)
    ref = RefSoftmaxEQL(C, loss_weight=2.0)
    for _ in range(3):  # later steps run on adjusted logits
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target)
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target)
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert x.grad.shape == x.shape and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)
    if kind in ("empty", "all_ignored"):
        assert loss.item() == 0.0 and not x.grad.any()


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("shape", [(0, C, 3, 3), (2, C, 0, 4)])
def test_edge_values_pixel_empty_batch(reduction, shape):
    """An empty segmentation batch: zero loss, gradient of the right shape."""
    module = SoftmaxEQL(C, reduction=reduction)
    x = torch.zeros(shape, requires_grad=True)
    loss = module(x, torch.zeros(shape[:1] + shape[2:], dtype=torch.long))
    loss.sum().backward()
    assert loss.shape == (() if reduction == "mean" else shape[:1] + shape[2:])
    assert not loss.any() and x.grad.shape == x.shape
    assert not module.pos_grad.any() and not module.neg_grad.any()


def test_edge_values_pixel_all_ignored():
    x = torch.randn(1, C, 2, 2, requires_grad=True)
    none = SoftmaxEQL(C, reduction="none")(x, torch.full((1, 2, 2), -100))
    assert none.shape == (1, 2, 2) and not none.any()


# -------------------------------------------------------------- (4) semantics
@pytest.mark.parametrize("layout", ["plain", "pixel"])
def test_first_step_is_cross_entropy(layout):
    gen = torch.Generator().manual_seed(13)
    logits, target, _ = batch(gen, layout)
    x = logits.clone().requires_grad_(True)
    module = SoftmaxEQL(C)
    loss = module(x, target)
    y = logits.clone().requires_grad_(True)
    expected = F.cross_entropy(y, target, ignore_index=-100)
    close(loss, expected, torch.float64)
    loss.backward()
    expected.backward()
    close(x.grad, y.grad, torch.float64)


def test_first_step_label_smoothing_is_cross_entropy():
    gen = torch.Generator().manual_seed(14)
    logits, target, _ = batch(gen, "plain")
    loss = SoftmaxEQL(C, label_smoothing=0.1)(logits, target)
    close(loss, F.cross_entropy(logits, target, label_smoothing=0.1), torch.float64)


def with_statistics(module, pos, neg=None):
    """Put given cumulative sums into a module (as a resumed checkpoint would)."""
    state = module.state_dict()
    state["statistics.pos_grad"] = pos.double()
    state["statistics.neg_grad"] = (torch.ones_like(pos) if neg is None else neg).double()
    state["statistics.num_updates"] = torch.tensor(1)
    module.load_state_dict(state)
    return module


@pytest.mark.parametrize("tau, eps", [(1.0, 1e-4), (0.7, 0.01)])
def test_canonical_equals_margin_form(tau, eps):
    indicator = torch.tensor([5.0, 0.3, 1e-6, 0.0, 2.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(15)
    logits = 2.0 * torch.randn(12, C, generator=gen, dtype=torch.float64)
    labels = torch.arange(12) % C
    module = with_statistics(SoftmaxEQL(C, tau=tau, eps=eps, reduction="none"), indicator)
    margin = margin_form_ref(logits, labels, indicator, tau, eps)
    expected = F.cross_entropy(margin, labels, reduction="none")
    close(module(logits, labels), expected, torch.float64)
    canonical = logits + tau * torch.log(indicator.clamp_min(eps))
    close(expected, F.cross_entropy(canonical, labels, reduction="none"), torch.float64)


def test_prior_form_differs_where_indicator_is_tiny():
    z = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    label = torch.tensor([2])
    tiny = torch.tensor([10.0, 5.0, 0.0], dtype=torch.float64)  # class 2 never positive
    canonical = with_statistics(SoftmaxEQL(3), tiny)(z, label)
    prior = with_statistics(SoftmaxEQL(3, form="prior"), tiny)(z, label)
    ce = lambda a: F.cross_entropy(z + a, label)  # noqa: E731
    f64 = dict(dtype=torch.float64)
    close(canonical, ce(torch.log(torch.tensor([10.0, 5.0, 1e-4], **f64))), torch.float64)
    close(prior, ce(torch.log(torch.tensor([10 / 15, 5 / 15, 0.0], **f64) + 1e-9)), torch.float64)
    assert float(prior - canonical) > 5.0  # ≈ log(1e-4 / 1e-9) - log(15)
    # with every I_j large the two forms agree (softmax ignores the constant log Σ I)
    large = torch.tensor([10.0, 5.0, 2.0], dtype=torch.float64)
    close(
        with_statistics(SoftmaxEQL(3), large)(z, label),
        with_statistics(SoftmaxEQL(3, form="prior"), large)(z, label),
        torch.float32,
    )


def test_indicator_neg_uses_negative_sums():
    pos = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    neg = torch.tensor([4.0, 0.5, 1e-7], dtype=torch.float64)
    z = torch.tensor([[0.2, -0.3, 1.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    label = torch.tensor([0, 2])
    module = with_statistics(SoftmaxEQL(3, indicator="neg", tau=0.5), pos, neg)
    expected = F.cross_entropy(z + 0.5 * torch.log(neg.clamp_min(1e-4)), label)
    close(module(z, label), expected, torch.float64)


@pytest.mark.parametrize("layout", ["plain", "pixel"])
def test_predict_is_softmax_of_raw_logits(layout):
    gen = torch.Generator().manual_seed(16)
    logits, target, _ = batch(gen, layout)
    module = SoftmaxEQL(C)
    for _ in range(2):
        module(logits, target)
    prob = module.predict(logits)
    close(prob, torch.softmax(logits, dim=1), torch.float64)
    shift = softmax_eql_adjustment_ref(module.pos_grad)
    shift = shift[:, None, None] if layout == "pixel" else shift
    adjusted = torch.softmax(logits + shift, dim=1)
    assert float((prob - adjusted).abs().max()) > 1e-2


@pytest.mark.parametrize("mode", ["eval", "no_grad", "update_statistics_false"])
def test_statistics_frozen(mode):
    gen = torch.Generator().manual_seed(17)
    module = SoftmaxEQL(C, update_statistics=mode != "update_statistics_false")
    logits, target, _ = batch(gen, "plain")
    if mode == "eval":
        module.eval()
        module(logits.requires_grad_(True), target)
    elif mode == "no_grad":
        with torch.no_grad():
            module(logits, target)
    else:
        module(logits.requires_grad_(True), target)
    assert not module.pos_grad.any() and not module.neg_grad.any()
    module.train()
    module.update_statistics = True
    close(module(logits, target), F.cross_entropy(logits, target), torch.float64)


@pytest.mark.parametrize("layout", ["plain", "pixel"])
def test_reduction_shapes(layout):
    gen = torch.Generator().manual_seed(18)
    logits, target, weight = batch(gen, layout)
    valid = int((target != -100).sum())
    out = {r: SoftmaxEQL(C, reduction=r)(logits, target, weight) for r in ("none", "sum", "mean")}
    assert out["none"].shape == target.shape
    close(out["sum"], out["none"].sum(), torch.float64)
    close(out["mean"], out["none"].sum() / valid, torch.float64)
    per_sample = F.cross_entropy(logits, target, reduction="none") * weight
    close(out["none"], per_sample, torch.float64)


def test_statistics_are_true_gradient_of_the_step():
    """Two identical steps: step 2 sees the adjustment of step 1 only; the statistics
    after step 1 are the summed |dL/dz| of the mean loss (times loss_weight)."""
    gen = torch.Generator().manual_seed(19)
    logits, target, _ = batch(gen, "plain")
    module = SoftmaxEQL(C, loss_weight=3.0)
    x = logits.clone().requires_grad_(True)
    first = module(x, target)
    first.backward()
    close(first, 3.0 * F.cross_entropy(logits, target), torch.float64)
    onehot = F.one_hot(target.clamp_min(0), C).double() * (target >= 0).double()[:, None]
    close(module.pos_grad, (x.grad.abs() * onehot).sum(0), torch.float64)
    close(module.neg_grad, (x.grad.abs() * (1 - onehot)).sum(0), torch.float64)
    a = torch.log(module.pos_grad.clamp_min(1e-4))
    second = module(logits, target)
    close(second, 3.0 * F.cross_entropy(logits + a, target), torch.float64)


def test_retained_graph_backward_twice_and_upstream_weights():
    gen = torch.Generator().manual_seed(20)
    logits, target, _ = batch(gen, "pixel")
    x = logits.clone().requires_grad_(True)
    loss = SoftmaxEQL(C, reduction="none")(x, target)
    upstream = torch.rand(loss.shape, generator=gen, dtype=torch.float64)
    (loss * upstream).sum().backward(retain_graph=True)
    y = logits.clone().requires_grad_(True)
    (F.cross_entropy(y, target, reduction="none") * upstream).sum().backward()
    close(x.grad, y.grad, torch.float64)
    loss.sum().backward()
    (z,) = torch.autograd.grad(
        F.cross_entropy(logits.requires_grad_(True), target, reduction="sum"), logits
    )
    close(x.grad, y.grad + z, torch.float64)


def test_pixel_statistics_count_pixels():
    """Per-pixel: N in the 1/N of the statistics is the number of non-ignored pixels."""
    logits = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    target = torch.tensor([[[0, 0], [1, -100]]])
    module = SoftmaxEQL(2)
    module(logits, target)
    # softmax = 1/2 everywhere: each of 3 pixels sends 1/2 / 3 to both classes
    close(module.pos_grad, torch.tensor([1 / 3, 1 / 6], dtype=torch.float64), torch.float64)
    close(module.neg_grad, torch.tensor([1 / 6, 1 / 3], dtype=torch.float64), torch.float64)
    assert math.isclose(float(module.grad_ratio[0]), 2.0, rel_tol=1e-9)


@pytest.mark.parametrize("block_rows", [None, 4])
@pytest.mark.parametrize("layout", ["plain", "pixel"])
def test_a_target_far_below_its_rows_maximum_keeps_an_exact_loss(layout, block_rows, monkeypatch):
    """On the host a hard label's loss is -log p_t. Where the target's logit lies 75 or 120
    below the row's largest, p_t is below 2^-102, where it may have lost precision, and the
    kernel takes the row's loss from logsumexp instead; 60 below, -log p_t itself is still
    exact. Each row's loss and gradient are compared, in float32, with float64
    cross-entropy, on the host path and on the device path (which does not read p_t). A
    NaN row beside them stays NaN."""
    if block_rows is not None:  # some blocks hold such a row, others none
        monkeypatch.setattr(softmax_module, "SOFTMAX_BLOCK_ELEMENTS", block_rows * C)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(12, C, generator=gen, dtype=torch.float64)
    target = torch.randint(0, C, (12,), generator=gen)
    for row, below in ((1, 60.0), (2, 75.0), (3, 120.0), (9, 120.0)):
        logits[row, target[row]] = logits[row].max() - below
    logits[4, 0] = float("nan")  # its loss is NaN; the rows beside it keep theirs
    if layout == "pixel":  # (2, C, 2, 3): the same rows, as the positions of two images
        logits = logits.view(2, 6, C).permute(0, 2, 1).reshape(2, C, 2, 3)
        target = target.view(2, 2, 3)
    reference = logits.clone().requires_grad_(True)
    expected = F.cross_entropy(reference, target, reduction="none")
    expected.sum().backward()
    assert float(expected.nan_to_num().max()) > 119.0 and int(expected.isnan().sum()) == 1
    for host in (True, False):
        if not host:
            monkeypatch.setattr(eqlosses.checks, "HOST_CHECKED_DEVICES", frozenset())
        x = logits.float().requires_grad_(True)
        out = softmax_eql(x, target, torch.zeros(C), reduction="none")
        out.loss.sum().backward()
        torch.testing.assert_close(
            out.loss.double(), expected, rtol=1e-6, atol=1e-6, equal_nan=True
        )
        finite = reference.grad.isfinite()
        close(x.grad[finite], reference.grad[finite], torch.float32)
