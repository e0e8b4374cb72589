"""Sigmoid-EQL (EQLv2, Tan et al., CVPR 2021) against the plain references of
reference_losses.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference_losses import (
    RefSigmoidEQL,
    close,
    sigmoid_eql_factors_ref,
    sigmoid_eql_ref,
    skewed_labels,
)

from eqlosses import SigmoidEQL
from eqlosses.functional import sigmoid_eql

C = 5
STEPS = 5
FLOATS = [torch.float64, torch.float32]


def batch(gen, n, *, objectness=False, multi_hot=False):
    """Random logits (float64), skewed labels (background and ignored rows), weights."""
    logits = 2.0 * torch.randn(n, C + int(objectness), generator=gen, dtype=torch.float64)
    if multi_hot:
        rate = torch.tensor([0.6, 0.4, 0.2, 0.1, 0.02], dtype=torch.float64)
        target = (torch.rand(n, C, generator=gen, dtype=torch.float64) < rate).double()
    else:
        target = skewed_labels(n, C, gen)
    weight = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    return logits, target, weight


# ------------------------------------------------------------------ (1) the stream
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    "objectness, multi_hot, background_index",
    [(False, False, "last"), (True, False, "last"), (False, True, "last"),
     (True, True, "last"), (True, False, "first")],
)  # fmt: skip
def test_stream_matches_reference(dtype, objectness, multi_hot, background_index):
    gen = torch.Generator().manual_seed(1)
    options = dict(objectness=objectness, background_index=background_index)
    module = SigmoidEQL(C, gamma=10.0, mu=0.7, alpha=3.0, loss_weight=0.7, **options)
    ref = RefSigmoidEQL(C, gamma=10.0, mu=0.7, alpha=3.0, loss_weight=0.7, **options)
    losses = []
    for _ in range(STEPS):
        logits, target, weight = batch(gen, 40, objectness=objectness, multi_hot=multi_hot)
        if background_index == "first":
            target = torch.where(target == C, 0, torch.where(target >= 0, target + 1, target))
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target, weight.to(dtype))
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target, weight)
        assert loss.dtype == dtype and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)
        losses.append(float(ref_loss))
    # the weights really moved away from 1 (else the stream would test nothing)
    q, r = sigmoid_eql_factors_ref(ref.ratio(), 10.0, 0.7, 3.0)
    assert float((q - 1).abs().max()) > 0.5 and float((1 - r).abs().max()) > 0.5


# --------------------------------------------------------------- (2) gradcheck
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("objectness", [False, True])
@pytest.mark.parametrize("multi_hot", [False, True])
def test_functional_gradcheck_and_values(reduction, objectness, multi_hot):
    gen = torch.Generator().manual_seed(2)
    logits, target, weight = batch(gen, 7, objectness=objectness, multi_hot=multi_hot)
    logits.requires_grad_(True)
    q = torch.tensor([1.0, 1.5, 2.5, 4.0, 5.0], dtype=torch.float64)
    r = torch.tensor([1.0, 0.8, 0.3, 0.05, 1e-4], dtype=torch.float64)
    kwargs = dict(objectness=objectness, weight=weight, reduction=reduction)

    def fn(z):
        return sigmoid_eql(z, target, q, r, **kwargs).loss

    assert torch.autograd.gradcheck(fn, (logits,))
    out = sigmoid_eql(logits, target, q, r, **kwargs)
    ref_loss, ref_pos, ref_neg = sigmoid_eql_ref(logits, target, q, r, **kwargs)
    close(out.loss, ref_loss, torch.float64)
    close(out.pos_increment, ref_pos, torch.float64)
    close(out.neg_increment, ref_neg, torch.float64)
    assert out.normaliser is None
    (grad,) = torch.autograd.grad(out.loss.sum(), logits)
    (ref_grad,) = torch.autograd.grad(ref_loss.sum(), logits)
    close(grad, ref_grad, torch.float64)


def test_functional_gradcheck_anchor_layout():
    """(B, A, C+1) logits with (B, A) labels: the rows are the leading dimensions."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, C + 1, generator=gen, dtype=torch.float64, requires_grad=True)
    target = skewed_labels(6, C, gen).reshape(2, 3)
    q = torch.linspace(1.0, 5.0, C, dtype=torch.float64)
    r = torch.linspace(1.0, 0.01, C, dtype=torch.float64)
    for reduction in ("mean", "none"):
        fn = lambda z: sigmoid_eql(z, target, q, r, objectness=True, reduction=reduction).loss  # noqa: E731, B023
        assert torch.autograd.gradcheck(fn, (logits,))
        ref = sigmoid_eql_ref(logits, target, q, r, objectness=True, reduction=reduction)[0]
        close(fn(logits), ref, torch.float64)


# ------------------------------------------------------------- (3) edge values
EDGE_DTYPES = [(torch.float64, 100.0), (torch.float32, 100.0), (torch.float16, 30.0),
               (torch.bfloat16, 30.0)]  # fmt: skip


