"""EQL v1 (sigmoid and softmax forms) against reference_losses.py (Tan et al., CVPR 2020)."""

import csv

import pytest
import torch
import torch.nn.functional as F
from reference_losses import (
    RefEQLSigmoid,
    RefEQLSoftmax,
    close,
    cross_entropy_ref,
    eql_sigmoid_ref,
    eql_softmax_drop_ref,
    skewed_labels,
    split_by_target,
)
from shared_data import SHARED_DATA

from eqlosses import EQL
from eqlosses.functional import eql_sigmoid, eql_softmax

C = 5
STEPS = 5
FLOATS = [torch.float64, torch.float32]
COUNTS = [900, 300, 40, 8, 2]  # of 1000 images; threshold 0.05 -> classes 2, 3, 4 rare
RARE = torch.tensor([False, False, True, True, True])
LVIS = SHARED_DATA / "lvis-category-counts"


def batch(gen, n=30, *, background=0.3):
    logits = 2.0 * torch.randn(n, C, generator=gen, dtype=torch.float64)
    target = skewed_labels(n, C, gen, background=background)
    weight = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    return logits, target, weight


def to_first(target):
    return torch.where(target == C, 0, torch.where(target >= 0, target + 1, target))


# ------------------------------------------------------------------ (1) the streams
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("background_index", ["last", "first"])
def test_sigmoid_stream_matches_reference(dtype, background_index):
    gen = torch.Generator().manual_seed(31)
    module = EQL(COUNTS, 1000, 0.05, loss_weight=0.7, background_index=background_index)
    ref = RefEQLSigmoid(RARE, loss_weight=0.7, background_index=background_index)
    for _ in range(STEPS):
        logits, target, weight = batch(gen)
        if background_index == "first":
            target = to_first(target)
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target, weight.to(dtype))
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target, weight)
        assert loss.dtype == dtype and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("drop_prob", [0.5, 0.9])
def test_softmax_stream_matches_reference(dtype, drop_prob):
    gen = torch.Generator().manual_seed(32)
    module = EQL(COUNTS, 1000, 0.05, activation="softmax", drop_prob=drop_prob,
                 generator=torch.Generator().manual_seed(7), loss_weight=0.7)  # fmt: skip
    ref = RefEQLSoftmax(RARE, drop_prob, seed=7, loss_weight=0.7)
    for _ in range(STEPS):
        logits, target, weight = batch(gen, background=0.0)
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target, weight.to(dtype))
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target, weight)
        assert loss.dtype == dtype and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
        close(module.pos_grad, ref.pos, dtype)
        close(module.neg_grad, ref.neg, dtype)


