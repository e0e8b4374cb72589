"""The peer losses against plain autograd formulas written out here.

Every reference below is built from one-hot targets and explicit formulas on full
``(N, C)`` tensors, independently of the fused engines.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from gloo_ranks import run_ranks
from reference_losses import federated_ref
from torch import Tensor

from eqlosses.functional import LossOutput
from eqlosses.functional.peers import (
    balanced_softmax,
    balanced_softmax_adjustment,
    class_balanced_cross_entropy,
    class_balanced_weights,
    federated_classes,
    federated_loss,
    seesaw_loss,
    sigmoid_focal_loss,
)
from eqlosses.losses.peers import (
    BalancedSoftmax,
    ClassBalancedLoss,
    FederatedLoss,
    FocalLoss,
    SeesawLoss,
)

F64 = torch.float64
IGNORE = -100


# ------------------------------------------------------------------- references


def ref_focal(
    logits: Tensor,
    labels: Tensor,
    gamma: float,
    alpha: float,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | None = None,
) -> Tensor:
    """Sigmoid focal loss; label C = background (all-zero row), IGNORE = dropped row."""
    num_classes = logits.shape[-1]
    keep = labels != IGNORE
    onehot = F.one_hot(torch.where(keep, labels, num_classes), num_classes + 1)[..., :-1]
    y = onehot.to(logits.dtype)
    p = torch.sigmoid(logits)
    one_minus_p = torch.sigmoid(-logits)
    pos = -alpha * one_minus_p.pow(gamma) * F.logsigmoid(logits)
    neg = -(1 - alpha) * p.pow(gamma) * F.logsigmoid(-logits)
    entry = y * pos + (1 - y) * neg
    row = keep.to(logits.dtype)
    if weight is not None:
        row = row * weight
    entry = entry * row.unsqueeze(-1)
    if reduction == "none":
        return entry
    if reduction == "sum":
        return entry.sum()
    positives = ((labels >= 0) & (labels < num_classes)).sum()
    denominator = avg_factor if avg_factor is not None else max(int(positives), 1)
    return entry.sum() / denominator


def ref_ce(
    logits: Tensor,
    labels: Tensor,
    additive: Tensor,
    row_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy on ``logits + additive`` ((C,) or (N, C)), written with one-hot."""
    num_classes = logits.shape[1]
    keep = labels != IGNORE
    onehot = F.one_hot(torch.where(keep, labels, 0), num_classes).to(logits.dtype)
    per_sample = -(onehot * torch.log_softmax(logits + additive, dim=1)).sum(1)
    w = keep.to(logits.dtype)
    if row_weight is not None:
        w = w * row_weight
    per_sample = per_sample * w
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / max(int(keep.sum()), 1)


def ref_log_prior(counts: Tensor, tau: float) -> Tensor:
    n = counts.to(F64).clamp(min=1)
    return tau * torch.log(n / n.sum())


def ref_cb_weights(counts: Tensor, beta: float) -> Tensor:
    n = counts.to(F64).clamp(min=1)
    raw = (1 - beta) / (1 - beta**n)
    return raw / raw.sum() * n.numel()


def ref_seesaw_matrix(
    logits: Tensor, labels: Tensor, counts: Tensor, p: float, q: float, eps: float
) -> Tensor:
    """The full (N, C) Seesaw factor S (1 on the target column), from a detached softmax."""
    safe = torch.where(labels != IGNORE, labels, 0)
    n = counts.to(logits.dtype).clamp(min=1)
    ratio = n[None, :] / n[safe][:, None]
    mitigation = torch.where(ratio < 1, ratio**p, torch.ones_like(ratio))
    scores = torch.softmax(logits.detach(), dim=1)
    own = scores.gather(1, safe[:, None]).clamp(min=eps)
    score_ratio = scores / own
    compensation = torch.where(score_ratio > 1, score_ratio**q, torch.ones_like(score_ratio))
    return mitigation * compensation