def edge_batch(kind, big, objectness):
    K = C + int(objectness)
    if kind == "empty":
        return torch.zeros(0, K, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    signs = torch.tensor([[1, -1, 1, -1, 1, -1], [-1, 1, -1, 1, -1, 1], [1, 1, 1, 1, 1, 1],
                          [-1, -1, -1, -1, -1, -1], [1, -1, 0, 0, 1, -1],
                          [-1, -1, 1, 1, 1, 1]], dtype=torch.float64)  # fmt: skip
    logits = big * signs[:, :K]
    if kind == "all_background":
        return logits, torch.full((6,), C)
    if kind == "multi_hot":  # float 0/1 targets, positives on both saturated sides
        return logits, (torch.arange(6 * C).reshape(6, C) % 3 == 0).double()
    return logits, torch.tensor([0, 0, 4, 3, -100, C])  # right, wrong, ignored, background


@pytest.mark.parametrize("dtype, big", EDGE_DTYPES)
@pytest.mark.parametrize("kind", ["saturated", "multi_hot", "all_background", "empty"])
@pytest.mark.parametrize("objectness", [False, True])
def test_edge_values(dtype, big, kind, objectness):
    logits, target = edge_batch(kind, big, objectness)
    module = SigmoidEQL(C, objectness=objectness, loss_weight=2.0)
    ref = RefSigmoidEQL(C, objectness=objectness, loss_weight=2.0)
    for _ in range(3):  # the later steps use updated (possibly extreme) weights
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target)
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target)
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert x.grad.shape == x.shape and x.grad.dtype == dtype
        assert torch.isfinite(module.pos_grad).all() and torch.isfinite(module.neg_grad).all()
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)
    if kind == "empty":
        assert loss.item() == 0.0


# -------------------------------------------------------------- (4) semantics
def test_first_step_is_plain_bce():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.2, -3.0], [-1.0, 1.0, 4.0], [0.0, 5.0, -2.0]],
                     dtype=torch.float64, requires_grad=True)  # fmt: skip
    y = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.float64)
    loss = SigmoidEQL(3)(z, torch.tensor([0, 3, 2, 1]))
    expected = F.binary_cross_entropy_with_logits(z, y, reduction="sum") / 4
    close(loss, expected, torch.float64)
    (g,) = torch.autograd.grad(loss, z)
    close(g, (torch.sigmoid(z) - y) / 4, torch.float64)


def test_first_step_objectness_is_plain_bce():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.2, -3.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)  # bg column last
    loss = SigmoidEQL(2, objectness=True)(z, torch.tensor([1, 2]))
    close(loss, F.binary_cross_entropy_with_logits(z, y, reduction="sum") / 2, torch.float64)


def test_never_positive_class_gets_pos_weight_one_plus_alpha():
    alpha, gamma, mu = 4.0, 12.0, 0.8
    module = SigmoidEQL(3, reduction="none")
    # class 2 is never a positive in step 1, only a negative: g_2 = 0
    module(torch.zeros(4, 3, dtype=torch.float64), torch.tensor([0, 1, 3, 0]))
    z = torch.tensor([[0.3, -0.2, 0.7], [1.0, 0.4, -0.5]], dtype=torch.float64)
    entries = module(z, torch.tensor([2, 0]))
    neg_weight = 1 / (1 + math.exp(gamma * mu))  # f(0) ≈ 6.8e-5
    pos_weight = entries[0, 2] / F.softplus(-z[0, 2])  # the positive's weight q_2
    assert abs(float(pos_weight) - (1 + alpha * (1 - neg_weight))) < 1e-12
    assert abs(float(pos_weight) - (1 + alpha)) < 1e-3
    neg_entry_weight = entries[1, 2] / F.softplus(z[1, 2])  # a negative of class 2: r_2
    assert abs(float(neg_entry_weight) - neg_weight) < 1e-15


def test_weights_use_previous_steps_only():
    """Step t's loss is computed with the statistics of steps < t."""
    gen = torch.Generator().manual_seed(4)
    logits, target, _ = batch(gen, 30)
    module = SigmoidEQL(C)
    first = module(logits, target)
    y_full = F.one_hot(torch.where(target < 0, C, target), C + 1)[:, :C].double()
    valid = (target >= 0).double()[:, None]
    bce = F.binary_cross_entropy_with_logits(logits, y_full, reduction="none") * valid
    close(first, bce.sum() / valid.sum(), torch.float64)  # not affected by its own update
    # the update of step 1 is |σ - y| summed over non-ignored samples, W = 1
    magnitude = (torch.sigmoid(logits) - y_full).abs() * valid
    pos, neg = (magnitude * y_full).sum(0), (magnitude * (1 - y_full)).sum(0)
    close(module.pos_grad, pos, torch.float64)
    close(module.neg_grad, neg, torch.float64)
    second = module(logits, target)
    q, r = sigmoid_eql_factors_ref(pos / (neg + 1e-10))
    expected = ((q * y_full + r * (1 - y_full)) * bce).sum() / valid.sum()
    close(second, expected, torch.float64)
    assert abs(float(second) - float(first)) > 1e-3


