"""Equalized Focal Loss (EFL) and its quality variant (EQFL) against reference_losses.py
(Li et al., CVPR 2022)."""

import pytest
import torch
import torch.nn.functional as F
from reference_losses import (
    RefEFL,
    RefEQFL,
    close,
    efl_factors_ref,
    efl_ref,
    eqfl_ref,
    sigmoid_focal_ref,
    skewed_labels,
    split_by_target,
)

from eqlosses import EqualizedFocalLoss, EqualizedQualityFocalLoss
from eqlosses.functional import equalized_focal_loss, equalized_quality_focal_loss

C = 4
STEPS = 5
FLOATS = [torch.float64, torch.float32]


def batch(gen, b=2, a=15):
    """Anchors of ``b`` images: float64 logits (b, a, C), mostly background labels,
    ignored anchors, per-anchor weights and IoU quality scores."""
    logits = 2.0 * torch.randn(b, a, C, generator=gen, dtype=torch.float64) - 1.0
    target = skewed_labels(b * a, C, gen, background=0.6).reshape(b, a)
    weight = 0.5 + torch.rand(b, a, generator=gen, dtype=torch.float64)
    score = torch.rand(b, a, generator=gen, dtype=torch.float64)
    return logits, target, weight, score


def to_first(target):
    """The 'first' layout of the same labels: 0 = background, classes 1..C."""
    return torch.where(target == C, 0, torch.where(target >= 0, target + 1, target))


STREAMS = {
    "plain": {},
    "yolox_scale": dict(scale=4.0, gamma_b=1.5),
    "avg_factor": dict(avg_factor=3.5),
    # a tensor avg_factor stays on the device; a Python number is used as it is
    "avg_factor_tensor": dict(avg_factor=torch.tensor(3.5)),
    "first": dict(background_index="first"),
    "sum": dict(reduction="sum"),
}


def make(quality, options):
    options = dict(options)
    options.pop("avg_factor", None)
    if quality:
        options.pop("alpha", None)
        return EqualizedQualityFocalLoss(C, loss_weight=0.7, **options)
    return EqualizedFocalLoss(C, loss_weight=0.7, **options)


def make_ref(quality, options):
    kw = {k: v for k, v in options.items() if k in ("reduction", "background_index")}
    factors = {k: v for k, v in options.items() if k in ("gamma_b", "scale")}
    cls = RefEQFL if quality else RefEFL
    return cls(C, loss_weight=0.7, **factors, **kw)


# ------------------------------------------------------------------ (1) the stream
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("quality", [False, True], ids=["EFL", "EQFL"])
@pytest.mark.parametrize("name", list(STREAMS))
def test_stream_matches_reference(dtype, quality, name):
    options = STREAMS[name]
    gen = torch.Generator().manual_seed(21)
    module, ref = make(quality, options), make_ref(quality, options)
    avg = {"avg_factor": options["avg_factor"]} if "avg_factor" in options else {}
    for _ in range(STEPS):
        logits, target, weight, score = batch(gen)
        if options.get("background_index") == "first":
            target = to_first(target)
        x = logits.to(dtype).clone().requires_grad_(True)
        if quality:
            loss = module(x, target, score.to(dtype), weight.to(dtype), **avg)
            ref_loss, ref_grad = ref.step(x.detach(), target, score, weight, **avg)
        else:
            loss = module(x, target, weight.to(dtype), **avg)
            ref_loss, ref_grad = ref.step(x.detach(), target, weight, **avg)
        loss.backward()
        assert loss.dtype == dtype and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)
    gamma, _ = ref.factors()  # the focusing factors really moved (else: nothing tested)
    assert float((gamma - options.get("gamma_b", 2.0)).min()) > 1.0