def ref_seesaw(
    logits: Tensor,
    labels: Tensor,
    counts: Tensor,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    row_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    num_classes = logits.shape[1]
    s = ref_seesaw_matrix(logits, labels, counts, p, q, eps)
    onehot = F.one_hot(torch.where(labels != IGNORE, labels, 0), num_classes).to(logits.dtype)
    return ref_ce(logits, labels, torch.log(s) * (1 - onehot), row_weight, reduction)


def both_grads(loss_fn, ref_fn, logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad) of ``loss_fn`` and ``ref_fn`` at ``logits`` (summing 'none' outputs)."""
    a = logits.detach().clone().requires_grad_(True)
    b = logits.detach().clone().requires_grad_(True)
    loss_a = loss_fn(a)
    loss_b = ref_fn(b)
    loss_a.sum().backward()
    loss_b.sum().backward()
    assert a.grad is not None and b.grad is not None
    return loss_a.detach(), loss_b.detach(), a.grad, b.grad


def assert_close(actual: Tensor, expected: Tensor, **kwargs: float) -> None:
    torch.testing.assert_close(actual.to(F64), expected.to(F64), **kwargs)


def long_tail_labels(generator: torch.Generator, n: int, num_classes: int) -> Tensor:
    probs = torch.tensor([0.5**j for j in range(num_classes)], dtype=F64)
    return torch.multinomial(probs, n, replacement=True, generator=generator)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ---------------------------------------------------------------------- focal


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, 0.5), (1.5, 0.9)])
def test_focal_matches_reference(gen, reduction, gamma, alpha):
    num_classes = 5
    logits = torch.randn(13, num_classes, generator=gen, dtype=F64) * 3
    labels = torch.randint(0, num_classes + 1, (13,), generator=gen)  # C = background
    labels[[2, 7]] = IGNORE
    weight = torch.rand(13, generator=gen, dtype=F64) + 0.5

    def ours(z):
        out = sigmoid_focal_loss(
            z, labels, gamma=gamma, alpha=alpha, weight=weight, reduction=reduction
        )
        assert isinstance(out, LossOutput)
        return out.loss

    got, want, g_got, g_want = both_grads(
        ours, lambda z: ref_focal(z, labels, gamma, alpha, weight, reduction), logits
    )
    assert got.shape == want.shape
    assert_close(got, want)
    assert_close(g_got, g_want)


def test_focal_classification_mean_divides_by_samples(gen):
    logits = torch.randn(8, 4, generator=gen, dtype=F64)
    labels = torch.randint(0, 4, (8,), generator=gen)
    loss = sigmoid_focal_loss(logits, labels).loss
    want = ref_focal(logits, labels, 2.0, 0.25, reduction="sum") / 8
    assert_close(loss, want)


def test_focal_avg_factor_and_background_first(gen):
    logits = torch.randn(2, 6, 3, generator=gen, dtype=F64)
    labels = torch.randint(0, 4, (2, 6), generator=gen)  # 3 = background
    loss = sigmoid_focal_loss(logits, labels, avg_factor=2.5).loss
    assert_close(loss, ref_focal(logits, labels, 2.0, 0.25, avg_factor=2.5))
    first = torch.where(labels == 3, 0, labels + 1)  # 0 = background, classes 1..C
    again = sigmoid_focal_loss(logits, first, avg_factor=2.5, background_index="first").loss
    assert_close(again, loss)


def test_focal_extreme_logits_float32():
    logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 100.0]])
    labels = torch.tensor([1, 3])
    z = logits.clone().requires_grad_(True)
    loss = sigmoid_focal_loss(z, labels).loss
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert_close(loss, ref_focal(logits.to(F64), labels, 2.0, 0.25), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------- balanced softmax


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_balanced_softmax_matches_reference(gen, reduction, tau):
    counts = torch.tensor([500, 120, 30, 0, 4])
    logits = torch.randn(11, 5, generator=gen, dtype=F64) * 2
    labels = torch.randint(0, 5, (11,), generator=gen)
    labels[3] = IGNORE
    labels[4] = 3  # a class with no training sample
    weight = torch.rand(11, generator=gen, dtype=F64)
    got, want, g_got, g_want = both_grads(
        lambda z: (
            balanced_softmax(z, labels, counts, tau=tau, weight=weight, reduction=reduction).loss
        ),
        lambda z: ref_ce(z, labels, ref_log_prior(counts, tau), weight, reduction),
        logits,
    )
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    assert_close(got, want)
    assert_close(g_got, g_want)


def test_balanced_softmax_per_pixel_and_soft_targets(gen):
    counts = torch.tensor([9000, 900, 90])
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=F64)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    loss = balanced_softmax(logits, labels, counts, reduction="none").loss
    flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, 3)
    want = ref_ce(flat_logits, labels.reshape(-1), ref_log_prior(counts, 1.0), reduction="none")
    assert loss.shape == (2, 4, 5)
    assert_close(loss.reshape(-1), want)
    # one-hot soft targets give the hard-label loss
    flat_labels = labels.reshape(-1)
    soft = F.one_hot(flat_labels, 3).to(F64)
    assert_close(
        balanced_softmax(flat_logits, soft, counts).loss,
        balanced_softmax(flat_logits, flat_labels, counts).loss,
    )


def test_balanced_softmax_tau_zero_and_uniform_counts_are_plain_ce(gen):
    logits = torch.randn(7, 4, generator=gen, dtype=F64)
    labels = torch.randint(0, 4, (7,), generator=gen)
    plain = F.cross_entropy(logits, labels)
    assert_close(balanced_softmax(logits, labels, torch.tensor([9, 1, 1, 5]), tau=0.0).loss, plain)
    assert_close(balanced_softmax(logits, labels, torch.full((4,), 37)).loss, plain)
    assert_close(balanced_softmax(logits, labels, torch.zeros(4)).loss, plain)


def test_balanced_softmax_adjustment_floor():
    adjustment = balanced_softmax_adjustment(torch.tensor([8.0, 2.0, 0.0]))
    assert torch.isfinite(adjustment).all()
    assert_close(adjustment, torch.log(torch.tensor([8.0, 2.0, 1.0], dtype=F64) / 11))


# ------------------------------------------------------------- class-balanced


def test_class_balanced_weights_formula():
    counts = torch.tensor([5000, 300, 20, 1, 0])
    for beta in (0.9, 0.99, 0.9999):
        w = class_balanced_weights(counts, beta)
        assert w.dtype == F64
        assert_close(w, ref_cb_weights(counts, beta))
        assert_close(w.sum(), torch.tensor(5.0, dtype=F64))
        assert w[-1] == w[-2]  # a zero count weighs like one sample
    assert_close(class_balanced_weights(counts, 0.0), torch.ones(5, dtype=F64))
    # β → 1 approaches inverse frequency
    near_one = class_balanced_weights(torch.tensor([100, 10, 1]), 1 - 1e-12)
    inverse = 1 / torch.tensor([100.0, 10.0, 1.0], dtype=F64)
    assert_close(near_one, inverse / inverse.sum() * 3, rtol=1e-6, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_balanced_ce_matches_reference(gen, reduction):
    counts = torch.tensor([800, 200, 50, 10, 0])
    beta = 0.999
    logits = torch.randn(12, 5, generator=gen, dtype=F64) * 2
    labels = torch.randint(0, 5, (12,), generator=gen)
    labels[[0, 5]] = IGNORE
    user_weight = torch.rand(12, generator=gen, dtype=F64) + 0.5
    w = ref_cb_weights(counts, beta)
    row_weight = w[torch.where(labels != IGNORE, labels, 0)] * user_weight
    got, want, g_got, g_want = both_grads(
        lambda z: (
            class_balanced_cross_entropy(
                z, labels, counts, beta=beta, weight=user_weight, reduction=reduction
            ).loss
        ),
        lambda z: ref_ce(z, labels, torch.zeros(5, dtype=F64), row_weight, reduction),
        logits,
    )
    assert got.shape == want.shape
    assert_close(got, want)
    assert_close(g_got, g_want)


def test_class_balanced_mean_differs_from_torch_weighted_mean(gen):
    counts = torch.tensor([800, 200, 50])
    logits = torch.randn(9, 3, generator=gen, dtype=F64)
    labels = torch.randint(0, 3, (9,), generator=gen)
    w = class_balanced_weights(counts, 0.999)
    ours = class_balanced_cross_entropy(logits, labels, counts, beta=0.999).loss
    torch_mean = F.cross_entropy(logits, labels, weight=w)  # divides by Σ w_{y_i}
    assert_close(ours, torch_mean * w[labels].sum() / 9)


# ----------------------------------------------------------------------- seesaw


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("p,q", [(0.8, 2.0), (0.0, 2.0), (0.8, 0.0), (1.5, 1.0)])
def test_seesaw_matches_reference(gen, reduction, p, q):
    counts = torch.tensor([1000, 300, 40, 3, 0, 0])
    logits = torch.randn(20, 6, generator=gen, dtype=F64) * 3
    labels = long_tail_labels(gen, 20, 6)
    labels[[1, 9]] = IGNORE
    labels[10] = 5  # zero count for the label itself: floored at 1
    weight = torch.rand(20, generator=gen, dtype=F64) + 0.5
    got, want, g_got, g_want = both_grads(
        lambda z: (
            seesaw_loss(
                z, labels, counts, p=p, q=q, eps=0.05, weight=weight, reduction=reduction
            ).loss
        ),
        lambda z: ref_seesaw(z, labels, counts, p, q, 0.05, weight, reduction),
        logits,
    )
    assert got.shape == want.shape
    assert_close(got, want)
    assert_close(g_got, g_want)


def test_seesaw_without_factors_is_cross_entropy(gen):
    logits = torch.randn(10, 4, generator=gen, dtype=F64)
    labels = torch.randint(0, 4, (10,), generator=gen)
    loss = seesaw_loss(logits, labels, torch.tensor([100, 10, 1, 0]), p=0.0, q=0.0).loss
    assert_close(loss, F.cross_entropy(logits, labels))


def test_seesaw_extreme_logits_and_inputs_untouched():
    counts = torch.tensor([1000, 10, 0])
    logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 100.0], [-100.0, -100.0, 100.0]])
    labels = torch.tensor([1, 0, 2])
    before = logits.clone()
    z = logits.clone().requires_grad_(True)
    loss = seesaw_loss(z, labels, counts).loss
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    zr = logits.to(F64).requires_grad_(True)
    want = ref_seesaw(zr, labels, counts)
    want.backward()
    assert_close(loss, want, rtol=1e-5, atol=1e-4)
    assert_close(z.grad, zr.grad, rtol=1e-5, atol=1e-5)
    # the engine may hand the callback the caller's own float32 memory
    plain = logits.clone()
    seesaw_loss(plain, labels, counts)
    assert torch.equal(plain, before)


def test_seesaw_per_pixel(gen):
    counts = torch.tensor([5000, 500, 50, 0])
    logits = torch.randn(2, 4, 3, 5, generator=gen, dtype=F64)
    labels = torch.randint(0, 4, (2, 3, 5), generator=gen)
    labels[0, 1, 2] = IGNORE
    loss = seesaw_loss(logits, labels, counts, reduction="none").loss
    flat = logits.permute(0, 2, 3, 1).reshape(-1, 4)
    want = ref_seesaw(flat, labels.reshape(-1), counts, reduction="none")
    assert loss.shape == (2, 3, 5)
    assert_close(loss.reshape(-1), want)
    assert_close(
        seesaw_loss(logits, labels, counts).loss, ref_seesaw(flat, labels.reshape(-1), counts)
    )


def test_seesaw_many_rows_span_blocks(gen):
    # enough rows that the engine walks several blocks: the callback's row slices
    counts = torch.tensor([2000, 700, 90, 9, 1, 0, 30, 300])
    logits = torch.randn(9000, 8, generator=gen)
    labels = long_tail_labels(gen, 9000, 8)
    loss = seesaw_loss(logits, labels, counts, reduction="none").loss
    want = ref_seesaw(logits.to(F64), labels, counts, reduction="none")
    assert_close(loss, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- gradcheck


def test_gradcheck_functional_forms(gen):
    logits = torch.randn(5, 4, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.tensor([0, 3, 2, IGNORE, 1])
    fg_labels = torch.tensor([0, 4, 2, IGNORE, 4])  # 4 = background for the focal loss
    counts = torch.tensor([100, 20, 3, 0])
    weight = torch.rand(5, generator=gen, dtype=F64) + 0.5
    checks = [
        lambda z: sigmoid_focal_loss(z, fg_labels, weight=weight).loss,
        lambda z: sigmoid_focal_loss(z, fg_labels, gamma=1.5, reduction="none").loss,
        lambda z: balanced_softmax(z, labels, counts, tau=0.7, weight=weight).loss,
        lambda z: balanced_softmax(z, labels, counts, reduction="none").loss,
        lambda z: class_balanced_cross_entropy(z, labels, counts, beta=0.99).loss,
        lambda z: class_balanced_cross_entropy(z, labels, counts, reduction="none").loss,
        # with q = 0, S does not depend on the logits, so the loss is exactly differentiable
        lambda z: seesaw_loss(z, labels, counts, q=0.0, weight=weight).loss,
        lambda z: seesaw_loss(z, labels, counts, q=0.0, reduction="none").loss,
    ]
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (logits,))


def test_seesaw_compensation_is_constant_for_autograd(gen):
    # with q > 0 the gradient is softmax(z + log S) - y with S held fixed
    counts = torch.tensor([100, 20, 3])
    logits = torch.randn(6, 3, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.randint(0, 3, (6,), generator=gen)
    seesaw_loss(logits, labels, counts, reduction="sum").loss.backward()
    s = ref_seesaw_matrix(logits, labels, counts, 0.8, 2.0, 1e-2)
    onehot = F.one_hot(labels, 3).to(F64)
    expected = torch.softmax(logits.detach() + torch.log(s) * (1 - onehot), dim=1) - onehot
    assert_close(logits.grad, expected)


# ------------------------------------------------------------------- modules


def test_seesaw_module_counts_accumulate_before_the_loss(gen):
    num_classes = 5
    criterion = SeesawLoss(num_classes, p=0.8, q=2.0, eps=1e-2)
    counts = torch.zeros(num_classes, dtype=F64)
    for step in range(4):
        logits = torch.randn(16, num_classes, generator=gen, dtype=F64)
        labels = long_tail_labels(gen, 16, num_classes - 1)  # the last class is never seen
        labels[step] = IGNORE
        counts += torch.bincount(labels[labels != IGNORE], minlength=num_classes).to(F64)
        got, want, g_got, g_want = both_grads(
            lambda z, labels=labels: criterion(z, labels),
            lambda z, labels=labels, counts=counts: ref_seesaw(z, labels, counts),
            logits,
        )
        assert_close(got, want)
        assert_close(g_got, g_want)
        assert torch.equal(criterion.class_counts, counts)
    assert criterion.class_counts[-1] == 0


def test_seesaw_module_counts_only_when_training(gen):
    criterion = SeesawLoss(3)
    logits = torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0, 1, 1, 2])
    criterion.eval()
    criterion(logits, labels)
    with torch.no_grad():
        criterion.train()
        criterion(logits, labels)
    frozen = SeesawLoss(3, update_statistics=False)
    frozen(logits, labels)
    assert criterion.class_counts.sum() == 0 and frozen.class_counts.sum() == 0
    criterion(logits, labels)
    assert criterion.class_counts.tolist() == [1.0, 2.0, 1.0]
    # a bad batch raises before it is counted
    with pytest.raises(ValueError, match="target"):
        criterion(logits, torch.tensor([0, 1, 7, 2]))
    assert criterion.class_counts.tolist() == [1.0, 2.0, 1.0]
    criterion.reset_statistics()
    assert criterion.class_counts.sum() == 0


def test_seesaw_module_state_dict_and_half(gen):
    criterion = SeesawLoss(3)
    criterion(torch.randn(5, 3, generator=gen), torch.tensor([0, 0, 0, 1, 2]))
    state = criterion.state_dict()
    assert list(state) == ["statistics.counts"]
    restored = SeesawLoss(3)
    restored.load_state_dict(state)
    assert torch.equal(restored.class_counts, criterion.class_counts)
    restored.statistics.counts.fill_(1e6)
    restored.half()
    assert restored.class_counts.dtype == F64 and restored.class_counts[0] == 1e6


def test_count_buffers_stay_float64():
    for criterion in (BalancedSoftmax([100000, 3, 0]), ClassBalancedLoss([100000, 3, 0])):
        criterion.half()
        assert criterion.class_counts.dtype == F64
        assert criterion.class_counts[0] == 100000
        criterion.to(torch.bfloat16)
        assert criterion.class_counts.dtype == F64
        assert list(criterion.state_dict()) == ["class_counts"]
        logits = torch.randn(4, 3).half()
        loss = criterion(logits, torch.tensor([0, 1, 2, 0]))
        assert loss.dtype == torch.float16 and torch.isfinite(loss)


def test_modules_match_functional_forms(gen):
    counts = [400, 40, 4, 0]
    logits = torch.randn(6, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 1, 2, 3, 0, IGNORE])
    fg = torch.tensor([0, 4, 2, 4, 1, IGNORE])
    ct = torch.tensor(counts)
    pairs = [
        (FocalLoss(4, gamma=1.0, alpha=0.3, loss_weight=2.0)(logits, fg),
         2.0 * sigmoid_focal_loss(logits, fg, gamma=1.0, alpha=0.3).loss),
        (BalancedSoftmax(counts, tau=0.5, loss_weight=0.5)(logits, labels),
         0.5 * balanced_softmax(logits, labels, ct, tau=0.5).loss),
        (ClassBalancedLoss(ct, beta=0.99)(logits, labels),
         class_balanced_cross_entropy(logits, labels, ct, beta=0.99).loss),
    ]  # fmt: skip
    for got, want in pairs:
        assert_close(got, want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_reduction_shapes(reduction):
    counts = [50, 5, 1]
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)  # a segmentation batch
    labels = torch.randint(0, 3, (2, 4, 4))
    expected = () if reduction != "none" else (2, 4, 4)
    for criterion in (
        BalancedSoftmax(counts, reduction=reduction),
        ClassBalancedLoss(counts, reduction=reduction),
        SeesawLoss(3, reduction=reduction),
    ):
        loss = criterion(logits, labels)
        assert loss.shape == expected
        loss.sum().backward()
        assert criterion.predict(logits).shape == (2, 3, 4, 4)
        assert_close(criterion.predict(logits).sum(1), torch.ones(2, 4, 4, dtype=F64))
    focal = FocalLoss(3, reduction=reduction)
    flat = torch.randn(7, 3)
    loss = focal(flat, torch.tensor([0, 1, 2, 3, 3, 0, 1]))
    assert loss.shape == (() if reduction != "none" else (7, 3))
    assert torch.equal(focal.predict(flat), torch.sigmoid(flat))


def test_all_ignored_batch_gives_zero(gen):
    logits = torch.randn(3, 3, generator=gen, requires_grad=True)
    labels = torch.full((3,), IGNORE)
    counts = torch.tensor([5, 2, 1])
    for loss in (
        balanced_softmax(logits, labels, counts).loss,
        class_balanced_cross_entropy(logits, labels, counts).loss,
        seesaw_loss(logits, labels, counts).loss,
        sigmoid_focal_loss(logits, labels).loss,
        SeesawLoss(3)(logits, labels),
    ):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.equal(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------- bad input

LOGITS = torch.randn(4, 3)
LABELS = torch.tensor([0, 1, 2, 0])
COUNTS = torch.tensor([10, 5, 1])


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: sigmoid_focal_loss(LOGITS, LABELS, gamma=-1.0), "gamma"),
        (lambda: sigmoid_focal_loss(LOGITS, LABELS, alpha=1.5), "alpha"),
        (lambda: sigmoid_focal_loss(LOGITS, torch.tensor([0, 9, 1, 1])), "target"),
        (lambda: sigmoid_focal_loss(LOGITS, LABELS, reduction="avg"), "reduction"),
        (lambda: sigmoid_focal_loss(LOGITS.long(), LABELS), "logits"),
        (lambda: balanced_softmax(LOGITS, LABELS, COUNTS, tau=-1.0), "tau"),
        (lambda: balanced_softmax(LOGITS, LABELS, torch.tensor([1, 2])), "class_counts"),
        (lambda: balanced_softmax(LOGITS, LABELS, torch.tensor([1, -2, 3])), "class_counts"),
        (lambda: balanced_softmax(LOGITS, LABELS, [1, 2, 3]), "class_counts"),
        (lambda: balanced_softmax(LOGITS[0], LABELS[:1], COUNTS), "logits"),
        (lambda: balanced_softmax(LOGITS, torch.tensor([0, 3, 1, 1]), COUNTS), "target"),
        (lambda: balanced_softmax(LOGITS, LABELS, COUNTS, weight=torch.ones(3)), "weight"),
        (lambda: class_balanced_weights(COUNTS, beta=1.0), "beta"),
        (lambda: class_balanced_weights(torch.tensor([[1, 2]]), beta=0.9), "class_counts"),
        (lambda: class_balanced_cross_entropy(LOGITS, LABELS.float(), COUNTS), "target"),
        (lambda: class_balanced_cross_entropy(LOGITS, torch.tensor([0, 1, -1, 2]), COUNTS),
         "target"),
        (lambda: class_balanced_cross_entropy(LOGITS, LABELS, COUNTS, weight=torch.ones(5)),
         "weight"),
        (lambda: class_balanced_cross_entropy(LOGITS, LABELS, COUNTS, reduction="x"),
         "reduction"),
        (lambda: seesaw_loss(LOGITS, LABELS, COUNTS, p=-0.1), "p"),
        (lambda: seesaw_loss(LOGITS, LABELS, COUNTS, q=float("nan")), "q"),
        (lambda: seesaw_loss(LOGITS, LABELS, COUNTS, eps=0.0), "eps"),
        (lambda: seesaw_loss(LOGITS, LABELS, torch.tensor([1.0, float("inf"), 2.0])),
         "class_counts"),
        (lambda: seesaw_loss(LOGITS, LABELS[:3], COUNTS), "target"),
        (lambda: seesaw_loss(LOGITS, LABELS.float(), COUNTS), "target"),
        (lambda: FocalLoss(0), "num_classes"),
        (lambda: FocalLoss(3, background_index="middle"), "background_index"),
        (lambda: FocalLoss(3)(torch.randn(4, 5), LABELS), "logits"),
        (lambda: BalancedSoftmax([]), "class_counts"),
        (lambda: BalancedSoftmax([3, -1]), "class_counts"),
        (lambda: BalancedSoftmax("abc"), "class_counts"),
        (lambda: BalancedSoftmax([3, 1], label_smoothing=2.0), "label_smoothing"),
        (lambda: ClassBalancedLoss([3, 1], beta=-0.5), "beta"),
        (lambda: ClassBalancedLoss([3, 1], reduction="avg"), "reduction"),
        (lambda: SeesawLoss(3, eps=2.0), "eps"),
        (lambda: SeesawLoss(3)(torch.randn(4, 2), LABELS), "logits"),
        (lambda: SeesawLoss(3).predict(torch.randn(4, 2)), "logits"),
        (lambda: federated_loss(LOGITS, LABELS, COUNTS), "logits"),  # needs C + 1 columns
        (lambda: federated_loss(torch.randn(4, 4), torch.tensor([0, 4, 1, 1]), COUNTS),
         "target"),
        (lambda: federated_loss(torch.randn(4, 4), LABELS.float(), COUNTS), "target"),
        (lambda: federated_loss(torch.randn(4, 4), LABELS[:3], COUNTS), "target"),
        (lambda: federated_loss(torch.randn(4, 4), LABELS, torch.tensor([1, -1, 2])),
         "image_counts"),
        (lambda: federated_loss(torch.randn(4, 4), LABELS, COUNTS, num_sample_classes=0),
         "num_sample_classes"),
        (lambda: federated_loss(torch.randn(4, 4), LABELS, COUNTS, freq_exponent=-1.0),
         "freq_exponent"),
        (lambda: federated_loss(torch.randn(4, 4), LABELS, COUNTS, reduction="avg"),
         "reduction"),
        (lambda: FederatedLoss([3, 1], num_sample_classes=2.5), "num_sample_classes"),
        (lambda: FederatedLoss([]), "image_counts"),
        (lambda: FederatedLoss([3, 1])(torch.randn(4, 2), torch.tensor([0, 1, 2, 2])),
         "logits"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


def test_validate_false_skips_value_checks():
    # out-of-range counts are only found by reading values; shapes are always checked
    out = balanced_softmax(LOGITS, LABELS, torch.tensor([1.0, -5.0, 2.0]), validate=False)
    assert out.loss.dim() == 0
    with pytest.raises(ValueError, match=r"^class_counts:"):
        balanced_softmax(LOGITS, LABELS, torch.tensor([1, 2]), validate=False)


# ---------------------------------------------------------------- federated


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_federated_classes_keeps_positives_and_fills_up_to_the_total():
    counts = torch.tensor([400, 90, 30, 7, 3, 1, 0, 12])
    target = torch.tensor([3, 8, 8, 5, IGNORE, 3])  # 8 = background, IGNORE not a class
    for seed in range(20):
        chosen = federated_classes(target, counts, 4, generator=seeded(seed))
        assert chosen.dtype == torch.bool and chosen.shape == (8,)
        assert chosen[3] and chosen[5]
        assert int(chosen.sum()) == 4
        assert not chosen[6]  # no training image: never drawn
    # more than the batch's classes: no draw, exactly the positives
    assert federated_classes(
        target, counts, 1, generator=seeded()
    ).nonzero().flatten().tolist() == [
        3,
        5,
    ]
    # asking for more than can be drawn stops at the classes with images
    assert int(federated_classes(target, counts, 50, generator=seeded()).sum()) == 7
    # the same seed gives the same draw
    a = federated_classes(target, counts, 5, generator=seeded(7))
    b = federated_classes(target, counts, 5, generator=seeded(7))
    assert torch.equal(a, b)


def test_federated_classes_draw_follows_square_root_frequency():
    counts = torch.tensor([100.0, 25.0, 4.0, 1.0])
    background = torch.tensor([4, 4])
    gen = seeded(3)
    draws = 1500
    hits = torch.zeros(4)
    for _ in range(draws):
        hits += federated_classes(background, counts, 1, generator=gen).float()
    expected = counts.sqrt() / counts.sqrt().sum()  # 10, 5, 2, 1 over 18
    torch.testing.assert_close(hits / draws, expected, atol=0.04, rtol=0.0)
    # exponent 0: uniform over the classes with images
    hits.zero_()
    for _ in range(draws):
        hits += federated_classes(background, counts, 1, freq_exponent=0.0, generator=gen).float()
    torch.testing.assert_close(hits / draws, torch.full((4,), 0.25), atol=0.04, rtol=0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_federated_loss_matches_reference(gen, reduction):
    counts = torch.tensor([300, 80, 20, 9, 4, 2, 1])
    logits = torch.randn(2, 9, 8, generator=gen, dtype=F64)  # (2, 9) RoIs, C + 1 = 8
    target = torch.full((2, 9), 7)
    target[0, :3] = torch.tensor([0, 0, 5])
    target[1, :2] = torch.tensor([1, IGNORE])
    weight = torch.rand(2, 9, generator=gen, dtype=F64) + 0.5
    chosen = federated_classes(target, counts, 4, generator=seeded(11))
    assert chosen[[0, 1, 5]].all() and int(chosen.sum()) == 4
    got, want, g_got, g_want = both_grads(
        lambda z: federated_loss(
            z, target, counts, num_sample_classes=4, generator=seeded(11), weight=weight,
            reduction=reduction,
        ).loss,
        lambda z: federated_ref(z, target, chosen, weight=weight, reduction=reduction),
        logits,
    )  # fmt: skip
    assert_close(got, want)
    assert_close(g_got, g_want)
    # the background column and the classes left out take no gradient
    assert torch.equal(g_got[..., 7], torch.zeros(2, 9, dtype=F64))
    assert torch.equal(
        g_got[..., :7][..., ~chosen], torch.zeros(2, 9, int((~chosen).sum()), dtype=F64)
    )


def test_federated_loss_with_every_class_is_plain_bce(gen):
    logits = torch.randn(6, 4, generator=gen, dtype=F64)
    target = torch.tensor([0, 3, 2, 3, 1, 3])
    y = F.one_hot(target, 4)[:, :3].to(F64)
    want = F.binary_cross_entropy_with_logits(logits[:, :3], y, reduction="sum") / 6
    got = federated_loss(logits, target, torch.tensor([5, 3, 1]), num_sample_classes=3).loss
    assert_close(got, want)


def test_federated_gradcheck(gen):
    logits = torch.randn(5, 6, generator=gen, dtype=F64, requires_grad=True)
    target = torch.tensor([0, 5, 2, IGNORE, 5])
    counts = torch.tensor([40, 9, 6, 2, 1])
    weight = torch.rand(5, generator=gen, dtype=F64) + 0.5
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda z, reduction=reduction: federated_loss(
                z, target, counts, num_sample_classes=3, generator=seeded(5), weight=weight,
                reduction=reduction,
            ).loss,
            (logits,),
        )  # fmt: skip


def test_federated_module(gen):
    counts = [300, 40, 9, 2, 1]
    criterion = FederatedLoss(counts, num_sample_classes=3, loss_weight=2.0, generator=seeded(4))
    logits = torch.randn(8, 6, generator=gen, dtype=F64)
    target = torch.tensor([0, 5, 5, 3, 5, 5, 0, IGNORE])
    got = criterion(logits, target)
    want = (
        2.0
        * federated_loss(
            logits, target, torch.tensor(counts), num_sample_classes=3, generator=seeded(4)
        ).loss
    )
    assert_close(got, want)
    assert torch.equal(criterion.predict(logits), torch.sigmoid(logits[:, :5]))
    # the counts and the generator's state (a resumed run draws the same classes)
    assert list(criterion.state_dict()) == ["image_counts", "_extra_state"]
    criterion.half()
    assert criterion.image_counts.dtype == F64
    with pytest.raises(ValueError, match=r"^logits:"):
        criterion.predict(torch.randn(3, 5))


# -------------------------------------------------------------- distributed

WORLD = 2
STEPS = 3
NUM_CLASSES = 6


def _rank_batch(rank: int, step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    size = 5 + 3 * rank  # the ranks' batches differ in size
    labels = long_tail_labels(g, size, NUM_CLASSES)
    labels[0] = IGNORE
    logits = torch.randn(size, NUM_CLASSES, generator=g, dtype=F64)
    return logits, labels


def _seesaw_records(rank: int) -> dict[str, Tensor]:
    criterion = SeesawLoss(NUM_CLASSES)
    losses = []
    for step in range(STEPS):
        logits, labels = _rank_batch(rank, step)
        logits.requires_grad_(True)
        loss = criterion(logits, labels)
        loss.backward()
        losses.append(loss.detach())
    return {"counts": criterion.class_counts.clone(), "losses": torch.stack(losses)}


def test_seesaw_counts_synchronised_across_ranks(tmp_path: Path):
    # fork (as DataLoader workers do) skips re-importing torch in every child
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    results = run_ranks(_seesaw_records, WORLD, tmp_path, timeout_s=60, start_method=method)

    union = torch.zeros(NUM_CLASSES, dtype=F64)
    expected_losses: list[list[Tensor]] = [[] for _ in range(WORLD)]
    for step in range(STEPS):
        batches = [_rank_batch(r, step) for r in range(WORLD)]
        for _, labels in batches:
            union += torch.bincount(labels[labels != IGNORE], minlength=NUM_CLASSES).to(F64)
        for r, (logits, labels) in enumerate(batches):
            # every rank's loss uses the counts of all ranks, this step included
            expected_losses[r].append(ref_seesaw(logits, labels, union))
    assert torch.equal(results[0]["counts"], results[1]["counts"])
    assert torch.equal(results[0]["counts"], union)
    for r in range(WORLD):
        assert_close(results[r]["losses"], torch.stack(expected_losses[r]))
