"""Plain autograd references of the equalization losses, written from the papers' formulas.

Everything here is deliberately naive: one-hot targets, explicit weight matrices,
``F.binary_cross_entropy_with_logits`` / ``F.log_softmax`` / ``F.logsigmoid`` and
``torch.autograd.grad`` for the statistics wherever the papers define the statistics as the
true gradient. Nothing is imported from ``eqlosses``. Label layout: integer labels in
``[0, C]`` with ``C`` = background (``background_index='first'``: 0 = background, classes
``1..C``), rows equal to ``ignore_index`` dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RATIO_EPS = 1e-10


# --------------------------------------------------------------------------- labels
def one_hot_rows(target, num_classes, *, background_index="last", ignore_index=-100):
    """Integer labels ``(...)`` -> ``(y, valid)``: ``y`` float64 ``(M, C)`` one-hot with an
    all-zero row for background and ignored rows, ``valid`` bool ``(M,)``."""
    labels = target.reshape(-1).long()
    valid = labels != ignore_index
    if background_index == "first":
        labels = torch.where(labels == 0, num_classes, labels - 1)
    labels = torch.where(valid, labels, num_classes)  # park ignored rows on "background"
    y = F.one_hot(labels, num_classes + 1)[:, :num_classes].double()
    return y, valid


def row_multiplier(valid, weight):
    """0 for ignored rows, else the per-sample weight (1 without one)."""
    rows = valid.double()
    return rows if weight is None else rows * weight.reshape(-1).double()


def split_by_target(grad, y):
    """``(pos, neg)``: ``|grad|`` summed over samples, on positive / negative entries."""
    magnitude = grad.abs()
    return (magnitude * y).sum(0), (magnitude * (1 - y)).sum(0)


def reduce_loss(values, reduction, count, shape):
    if reduction == "none":
        return values.reshape(shape)
    if reduction == "sum":
        return values.sum()
    return values.sum() / max(float(count), 1.0)


# --------------------------------------------------------- weighted BCE (EQLv2, EQL v1)
def weighted_bce(z, y, W, rows, reduction, shape):
    """``Σ W·BCE(z, y)`` reduced over ``count`` non-ignored samples; W includes the rows."""
    W = W * rows[:, None]
    entries = W * F.binary_cross_entropy_with_logits(z, y, reduction="none")
    return reduce_loss(entries, reduction, (rows != 0).sum(), shape)


def sigmoid_eql_factors_ref(g, gamma=12.0, mu=0.8, alpha=4.0):
    """EQLv2 (Tan et al., CVPR 2021): ``r = 1 / (1 + exp(-γ (g - μ)))``, ``q = 1 + α (1 - r)``."""
    r = 1.0 / (1.0 + torch.exp(-gamma * (g - mu)))
    return 1.0 + alpha * (1.0 - r), r


def sigmoid_eql_ref(
    logits,
    target,
    q,
    r,
    *,
    objectness=False,
    weight=None,
    reduction="mean",
    ignore_index=-100,
    background_index="last",
):
    """Sigmoid-EQL loss and its statistics ``|σ(z) - y|·W`` split by ``y`` (no 1/N).

    Returns ``(loss, pos, neg)``."""
    C = q.numel()
    z = logits.reshape(-1, logits.shape[-1])
    if target.is_floating_point():
        y = target.reshape(-1, C).double()
        valid = torch.ones(y.shape[0], dtype=torch.bool)
    else:
        y, valid = one_hot_rows(
            target, C, background_index=background_index, ignore_index=ignore_index
        )
    rows = row_multiplier(valid, weight)
    W = q * y + r * (1 - y)
    y_full, W_full = y, W
    if objectness:  # background column last: target 1 on rows without a class, weight 1
        background = (y.sum(1, keepdim=True) == 0).double()
        y_full = torch.cat([y, background], 1)
        W_full = torch.cat([W, torch.ones_like(background)], 1)
    y_full, W_full = y_full.to(z.dtype), W_full.to(z.dtype)
    loss = weighted_bce(z, y_full, W_full, rows.to(z.dtype), reduction, logits.shape)
    with torch.no_grad():
        magnitude = (torch.sigmoid(z[:, :C].double()) - y).abs() * W * rows[:, None]
        pos, neg = (magnitude * y).sum(0), (magnitude * (1 - y)).sum(0)
    return loss, pos, neg


def eql_sigmoid_ref(
    logits,
    target,
    rare,
    *,
    weight=None,
    reduction="mean",
    ignore_index=-100,
    background_index="last",
):
    """EQL v1 sigmoid (Tan et al., CVPR 2020): ``W = 1 - E_i T_j (1 - y_ij)``; statistics
    as Sigmoid-EQL (``|σ(z) - y|·W`` split by ``y``, no 1/N)."""
    C = rare.numel()
    z = logits.reshape(-1, C)
    y, valid = one_hot_rows(target, C, background_index=background_index, ignore_index=ignore_index)
    rows = row_multiplier(valid, weight)
    E = y.sum(1, keepdim=True)  # 1 for a foreground sample
    T = rare.double()[None, :]
    W = 1 - E * T * (1 - y)
    loss = weighted_bce(z, y.to(z.dtype), W.to(z.dtype), rows.to(z.dtype), reduction, logits.shape)
    with torch.no_grad():
        magnitude = (torch.sigmoid(z.double()) - y).abs() * W * rows[:, None]
        pos, neg = (magnitude * y).sum(0), (magnitude * (1 - y)).sum(0)
    return loss, pos, neg


# ------------------------------------------------------ cross-entropy (Softmax-EQL, EQL v1)
def class_last(logits):
    """``(N, C)`` or ``(N, C, d1, ...)`` -> ``(M, C)`` rows in (n, d1, ...) order."""
    if logits.dim() > 2:
        return logits.movedim(1, -1).reshape(-1, logits.shape[1])
    return logits


def softmax_eql_adjustment_ref(indicator, tau=1.0, eps=1e-4, form="canonical"):
    """Softmax-EQL (Tan et al., TPAMI). canonical: ``τ log(max(I_j, ε))``; prior:
    ``log((I_j/Σ I)^τ + 1e-9)`` (0 while ``I`` is all zero, i.e. plain cross-entropy)."""
    ind = indicator.double()
    if form == "canonical":
        return tau * torch.log(torch.clamp(ind, min=eps))
    if float(ind.sum()) == 0.0:
        return torch.zeros_like(ind)
    return torch.log((ind / ind.sum()) ** tau + 1e-9)


def margin_form_ref(logits, labels, indicator, tau=1.0, eps=1e-4):
    """The reference code's margin form: ``τ log(max(I_j,ε)/max(I_y,ε))`` added to the
    non-target columns only. Returns the adjusted ``(N, C)`` logits."""
    floor = torch.clamp(indicator.double(), min=eps)
    margin = tau * torch.log(floor[None, :] / floor[labels][:, None])
    not_target = 1 - F.one_hot(labels, logits.shape[1]).double()
    return logits + margin * not_target


def cross_entropy_ref(
    logits,
    target,
    adjustment=None,
    *,
    dropped=None,
    weight=None,
    reduction="mean",
    ignore_index=-100,
    label_smoothing=0.0,
):
    """Cross-entropy on ``z + adjustment`` (dropped entries removed from the softmax),
    per sample, times the per-sample weight; 'mean' over the samples that count (not
    ignored, weight not 0).

    Returns ``(loss, t)`` with ``t`` the ``(M, C)`` target the statistics split by (the
    one-hot hard label, or the soft target)."""
    C = logits.shape[1]
    z = class_last(logits)
    soft = target.is_floating_point()
    if soft:
        t = target.double()
        if label_smoothing:  # as F.cross_entropy smooths probability targets
            t = t * (1 - label_smoothing) + label_smoothing / C
        valid = torch.ones(t.shape[0], dtype=torch.bool)
    else:
        t, valid = one_hot_rows(target, C, ignore_index=ignore_index)
    rows = row_multiplier(valid, weight)
    zt = z if adjustment is None else z + adjustment.to(z.dtype)
    if dropped is not None:  # in the rows that count; the others are out of the loss
        zt = zt.masked_fill(dropped & (rows != 0)[:, None], float("-inf"))
    log_p = F.log_softmax(zt, dim=1)
    if soft:
        per_sample = -(t.to(z.dtype) * log_p).sum(1)
    else:
        labels = torch.where(valid, target.reshape(-1).long(), 0)
        per_sample = -log_p.gather(1, labels[:, None]).squeeze(1)
        if label_smoothing:
            per_sample = (1 - label_smoothing) * per_sample - label_smoothing * log_p.mean(1)
    per_sample = per_sample * rows.to(z.dtype)
    rows_shape = (logits.shape[0], *logits.shape[2:])
    return reduce_loss(per_sample, reduction, (rows != 0).sum(), rows_shape), t


def eql_softmax_drop_ref(logits, target, rare, drop_prob, generator):
    """EQL v1 softmax: ``β`` per entry from ``torch.rand(shape, generator) < γ`` (the
    documented draw); a rare, non-target entry with β = 1 leaves the denominator."""
    beta = torch.rand(logits.shape, generator=generator) < drop_prob
    valid_fg = (target >= 0) & (target < logits.shape[1])
    is_target = F.one_hot(torch.where(valid_fg, target, 0).long(), logits.shape[1]).bool()
    is_target &= valid_fg[:, None]
    return beta & rare.bool()[None, :] & ~is_target


# --------------------------------------------------------------------- focal (EFL, EQFL)
def efl_factors_ref(g, gamma_b=2.0, scale=8.0):
    """EFL (Li et al., CVPR 2022): ``γ_j = γ_b + s (1 - clamp(g, 0, 1))``, ``w_j = γ_j / γ_b``."""
    gamma = gamma_b + scale * (1 - torch.clamp(g, 0.0, 1.0))
    return gamma, gamma / gamma_b


def focal_normaliser(y, rows, avg_factor):
    """``avg_factor`` as given, else the number of positive samples that count (``rows``
    the per-row multiplier: 0 for ignored or zero-weight rows), at least 1."""
    if avg_factor is not None:
        return float(avg_factor)
    return max(float((y.sum(1) * (rows != 0)).sum()), 1.0)


def efl_ref(
    logits,
    target,
    gamma,
    w,
    *,
    alpha=0.25,
    weight=None,
    reduction="mean",
    avg_factor=None,
    ignore_index=-100,
    background_index="last",
):
    """EFL: ``Σ α_t w_j (1 - p_t)^γ_j (-log p_t) / Z``."""
    C = gamma.numel()
    z = logits.reshape(-1, C)
    y, valid = one_hot_rows(target, C, background_index=background_index, ignore_index=ignore_index)
    yz = y.to(z.dtype)
    log_p, log_1mp = F.logsigmoid(z), F.logsigmoid(-z)  # log σ(z), log(1 - σ(z))
    log_pt = yz * log_p + (1 - yz) * log_1mp
    log_1m_pt = yz * log_1mp + (1 - yz) * log_p
    alpha_t = alpha * yz + (1 - alpha) * (1 - yz)
    g, ww = gamma.to(z.dtype), w.to(z.dtype)
    entries = alpha_t * ww * torch.exp(g * log_1m_pt) * (-log_pt)
    rows = row_multiplier(valid, weight)
    entries = entries * rows.to(z.dtype)[:, None]
    if reduction == "mean":
        return entries.sum() / focal_normaliser(y, rows, avg_factor), y
    return reduce_loss(entries, reduction, 1, logits.shape), y


def eqfl_ref(
    logits,
    target,
    score,
    gamma,
    w,
    *,
    weight=None,
    reduction="mean",
    avg_factor=None,
    ignore_index=-100,
    background_index="last",
):
    """EQFL: ``Σ w_j |t - σ(z)|^γ_j BCE(z, t) / Z`` with ``t = q`` at the class, else 0."""
    C = gamma.numel()
    z = logits.reshape(-1, C)
    y, valid = one_hot_rows(target, C, background_index=background_index, ignore_index=ignore_index)
    t = (y * score.reshape(-1, 1).double()).to(z.dtype)
    modulator = (t - torch.sigmoid(z)).abs() ** gamma.to(z.dtype)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    entries = w.to(z.dtype) * modulator * bce
    rows = row_multiplier(valid, weight)
    entries = entries * rows.to(z.dtype)[:, None]
    if reduction == "mean":
        return entries.sum() / focal_normaliser(y, rows, avg_factor), y
    return reduce_loss(entries, reduction, 1, logits.shape), y


def sigmoid_focal_ref(logits, y, gamma=2.0, alpha=0.25):
    """Plain sigmoid focal loss per entry with ``torch.log(torch.sigmoid(...))``."""
    p = torch.sigmoid(logits)
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return -alpha_t * (1 - p_t) ** gamma * torch.log(p_t)


# ------------------------------------------------------------------ stateful references
class _RefStream:
    """Cumulative float64 pos/neg sums with an update counter ("not yet updated" is state)."""

    initial_ratio = 1.0
    channels_first = False  # softmax losses: (N, C, d1, ...); the others: (..., C)

    def __init__(self, num_classes, loss_weight=1.0):
        self.pos = torch.zeros(num_classes, dtype=torch.float64)
        self.neg = torch.zeros(num_classes, dtype=torch.float64)
        self.updates = 0
        self.loss_weight = loss_weight

    def ratio(self):
        if self.updates == 0:
            return torch.full_like(self.pos, self.initial_ratio)
        return self.pos / (self.neg + RATIO_EPS)

    def _run(self, logits, compute):
        """``compute(z)`` -> ``(loss without loss_weight, pos, neg)``; pos/neg None means
        "the true gradient of the returned loss, split by the target ``t``" (then compute
        returns ``(loss, None, t)``)."""
        z = logits.detach().double().requires_grad_(True)
        loss, pos, neg = compute(z)
        loss = loss * self.loss_weight
        (grad,) = torch.autograd.grad(loss.sum(), z, allow_unused=True)
        grad = torch.zeros_like(z) if grad is None else grad
        if pos is None:
            rows = class_last(grad) if self.channels_first else grad.reshape(-1, len(self.pos))
            pos, neg = split_by_target(rows, neg)
        self.pos += pos
        self.neg += neg
        self.updates += 1
        return loss.detach(), grad


class RefSigmoidEQL(_RefStream):
    initial_ratio = 100.0

    def __init__(self, num_classes, gamma=12.0, mu=0.8, alpha=4.0, loss_weight=1.0, **kw):
        super().__init__(num_classes, loss_weight)
        self.gamma, self.mu, self.alpha, self.kw = gamma, mu, alpha, kw

    def step(self, logits, target, weight=None):
        q, r = sigmoid_eql_factors_ref(self.ratio(), self.gamma, self.mu, self.alpha)
        # statistics: |σ(z) - y|·W, no 1/N, no loss_weight
        return self._run(
            logits, lambda z: sigmoid_eql_ref(z, target, q, r, weight=weight, **self.kw)
        )


class RefSoftmaxEQL(_RefStream):
    channels_first = True

    def __init__(self, num_classes, tau=1.0, eps=1e-4, indicator="pos", form="canonical",
                 loss_weight=1.0, **kw):  # fmt: skip
        super().__init__(num_classes, loss_weight)
        self.tau, self.eps, self.indicator, self.form, self.kw = tau, eps, indicator, form, kw

    def adjustment(self):
        ind = self.pos if self.indicator == "pos" else self.neg
        return softmax_eql_adjustment_ref(ind, self.tau, self.eps, self.form)

    def step(self, logits, target, weight=None):
        a = self.adjustment()

        def compute(z):  # statistics: true gradient of the mean loss incl. loss_weight
            loss, t = cross_entropy_ref(z, target, a, weight=weight, **self.kw)
            return loss, None, t

        return self._run(logits, compute)


class RefEFL(_RefStream):
    def __init__(self, num_classes, gamma_b=2.0, scale=8.0, alpha=0.25, loss_weight=1.0, **kw):
        super().__init__(num_classes, loss_weight)
        self.gamma_b, self.scale, self.alpha, self.kw = gamma_b, scale, alpha, kw

    def factors(self):
        return efl_factors_ref(self.ratio(), self.gamma_b, self.scale)

    def step(self, logits, target, weight=None, avg_factor=None):
        gamma, w = self.factors()

        def compute(z):  # statistics: true gradient of the normalised loss incl. loss_weight
            loss, y = efl_ref(
                z, target, gamma, w, alpha=self.alpha, weight=weight, avg_factor=avg_factor,
                **self.kw,
            )  # fmt: skip
            return loss, None, y

        return self._run(logits, compute)


class RefEQFL(RefEFL):
    def step(self, logits, target, score, weight=None, avg_factor=None):
        gamma, w = self.factors()

        def compute(z):
            loss, y = eqfl_ref(
                z, target, score, gamma, w, weight=weight, avg_factor=avg_factor, **self.kw
            )
            return loss, None, y

        return self._run(logits, compute)


class RefEQLSigmoid(_RefStream):
    """EQL v1 sigmoid; its statistics (diagnostics only) are those of Sigmoid-EQL."""

    def __init__(self, rare, loss_weight=1.0, **kw):
        super().__init__(rare.numel(), loss_weight)
        self.rare, self.kw = rare, kw

    def step(self, logits, target, weight=None):
        return self._run(
            logits, lambda z: eql_sigmoid_ref(z, target, self.rare, weight=weight, **self.kw)
        )


class RefEQLSoftmax(_RefStream):
    """EQL v1 softmax with its own seeded generator; statistics (diagnostics only): the
    true gradient of the mean loss, without loss_weight."""

    def __init__(self, rare, drop_prob, seed, loss_weight=1.0, **kw):
        super().__init__(rare.numel(), loss_weight)
        self.rare, self.drop_prob, self.kw = rare, drop_prob, kw
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, logits, target, weight=None):
        dropped = eql_softmax_drop_ref(logits, target, self.rare, self.drop_prob, self.generator)
        z = logits.detach().double().requires_grad_(True)
        loss, t = cross_entropy_ref(z, target, dropped=dropped, weight=weight, **self.kw)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        pos, neg = split_by_target(grad, t)
        self.pos += pos
        self.neg += neg
        self.updates += 1
        return loss.detach() * self.loss_weight, grad * self.loss_weight


# ---------------------------------------------------------------------- test data
def skewed_labels(n, num_classes, generator, *, background=0.3, ignore=0.1, ignore_index=-100):
    """Long-tailed labels: class j drawn with probability ∝ 2^-j, some background rows
    (label C) and some ignored rows."""
    probs = torch.tensor([2.0**-j for j in range(num_classes)], dtype=torch.float64)
    labels = torch.multinomial(probs, n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator)
    labels = torch.where(u < background, num_classes, labels)
    return torch.where(u > 1 - ignore, ignore_index, labels)


def close(actual, expected, dtype):
    """Tolerances: tight for float64, loose for float32, looser for half types."""
    tol = {
        torch.float64: (1e-9, 1e-11),
        torch.float32: (2e-4, 2e-6),
        torch.float16: (2e-2, 2e-3),
        torch.bfloat16: (5e-2, 1e-2),
    }[dtype]
    actual, expected = actual.detach().double(), expected.detach().double()
    # the same test, cheaply first: assert_close costs milliseconds a call
    if actual.shape == expected.shape and torch.allclose(actual, expected, tol[0], tol[1]):
        return
    torch.testing.assert_close(actual, expected, rtol=tol[0], atol=tol[1])


# ------------------------------------------------------------------- federated loss
def federated_ref(logits, target, chosen, *, weight=None, reduction="mean", ignore_index=-100):
    """Federated loss for a given class set: BCE on the C foreground columns of a C+1
    layout, columns outside ``chosen`` (bool (C,)) weighted 0, background column dropped."""
    num_classes = logits.shape[-1] - 1
    y, valid = one_hot_rows(target, num_classes, ignore_index=ignore_index)
    z = logits.reshape(-1, num_classes + 1)[:, :num_classes]
    W = chosen.double().expand_as(y)
    return weighted_bce(
        z, y, W, row_multiplier(valid, weight), reduction, (*target.shape, num_classes)
    )


# ------------------------------------------------------------ count-based softmax peers
def log_prior_ref(counts, tau=1.0):
    """Balanced Softmax / logit adjustment: ``τ log π_j``, ``π_j = max(n_j, 1) / Σ max(n_k, 1)``."""
    n = torch.clamp(counts.double(), min=1.0)
    return tau * torch.log(n / n.sum())


def class_balanced_weights_ref(counts, beta):
    """Cui et al.: ``w̃_j = (1 - β) / (1 - β^max(n_j, 1))``, scaled to sum to ``C``."""
    n = torch.clamp(counts.double(), min=1.0)
    raw = (1 - beta) / (1 - beta**n)
    return raw / raw.sum() * n.numel()


def seesaw_log_factors_ref(rows, labels, counts, p=0.8, q=2.0, eps=1e-2):
    """``log S_ij`` of the Seesaw loss for ``(M, C)`` logit rows and labels in ``[0, C)``:
    ``S = M·C`` off the target column, 1 on it, with mitigation ``(N_j / N_y)^p`` where
    ``N_j < N_y`` (counts floored at 1) and compensation ``(σ_j / max(σ_y, ε))^q`` where
    above 1, ``σ`` the softmax of the detached logits."""
    n = torch.clamp(counts.double(), min=1.0)
    ratio = n[None, :] / n[labels][:, None]
    mitigation = torch.where(ratio < 1, ratio**p, torch.ones_like(ratio))
    scores = torch.softmax(rows.detach().double(), dim=1)
    own = torch.clamp(scores.gather(1, labels[:, None]), min=eps)
    score_ratio = scores / own
    compensation = torch.where(score_ratio > 1, score_ratio**q, torch.ones_like(score_ratio))
    not_target = 1 - F.one_hot(labels, rows.shape[1]).double()
    return torch.log(mitigation * compensation) * not_target