# --------------------------------------------------------------- (2) gradcheck
FOCUSING = torch.tensor([2.0, 3.5, 6.0, 10.0], dtype=torch.float64)
WEIGHTING = torch.tensor([1.0, 1.75, 2.5, 0.6], dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("quality", [False, True], ids=["EFL", "EQFL"])
def test_functional_gradcheck_and_values(reduction, quality):
    gen = torch.Generator().manual_seed(22)
    logits, target, weight, score = batch(gen, b=2, a=5)
    logits.requires_grad_(True)
    kw = dict(weight=weight, reduction=reduction)

    def fn(z, reduction=reduction):
        kwargs = {**kw, "reduction": reduction}
        if quality:
            return equalized_quality_focal_loss(z, target, score, FOCUSING, WEIGHTING, **kwargs)
        return equalized_focal_loss(z, target, FOCUSING, WEIGHTING, alpha=0.3, **kwargs)

    def ref(z, reduction=reduction):
        kwargs = {**kw, "reduction": reduction}
        if quality:
            return eqfl_ref(z, target, score, FOCUSING, WEIGHTING, **kwargs)
        return efl_ref(z, target, FOCUSING, WEIGHTING, alpha=0.3, **kwargs)

    assert torch.autograd.gradcheck(lambda z: fn(z).loss, (logits,))
    out = fn(logits)
    ref_loss, y = ref(logits)
    close(out.loss, ref_loss, torch.float64)
    assert out.loss.shape == (logits.shape if reduction == "none" else ())
    # increments: |d(unnormalised loss)/dz| split by the one-hot class target
    (grad,) = torch.autograd.grad(ref(logits, "sum")[0], logits)
    pos, neg = split_by_target(grad.reshape(-1, C), y)
    close(out.pos_increment, pos, torch.float64)
    close(out.neg_increment, neg, torch.float64)
    positives = int(((target >= 0) & (target < C)).sum())
    if reduction == "mean":
        assert float(out.normaliser) == positives
    else:
        assert out.normaliser is None


def test_functional_gradcheck_quality_extremes():
    """EQFL with quality targets 0 and 1 and a logit where σ(z) = q."""
    logits = torch.tensor([[0.0, 1.0, -2.0, 3.0], [2.0, -1.0, 0.5, 0.0], [-3.0, 4.0, 0.1, -0.2]],
                          dtype=torch.float64, requires_grad=True)  # fmt: skip
    target = torch.tensor([0, 1, 3])
    score = torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)  # row 0: σ(0) = 0.5 = q
    fn = lambda z: equalized_quality_focal_loss(z, target, score, FOCUSING, WEIGHTING).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))
    close(fn(logits), eqfl_ref(logits, target, score, FOCUSING, WEIGHTING)[0], torch.float64)


# ------------------------------------------------------------- (3) edge values
EDGE_DTYPES = [(torch.float64, 100.0), (torch.float32, 100.0), (torch.float16, 30.0),
               (torch.bfloat16, 30.0)]  # fmt: skip


def edge_batch(kind, big):
    if kind == "empty":
        return (torch.zeros(0, C, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.float64))  # fmt: skip
    signs = torch.tensor([[1, -1, 1, -1], [-1, 1, -1, 1], [1, 1, 1, 1], [-1, -1, -1, -1],
                          [1, -1, 0, 0], [-1, -1, 1, 1]], dtype=torch.float64)  # fmt: skip
    score = torch.tensor([1.0, 0.0, 0.7, 0.3, 0.5, 0.9], dtype=torch.float64)
    if kind == "all_background":
        return big * signs, torch.full((6,), C), score
    return big * signs, torch.tensor([0, 0, 3, 2, -100, C]), score


@pytest.mark.parametrize("dtype, big", EDGE_DTYPES)
@pytest.mark.parametrize("kind", ["saturated", "all_background", "empty"])
@pytest.mark.parametrize("quality", [False, True], ids=["EFL", "EQFL"])
def test_edge_values(dtype, big, kind, quality):
    logits, target, score = edge_batch(kind, big)
    module, ref = make(quality, {}), make_ref(quality, {})
    extra = (score.to(dtype),) if quality else ()
    for _ in range(3):  # later steps run with updated (extreme) focusing factors
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target, *extra)
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target, *((score,) if quality else ()))
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert x.grad.shape == x.shape and x.grad.dtype == dtype
        assert torch.isfinite(module.pos_grad).all() and torch.isfinite(module.neg_grad).all()
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)
    if kind == "empty":
        assert loss.item() == 0.0


def test_no_positives_normaliser_clamps_to_one():
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.3]], dtype=torch.float64)
    loss = EqualizedFocalLoss(C)(z, torch.tensor([C, C]))
    expected = sigmoid_focal_ref(z, torch.zeros_like(z)).sum()  # divided by max(0, 1) = 1
    close(loss, expected, torch.float64)
    # the statistics of a step without positives are not divided by 0 either
    module = EqualizedFocalLoss(C)
    x = z.clone().requires_grad_(True)
    module(x, torch.tensor([C, C])).backward()
    close(module.neg_grad, x.grad.abs().sum(0), torch.float64)
    assert not module.pos_grad.any()