@pytest.mark.parametrize("objectness", [False, True])
def test_predict(objectness):
    module = SigmoidEQL(C, objectness=objectness)
    gen = torch.Generator().manual_seed(5)
    logits, target, _ = batch(gen, 10, objectness=objectness)
    module(logits, target)  # statistics must not matter for predict
    z = torch.randn(3, 4, C + int(objectness), generator=gen, dtype=torch.float64)
    prob = module.predict(z)
    if objectness:
        expected = torch.sigmoid(z[..., :C]) * (1 - torch.sigmoid(z[..., C:]))
    else:
        expected = torch.sigmoid(z)
    assert prob.shape == (3, 4, C)
    close(prob, expected, torch.float64)


@pytest.mark.parametrize("mode", ["eval", "no_grad", "update_statistics_false"])
def test_statistics_frozen(mode):
    gen = torch.Generator().manual_seed(6)
    module = SigmoidEQL(C, update_statistics=mode != "update_statistics_false")
    logits, target, _ = batch(gen, 20)
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
    # still the initial weights: the next training step is plain BCE
    ref_loss, _, _ = sigmoid_eql_ref(logits, target, torch.ones(C), torch.ones(C))
    close(module(logits, target), ref_loss, torch.float64)


def test_reduction_shapes():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 6, C + 1, generator=gen, dtype=torch.float64)
    target = skewed_labels(12, C, gen).reshape(2, 6)
    valid = int((target != -100).sum())
    out = {}
    for reduction in ("none", "sum", "mean"):
        module = SigmoidEQL(C, objectness=True, reduction=reduction)
        out[reduction] = module(logits, target)
    assert out["none"].shape == (2, 6, C + 1)
    assert out["sum"].shape == out["mean"].shape == ()
    close(out["sum"], out["none"].sum(), torch.float64)
    close(out["mean"], out["none"].sum() / valid, torch.float64)
    assert (out["none"][target == -100] == 0).all()


def test_background_index_first_equals_shifted_last():
    gen = torch.Generator().manual_seed(8)
    last, first = SigmoidEQL(C), SigmoidEQL(C, background_index="first")
    for _ in range(3):
        logits, target, weight = batch(gen, 25)
        shifted = torch.where(target == C, 0, torch.where(target >= 0, target + 1, target))
        a = logits.clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        last(a, target, weight).backward()
        first(b, shifted, weight).backward()
        close(b.grad, a.grad, torch.float64)
    close(first.pos_grad, last.pos_grad, torch.float64)
    close(first.neg_grad, last.neg_grad, torch.float64)


def test_float16_gradient_survives_loss_scaling():
    """The gradient is kept in float32, so entries below float16's range before
    the loss scale is applied are right after it."""
    z = torch.full((4, 3), -16.0)  # σ(-16)/4 ≈ 2.8e-8, below float16's smallest subnormal
    z[:, 0] = 4.0
    target = torch.zeros(4, dtype=torch.long)
    x = z.half().requires_grad_(True)
    scale = 4096.0
    (SigmoidEQL(3)(x, target) * scale).backward()
    expected = (torch.sigmoid(z.double()) - F.one_hot(target, 3).double()) / 4 * scale
    assert (x.grad[:, 1:] != 0).all()
    torch.testing.assert_close(x.grad.double(), expected, rtol=2e-3, atol=0.0)


def test_retained_graph_backward_twice():
    gen = torch.Generator().manual_seed(9)
    logits, target, _ = batch(gen, 8)
    x = logits.requires_grad_(True)
    loss = SigmoidEQL(C)(x, target)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad.zero_()  # in place, as optimizer.zero_grad(set_to_none=False) does
    loss.backward(retain_graph=True)
    close(x.grad, first, torch.float64)
    loss.backward()
    close(x.grad, 2 * first, torch.float64)


def test_create_graph_gives_the_gradient_and_refuses_a_second_derivative():
    gen = torch.Generator().manual_seed(11)
    logits, target, _ = batch(gen, 8)
    x = logits.requires_grad_(True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    plain = torch.autograd.grad(SigmoidEQL(C)(x, target), x)[0]
    (grad,) = torch.autograd.grad(SigmoidEQL(C)(x, target) * scale, x, create_graph=True)
    close(grad, 3.0 * plain, torch.float64)
    # the gradient is a constant of the forward pass: differentiating it again is an error
    with pytest.raises(RuntimeError, match="second derivatives"):
        grad.sum().backward()


def test_state_dict_resume_keeps_statistics_and_update_state():
    gen = torch.Generator().manual_seed(10)
    batches = [batch(gen, 20) for _ in range(3)]
    module, ref = SigmoidEQL(C), RefSigmoidEQL(C)
    for logits, target, weight in batches[:2]:
        module(logits, target, weight)
        ref.step(logits, target, weight)
    resumed = SigmoidEQL(C)
    resumed.load_state_dict(module.state_dict())
    logits, target, weight = batches[2]
    ref_loss, _ = ref.step(logits, target, weight)
    close(resumed(logits, target, weight), ref_loss, torch.float64)


def test_half_module_keeps_float64_statistics():
    module = SigmoidEQL(C).half()
    assert module.pos_grad.dtype == module.neg_grad.dtype == torch.float64
    module = module.to(torch.bfloat16)
    assert module.pos_grad.dtype == torch.float64