# --------------------------------------------------------------- (2) gradcheck
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sigmoid_functional_gradcheck_and_values(reduction):
    gen = torch.Generator().manual_seed(33)
    logits, target, weight = batch(gen, n=8)
    logits.requires_grad_(True)
    kw = dict(weight=weight, reduction=reduction)
    fn = lambda z: eql_sigmoid(z, target, RARE, **kw).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))
    out = eql_sigmoid(logits, target, RARE, **kw)
    ref_loss, pos, neg = eql_sigmoid_ref(logits, target, RARE, **kw)
    close(out.loss, ref_loss, torch.float64)
    close(out.pos_increment, pos, torch.float64)
    close(out.neg_increment, neg, torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_functional_gradcheck_and_values(reduction):
    gen = torch.Generator().manual_seed(34)
    logits, target, weight = batch(gen, n=8, background=0.0)
    logits.requires_grad_(True)
    kw = dict(weight=weight, reduction=reduction)

    def fn(z):  # the same draw on every call
        g = torch.Generator().manual_seed(3)
        return eql_softmax(z, target, RARE, 0.6, generator=g, **kw).loss

    assert torch.autograd.gradcheck(fn, (logits,))
    dropped = eql_softmax_drop_ref(logits, target, RARE, 0.6, torch.Generator().manual_seed(3))
    assert dropped.any()
    ref_loss, _ = cross_entropy_ref(logits, target, dropped=dropped, **kw)
    close(fn(logits), ref_loss, torch.float64)
    assert ref_loss.shape == ((8,) if reduction == "none" else ())


# ------------------------------------------------------------- (3) edge values
EDGE_DTYPES = [(torch.float64, 100.0), (torch.float32, 100.0), (torch.float16, 30.0),
               (torch.bfloat16, 30.0)]  # fmt: skip


def edge_batch(kind, big):
    if kind == "empty":
        return torch.zeros(0, C, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    signs = torch.tensor([[1, -1, 1, -1, 1], [-1, 1, -1, 1, -1], [1, 1, 1, 1, 1],
                          [-1, -1, -1, -1, -1], [1, -1, 0, 0, 1], [-1, -1, -1, -1, 1]],
                         dtype=torch.float64)  # fmt: skip
    if kind == "all_background":
        return big * signs, torch.full((6,), C)
    return big * signs, torch.tensor([0, 0, 4, 3, -100, 2])


@pytest.mark.parametrize("dtype, big", EDGE_DTYPES)
@pytest.mark.parametrize("kind", ["saturated", "all_background", "empty"])
def test_sigmoid_edge_values(dtype, big, kind):
    logits, target = edge_batch(kind, big)
    module, ref = EQL(COUNTS, 1000, 0.05, loss_weight=2.0), RefEQLSigmoid(RARE, loss_weight=2.0)
    for _ in range(2):
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
    if kind == "empty":
        assert loss.item() == 0.0


@pytest.mark.parametrize("dtype, big", EDGE_DTYPES)
@pytest.mark.parametrize("kind", ["saturated", "empty"])
def test_softmax_edge_values(dtype, big, kind):
    logits, target = edge_batch(kind, big)
    module = EQL(COUNTS, 1000, 0.05, activation="softmax", drop_prob=0.5,
                 generator=torch.Generator().manual_seed(5), loss_weight=2.0)  # fmt: skip
    ref = RefEQLSoftmax(RARE, 0.5, seed=5, loss_weight=2.0)
    for _ in range(2):
        x = logits.to(dtype).clone().requires_grad_(True)
        loss = module(x, target)
        loss.backward()
        ref_loss, ref_grad = ref.step(x.detach(), target)
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert x.grad.shape == x.shape and x.grad.dtype == dtype
        close(loss, ref_loss, dtype)
        close(x.grad, ref_grad, dtype)
    if kind == "empty":
        assert loss.item() == 0.0


# -------------------------------------------------------------- (4) semantics
def read_counts(name):
    path = LVIS / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    with path.open(newline="") as f:
        return [int(row["image_count"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize(
    "name, num_images, threshold, num_classes, num_rare",
    [("lvis_v1_train.csv", 99_388, 0.0011, 1203, 815),
     ("lvis_v0.5_train.csv", 56_740, 0.00177, 1230, 915)],
)  # fmt: skip
def test_lvis_rare_classes(name, num_images, threshold, num_classes, num_rare):
    counts = read_counts(name)
    assert len(counts) == num_classes
    module = EQL(counts, num_images, threshold)
    assert module.rare.shape == (num_classes,)
    assert int(module.rare.sum()) == num_rare  # the classes under the frequency threshold λ
    expected = torch.tensor([c / num_images < threshold for c in counts])
    assert torch.equal(module.rare.bool(), expected)


def test_rare_is_strictly_below_threshold():
    module = EQL([10, 9, 11, 0], 1000, 0.01)
    assert module.rare.bool().tolist() == [False, True, False, True]


def test_sigmoid_drops_rare_negatives_on_foreground_rows_only():
    z = torch.tensor([[0.5, -1.0, 2.0, 0.3, -0.2], [1.0, 0.4, -0.3, 0.8, 1.5],
                      [0.1, 0.2, 0.3, -0.4, 0.5]], dtype=torch.float64)  # fmt: skip
    target = torch.tensor([0, 3, C])  # class 0, rare class 3, background
    y = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float64)
    W = torch.tensor([[1.0, 1, 0, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(z, y, weight=W, reduction="sum") / 3
    module = EQL(COUNTS, 1000, 0.05)
    close(module(z, target), expected, torch.float64)
    close(module(z, target), expected, torch.float64)  # frequency-based: no feedback


def test_softmax_drop_prob_zero_is_cross_entropy_and_one_drops_all_rare():
    gen = torch.Generator().manual_seed(35)
    logits, target, _ = batch(gen, background=0.0)
    never = EQL(COUNTS, 1000, 0.05, activation="softmax", drop_prob=0.0)
    close(never(logits, target), F.cross_entropy(logits, target), torch.float64)
    always = EQL(COUNTS, 1000, 0.05, activation="softmax", drop_prob=1.0)
    valid = target >= 0
    is_target = F.one_hot(target.clamp_min(0), C).bool()
    masked = logits.masked_fill(RARE[None, :] & ~is_target, float("-inf"))
    expected = F.cross_entropy(masked[valid], target[valid])
    close(always(logits, target), expected, torch.float64)


def test_softmax_draws_reproducible_with_seeded_generator():
    gen = torch.Generator().manual_seed(36)
    batches = [batch(gen, background=0.0)[:2] for _ in range(3)]

    def run(seed):
        module = EQL(COUNTS, 1000, 0.05, activation="softmax", drop_prob=0.5,
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return torch.stack([module(logits, target) for logits, target in batches])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_predict(activation):
    module = EQL(COUNTS, 1000, 0.05, activation=activation, drop_prob=0.5)
    z = torch.randn(4, C, dtype=torch.float64)
    expected = (
        torch.sigmoid(z)
        if activation == "sigmoid"
        else torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    )
    close(module.predict(z), expected, torch.float64)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("mode", ["eval", "no_grad", "update_statistics_false"])
def test_statistics_frozen(activation, mode):
    gen = torch.Generator().manual_seed(37)
    logits, target, _ = batch(gen, background=0.0 if activation == "softmax" else 0.3)
    module = EQL(COUNTS, 1000, 0.05, activation=activation, drop_prob=0.5,
                 update_statistics=mode != "update_statistics_false")  # fmt: skip
    if mode == "eval":
        module.eval()
        module(logits.requires_grad_(True), target)
    elif mode == "no_grad":
        with torch.no_grad():
            module(logits, target)
    else:
        module(logits.requires_grad_(True), target)
    assert not module.pos_grad.any() and not module.neg_grad.any()


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_reduction_shapes(activation):
    gen = torch.Generator().manual_seed(38)
    logits, target, weight = batch(gen, background=0.0 if activation == "softmax" else 0.3)
    out = {}
    for reduction in ("none", "sum", "mean"):
        module = EQL(COUNTS, 1000, 0.05, activation=activation, drop_prob=0.5,
                     generator=torch.Generator().manual_seed(1), reduction=reduction)  # fmt: skip
        out[reduction] = module(logits, target, weight)
    assert out["none"].shape == ((30, C) if activation == "sigmoid" else (30,))
    close(out["sum"], out["none"].sum(), torch.float64)
    close(out["mean"], out["none"].sum() / int((target != -100).sum()), torch.float64)


def test_softmax_statistics_split_by_label():
    """Diagnostics of the softmax form: |softmax(z̃) - y| / N split by the label."""
    logits = torch.zeros(2, 3, dtype=torch.float64)
    module = EQL([100, 100, 100], 100, 0.5, activation="softmax", drop_prob=1.0)  # none rare
    x = logits.clone().requires_grad_(True)
    module(x, torch.tensor([0, 0])).backward()
    pos, neg = split_by_target(x.grad, F.one_hot(torch.tensor([0, 0]), 3).double())
    close(module.pos_grad, pos, torch.float64)
    close(module.neg_grad, neg, torch.float64)
    close(pos, torch.tensor([4 / 3, 0, 0], dtype=torch.float64) / 2, torch.float64)