# -------------------------------------------------------------- (4) semantics
def test_efl_first_step_is_sigmoid_focal_loss():
    gen = torch.Generator().manual_seed(23)
    logits, target, _, _ = batch(gen)
    y = F.one_hot(torch.where(target < 0, C, target), C + 1)[..., :C].double()
    valid = (target >= 0).double()[..., None]
    x = logits.clone().requires_grad_(True)
    loss = EqualizedFocalLoss(C)(x, target)
    num_pos = float(y.sum())
    z = logits.clone().requires_grad_(True)
    expected = (sigmoid_focal_ref(z, y, gamma=2.0, alpha=0.25) * valid).sum() / num_pos
    close(loss, expected, torch.float64)
    loss.backward()
    expected.backward()
    close(x.grad, z.grad, torch.float64)


def test_eqfl_first_step_is_quality_focal_loss():
    gen = torch.Generator().manual_seed(24)
    logits, target, _, score = batch(gen)
    y = F.one_hot(torch.where(target < 0, C, target), C + 1)[..., :C].double()
    valid = (target >= 0).double()[..., None]
    t = y * score[..., None]
    loss = EqualizedQualityFocalLoss(C)(logits, target, score)
    qfl = (t - torch.sigmoid(logits)).abs() ** 2 * F.binary_cross_entropy_with_logits(
        logits, t, reduction="none"
    )
    close(loss, (qfl * valid).sum() / y.sum(), torch.float64)


def with_statistics(module, pos, neg):
    state = module.state_dict()
    state["statistics.pos_grad"] = pos.double()
    state["statistics.neg_grad"] = neg.double()
    state["statistics.num_updates"] = torch.tensor(3)
    module.load_state_dict(state)
    return module


def test_factors_from_ratio_clamped():
    """g = [3, 1, 0.5, 0] -> γ = [2, 2, 6, 10], w = γ/2 (g clamped to [0, 1])."""
    pos = torch.tensor([3.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    neg = torch.tensor([1.0, 2.0, 1.0, 7.0], dtype=torch.float64)
    module = with_statistics(EqualizedFocalLoss(C, reduction="none"), pos, neg)
    z = torch.tensor([[0.4, -0.3, 1.2, -0.7], [0.1, 0.9, -1.5, 2.0]], dtype=torch.float64)
    entries = module(z, torch.tensor([C, C]))  # all negatives: (1-α) w σ^γ softplus(z)
    gamma = torch.tensor([2.0, 2.0, 6.0, 10.0], dtype=torch.float64)
    expected = 0.75 * (gamma / 2) * torch.sigmoid(z) ** gamma * F.softplus(z)
    close(entries, expected, torch.float64)
    close(efl_factors_ref(pos / (neg + 1e-10))[0], gamma, torch.float64)


def test_never_positive_class_gets_largest_focusing():
    module = EqualizedFocalLoss(C, reduction="none")
    module(torch.zeros(3, C, dtype=torch.float64), torch.tensor([0, 1, C]))  # class 3 unseen
    z = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    entries = module(z, torch.tensor([3]))
    p = torch.sigmoid(z[0, 3])  # positive entry of class 3: γ = 2 + 8, w = 5
    close(entries[0, 3], 0.25 * 5 * (1 - p) ** 10 * -torch.log(p), torch.float64)


def test_avg_factor_divides_loss_and_statistics():
    gen = torch.Generator().manual_seed(25)
    logits, target, _, _ = batch(gen)
    module = EqualizedFocalLoss(C)
    x = logits.clone().requires_grad_(True)
    loss = module(x, target, avg_factor=2.5)
    loss.backward()
    y = F.one_hot(torch.where(target < 0, C, target), C + 1)[..., :C].double()
    valid = (target >= 0).double()[..., None]
    close(loss, (sigmoid_focal_ref(logits, y) * valid).sum() / 2.5, torch.float64)
    close(module.pos_grad, (x.grad.abs() * y).sum((0, 1)), torch.float64)
    close(module.neg_grad, (x.grad.abs() * (1 - y)).sum((0, 1)), torch.float64)


def test_fractional_avg_factor_statistics_are_true_gradient():
    """EFL's statistics are the true gradient of the normalised loss; an
    avg_factor below 1 (positives averaged over ranks) must not break that."""
    gen = torch.Generator().manual_seed(26)
    logits, target, _, _ = batch(gen)
    module = EqualizedFocalLoss(C)
    x = logits.clone().requires_grad_(True)
    module(x, target, avg_factor=0.5).backward()
    y = F.one_hot(torch.where(target < 0, C, target), C + 1)[..., :C].double()
    close(module.pos_grad, (x.grad.abs() * y).sum((0, 1)), torch.float64)
    close(module.neg_grad, (x.grad.abs() * (1 - y)).sum((0, 1)), torch.float64)


@pytest.mark.parametrize("quality", [False, True], ids=["EFL", "EQFL"])
def test_explicit_avg_factor_is_the_divisor_as_given(quality):
    """An explicit avg_factor divides the loss and the statistics as given, below 1 too
    (a detector may pass a fractional sum of weights); only the default count of
    positives is floored at 1."""
    gen = torch.Generator().manual_seed(26)
    logits, target, _, score = batch(gen)
    extra = (score,) if quality else ()
    y = F.one_hot(torch.where(target < 0, C, target), C + 1)[..., :C].double()
    valid = (target >= 0).double()[..., None]
    if not quality:
        loss = EqualizedFocalLoss(C)(logits, target, avg_factor=0.5)
        close(loss, (sigmoid_focal_ref(logits, y) * valid).sum() / 0.5, torch.float64)
    halved, whole = make(quality, {}), make(quality, {})
    loss_halved = halved(logits, target, *extra, avg_factor=0.5)
    loss_whole = whole(logits, target, *extra, avg_factor=1.0)
    close(loss_halved, 2 * loss_whole, torch.float64)
    close(halved.pos_grad, 2 * whole.pos_grad, torch.float64)
    close(halved.neg_grad, 2 * whole.neg_grad, torch.float64)


@pytest.mark.parametrize("quality", [False, True], ids=["EFL", "EQFL"])
@pytest.mark.parametrize("mode", ["eval", "no_grad", "update_statistics_false"])
def test_statistics_frozen(quality, mode):
    gen = torch.Generator().manual_seed(27)
    logits, target, _, score = batch(gen)
    module = make(quality, {})
    module.update_statistics = mode != "update_statistics_false"
    extra = (score,) if quality else ()
    if mode == "eval":
        module.eval()
        module(logits.requires_grad_(True), target, *extra)
    elif mode == "no_grad":
        with torch.no_grad():
            module(logits, target, *extra)
    else:
        module(logits.requires_grad_(True), target, *extra)
    assert not module.pos_grad.any() and not module.neg_grad.any()
    module.train()
    module.update_statistics = True
    ref = make_ref(quality, {})
    close(module(logits, target, *extra), ref.step(logits, target, *extra)[0], torch.float64)


@pytest.mark.parametrize("quality", [False, True], ids=["EFL", "EQFL"])
def test_reduction_shapes(quality):
    gen = torch.Generator().manual_seed(28)
    logits, target, weight, score = batch(gen)
    extra = (score,) if quality else ()
    out = {}
    for reduction in ("none", "sum", "mean"):
        module = make(quality, {"reduction": reduction})
        out[reduction] = module(logits, target, *extra, weight)
    assert out["none"].shape == logits.shape
    assert (out["none"][target == -100] == 0).all()
    num_pos = int(((target >= 0) & (target < C)).sum())
    close(out["sum"], out["none"].sum(), torch.float64)
    close(out["mean"], out["none"].sum() / num_pos, torch.float64)


def test_weights_use_previous_steps_only():
    gen = torch.Generator().manual_seed(29)
    logits, target, _, _ = batch(gen)
    module = EqualizedFocalLoss(C)
    first = module(logits, target)
    second = module(logits, target)
    y = F.one_hot(torch.where(target < 0, C, target), C + 1)[..., :C].double()
    valid = (target >= 0).double()[..., None]
    close(first, (sigmoid_focal_ref(logits, y) * valid).sum() / y.sum(), torch.float64)
    assert abs(float(second) - float(first)) > 1e-3


def test_predict_is_sigmoid():
    module = EqualizedFocalLoss(C)
    z = torch.randn(2, 7, C, dtype=torch.float64)
    module(z, torch.full((2, 7), C))
    close(module.predict(z), 1 / (1 + torch.exp(-z)), torch.float64)


def test_float16_gradient_survives_loss_scaling():
    """The saved gradient is float32: entries below float16's range before the loss scale
    is applied come out right after it."""
    z = torch.full((2, C), -5.0)  # negatives: |dL/dz| ≈ 7e-7, float16 subnormal (9% steps)
    z[0, 0] = 3.0
    x = z.half().requires_grad_(True)
    (EqualizedFocalLoss(C)(x, torch.tensor([0, C])) * 1024.0).backward()
    ref = z.double().requires_grad_(True)
    y = F.one_hot(torch.tensor([0, C]), C + 1)[:, :C].double()
    (sigmoid_focal_ref(ref, y).sum() * 1024.0).backward()
    assert (x.grad != 0).all()
    torch.testing.assert_close(x.grad.double(), ref.grad, rtol=2e-3, atol=0.0)
