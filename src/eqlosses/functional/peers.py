r"""The peer losses: what a user would pick instead of an equalization loss.

Each is a thin layer over one of the fused engines, so it shares their label convention,
reductions, ``ignore_index`` handling, precision and memory behaviour:

* :func:`sigmoid_focal_loss` (Lin et al., ICCV 2017) is the EFL kernel with the constant
  factors ``γ_j = γ`` and ``w_j = 1``.
* :func:`balanced_softmax` (Ren et al., NeurIPS 2020), which is the logit adjustment loss
  (Menon et al., ICLR 2021), is a cross-entropy on ``z + τ log π``.
* :func:`class_balanced_cross_entropy` (Cui et al., CVPR 2019) is a cross-entropy whose
  samples are weighted by the inverse effective number of their class.
* :func:`seesaw_loss` (Wang et al., CVPR 2021) is a cross-entropy whose non-target logits
  are shifted by ``log S_ij``, computed per block of rows.
* :func:`federated_loss` (Zhou et al., 2021) is a sigmoid cross-entropy restricted to the
  classes of the batch plus sampled negative classes, on the weighted-BCE kernel.

They return :class:`LossOutput` like every functional loss. The peers keep no gradient
statistics; the increments are those the engine computes anyway and are there only so
that every functional form has one interface.

Zero counts. Class counts enter only through a logarithm or a power, so every count is
floored at 1 before use: a class with no sample is treated as a class with one. This is
the floor mmdetection's Seesaw loss applies (``cum_samples.clamp(min=1)``), used here for
every count-based peer so that the four agree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_integer, check_number, check_tensor, check_values, reads_values
from ..labels import (
    BackgroundIndex,
    Reduction,
    Rows,
    check_class_vector,
    check_logits,
    prepare_rows,
)
from ._fused import LossOutput, compute_dtype
from .focal import equalized_focal_loss
from .sigmoid import sigmoid_eql
from .softmax import cross_entropy_blocks

__all__ = [
    "balanced_softmax",
    "balanced_softmax_adjustment",
    "class_balanced_cross_entropy",
    "class_balanced_weights",
    "federated_classes",
    "federated_loss",
    "seesaw_loss",
    "sigmoid_focal_loss",
]

# Every class count is floored at this before a log or a power (see the module docstring).
MIN_COUNT = 1.0


# ---------------------------------------------------------------------------- checks


def check_counts(
    class_counts: Tensor, num_classes: int | None, validate: bool, name: str = "class_counts"
) -> Tensor:
    """``class_counts`` as a detached float64 ``(C,)`` tensor; shape always checked,
    values (finite, >= 0) when ``validate`` (not under ``torch.compile``)."""
    check_tensor(name, class_counts)
    if class_counts.is_complex() or class_counts.dtype == torch.bool:
        raise ValueError(f"{name}: expected real counts, got dtype {class_counts.dtype}")
    if num_classes is None:
        if class_counts.dim() != 1 or class_counts.numel() == 0:
            raise ValueError(
                f"{name}: expected a non-empty 1-D tensor, got shape {tuple(class_counts.shape)}"
            )
    else:
        check_class_vector(name, class_counts, num_classes)
    counts = class_counts.detach().to(torch.float64)
    if reads_values(validate):
        check_values(
            counts.isfinite() & (counts >= 0),
            f"{name}: expected finite counts >= 0, got negative or non-finite",
        )
    return counts


def _softmax_layout(logits: Tensor) -> tuple[int, int, tuple[int, ...]]:
    """``(num_classes, class_dim, rows_shape)`` of ``(N, C)`` or ``(N, C, d1, ...)`` logits."""
    check_tensor("logits", logits)
    if logits.dim() < 2:
        raise ValueError(
            f"logits: expected shape (N, C) or (N, C, d1, ...), got {tuple(logits.shape)}"
        )
    num_classes = logits.shape[1]
    class_dim = 1 if logits.dim() > 2 else -1
    check_logits(logits, num_classes, class_dim=class_dim)
    return num_classes, class_dim, (logits.shape[0], *logits.shape[2:])


def _hard_labels(
    target: Tensor,
    logits: Tensor,
    rows_shape: tuple[int, ...],
    num_classes: int,
    ignore_index: int,
    weight: Tensor | None,
    validate: bool,
    loss_name: str,
) -> Rows:
    """The :class:`~eqlosses.labels.Rows` of integer labels in ``[0, C)``."""
    if check_tensor("target", target).is_floating_point():
        raise ValueError(
            f"target: {loss_name} takes integer class labels, got dtype {target.dtype}"
        )
    return prepare_rows(
        target,
        rows_shape,
        num_classes,
        allow_background=False,
        ignore_index=ignore_index,
        weight=weight,
        dtype=compute_dtype(logits),
        validate=validate,
    )


def check_focal_options(gamma: float, alpha: float) -> tuple[float, float]:
    """The focal loss's ``γ >= 0`` and ``α`` in ``[0, 1]`` as floats."""
    return check_number("gamma", gamma, low=0.0), check_number("alpha", alpha, low=0.0, high=1.0)


def check_seesaw_options(p: float, q: float, eps: float) -> tuple[float, float, float]:
    """Seesaw's ``p >= 0``, ``q >= 0`` and ``ε`` in ``(0, 1]`` as floats."""
    return (
        check_number("p", p, low=0.0),
        check_number("q", q, low=0.0),
        check_number("eps", eps, low=0.0, high=1.0, low_open=True),
    )


# ------------------------------------------------------------------- sigmoid focal


def sigmoid_focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float = 0.25,
    avg_factor: float | Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    background_index: BackgroundIndex = "last",
    validate: bool = True,
) -> LossOutput:
    r"""Stateless sigmoid focal loss (Lin et al., ICCV 2017).

    .. math::
        L = \frac{1}{Z}\sum_{i,j} α_t\,(1 - p_t)^{γ}\,(-\log p_t)

    ``p_t = σ(z)`` and ``α_t = α`` on positive entries, ``p_t = 1 - σ(z)`` and
    ``α_t = 1 - α`` on negative ones. It is :func:`equalized_focal_loss` with every
    ``γ_j = γ`` and ``w_j = 1``, computed through ``softplus`` (finite in every dtype).

    ``'mean'`` divides by ``Z``, the number of positive samples (at least 1) or
    ``avg_factor``: the detector convention (RetinaNet normalises by the positive anchors).
    For classification, where every row is positive, ``Z`` is the number of samples.
    :func:`torchvision.ops.sigmoid_focal_loss` with ``reduction='mean'`` divides by the
    number of entries ``N·C`` instead.

    Args:
        logits: ``(..., C)``, no background column.
        target: integer labels ``(...)`` in ``[0, C]`` (``C`` = background: an all-zero
            target row) or ``ignore_index``. Classification labels are simply in
            ``[0, C)``.
        gamma: the focusing parameter ``γ >= 0`` (2).
        alpha: the balance ``α`` in ``[0, 1]`` (0.25).
        avg_factor: the normaliser ``Z`` of ``'mean'`` (default: the positives, >= 1).
        weight: optional per-sample weights ``(...)``.
        reduction: ``'mean'`` (sum / ``Z``), ``'sum'`` or ``'none'`` (per entry).
        ignore_index: label of rows to drop.
        background_index: ``'last'`` (label ``C`` is background) or ``'first'`` (0 is
            background, classes ``1..C``).
        validate: check label values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput` as :func:`equalized_focal_loss` produces it.

    Shape:
        - logits: ``(..., C)``; target and weight: ``(...)``.
        - loss: scalar, or ``(..., C)`` for ``'none'``.

    Example:
        >>> logits = torch.randn(6, 3, requires_grad=True)
        >>> target = torch.tensor([0, 3, 3, 2, 3, 1])  # 3 = background
        >>> out = sigmoid_focal_loss(logits, target)
        >>> out.loss.backward()
    """
    gamma, alpha = check_focal_options(gamma, alpha)
    if not isinstance(logits, Tensor) or logits.dim() < 1:
        check_logits(logits, 0)
    num_classes = logits.shape[-1]
    check_logits(logits, num_classes)
    dtype = compute_dtype(logits)
    focusing = torch.full((num_classes,), gamma, dtype=dtype, device=logits.device)
    weighting = torch.ones(num_classes, dtype=dtype, device=logits.device)
    return equalized_focal_loss(
        logits,
        target,
        focusing,
        weighting,
        alpha=alpha,
        avg_factor=avg_factor,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        background_index=background_index,
        validate=validate,
    )


# ----------------------------------------------------------------- balanced softmax


def balanced_softmax_adjustment(
    class_counts: Tensor, tau: float = 1.0, *, validate: bool = True
) -> Tensor:
    r"""Per-class logit adjustment ``τ log π_j`` of Balanced Softmax / logit adjustment.

    ``π_j = max(n_j, 1) / Σ_k max(n_k, 1)``: the class prior from the counts, each floored
    at 1 so that a class with no sample gets a finite adjustment (that of a class with one
    sample) rather than ``-inf``. The normalising sum is a per-row constant for the
    softmax, so only the floor changes the loss. Returns float64 ``(C,)``.

    Example:
        >>> balanced_softmax_adjustment(torch.tensor([8, 2, 0]))
        tensor([-0.3185, -1.7047, -2.3979], dtype=torch.float64)
    """
    tau = check_number("tau", tau, low=0.0)
    counts = check_counts(class_counts, None, validate).clamp_min(MIN_COUNT)
    return tau * (counts.log() - counts.sum().log())


def balanced_softmax(
    logits: Tensor,
    target: Tensor,
    class_counts: Tensor,
    *,
    tau: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    validate: bool = True,
) -> LossOutput:
    r"""Stateless Balanced Softmax (Ren et al., 2020), i.e. the logit adjustment loss
    (Menon et al., 2021).

    .. math::
        L = \frac{1}{N}\sum_i -\log \frac{e^{z_{iy_i} + τ\log π_{y_i}}}
            {\sum_j e^{z_{ij} + τ\log π_j}},
        \qquad π_j = \frac{\max(n_j, 1)}{\sum_k \max(n_k, 1)}

    Balanced Softmax is ``τ = 1``. A zero count is floored at 1 (see
    :func:`balanced_softmax_adjustment`), so the loss stays finite. At test time use the
    raw logits (plain softmax): the adjustment only applies in training.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)`` (per pixel).
        target: integer labels ``(N)`` / ``(N, d1, ...)`` in ``[0, C)`` or
            ``ignore_index``; or soft targets ``(N, C)``.
        class_counts: ``(C,)`` training samples per class, ``n``.
        tau: ``τ >= 0`` (1).
        weight: optional per-sample weights, the shape of the labels.
        reduction: ``'mean'`` over non-ignored samples, ``'sum'`` or ``'none'`` (per
            sample).
        ignore_index: label of samples to drop.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        validate: check label and count values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput` from the fused cross-entropy (increments unused by this loss).

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``; target: ``(N)``, ``(N, d1, ...)`` or
          ``(N, C)``; loss: scalar, or the labels' shape for ``'none'``.

    Example:
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> out = balanced_softmax(logits, torch.tensor([0, 2, 1, 0]), torch.tensor([90, 9, 1]))
        >>> out.loss.backward()
    """
    num_classes, _, _ = _softmax_layout(logits)
    check_counts(class_counts, num_classes, validate=False)  # shape first, values below
    adjustment = balanced_softmax_adjustment(class_counts, tau, validate=validate)
    return cross_entropy_blocks(
        logits,
        target,
        num_classes=num_classes,
        adjustment=adjustment.to(logits.device),
        entry_adjustment=None,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        validate=validate,
    )


# ----------------------------------------------------------------- class-balanced


def class_balanced_weights(
    class_counts: Tensor, beta: float = 0.9999, *, validate: bool = True
) -> Tensor:
    r"""Class-balanced weights (Cui et al., CVPR 2019): inverse effective numbers.

    .. math::
        w_j = \frac{C\,\tilde w_j}{\sum_k \tilde w_k}, \qquad
        \tilde w_j = \frac{1 - β}{1 - β^{\max(n_j, 1)}}

    ``1 - β^n`` is computed as ``-expm1(n log β)``, exact for ``β`` near 1. ``β = 0``
    gives equal weights; ``β → 1`` approaches inverse class frequency. A zero count is
    floored at 1: a class with no sample gets the largest weight, that of a class with one
    sample (``w̃ = 1``), instead of a division by zero.

    Args:
        class_counts: ``(C,)`` training samples per class.
        beta: ``β`` in ``[0, 1)`` (0.9999).
        validate: check the count values.

    Returns:
        float64 ``(C,)`` weights summing to ``C``.

    Example:
        >>> class_balanced_weights(torch.tensor([1000, 100, 10]), beta=0.999)
        tensor([0.0422, 0.2800, 2.6778], dtype=torch.float64)
    """
    beta = check_number("beta", beta, low=0.0, high=1.0, high_open=True)
    counts = check_counts(class_counts, None, validate).clamp_min(MIN_COUNT)
    if beta == 0.0:
        raw = torch.ones_like(counts)
    else:
        raw = (1.0 - beta) / -torch.expm1(counts * math.log(beta))
    return raw * (counts.numel() / raw.sum())


def class_balanced_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_counts: Tensor,
    *,
    beta: float = 0.9999,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    validate: bool = True,
) -> LossOutput:
    r"""Stateless class-balanced softmax cross-entropy (Cui et al., CVPR 2019).

    .. math::
        L = \frac{1}{N}\sum_i w_{y_i}\,\mathrm{CE}(z_i, y_i)

    with ``w`` from :func:`class_balanced_weights` (summing to ``C``). Each sample's
    weight ``w_{y_i}`` (times the optional ``weight``) goes through the engine's per-sample
    weight. ``'mean'`` divides by ``N``, the number of non-ignored samples, as the
    reference implementation does; :func:`torch.nn.functional.cross_entropy` with
    ``weight=w`` divides by ``Σ_i w_{y_i}`` instead, which cancels the overall scale of the
    weights within each batch (a batch of only tail samples then weighs like a batch of
    head samples).

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        target: integer labels ``(N)`` / ``(N, d1, ...)`` in ``[0, C)`` or
            ``ignore_index`` (no soft targets).
        class_counts: ``(C,)`` training samples per class.
        beta: ``β`` in ``[0, 1)`` (0.9999).
        weight: optional per-sample weights, multiplied with ``w_{y_i}``.
        reduction: ``'mean'`` (sum / ``N``), ``'sum'`` or ``'none'`` (per sample).
        ignore_index: label of samples to drop.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        validate: check label and count values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput` from the fused cross-entropy.

    Example:
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> out = class_balanced_cross_entropy(
        ...     logits, torch.tensor([0, 2, 1, 0]), torch.tensor([90, 9, 1])
        ... )
        >>> out.loss.backward()
    """
    num_classes, _, _ = _softmax_layout(logits)
    check_counts(class_counts, num_classes, validate=False)  # shape first, values below
    class_weight = class_balanced_weights(class_counts, beta, validate=validate)
    return weighted_cross_entropy(
        logits,
        target,
        class_weight,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        validate=validate,
    )


def weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor,
    *,
    weight: Tensor | None,
    reduction: Reduction,
    ignore_index: int,
    label_smoothing: float,
    validate: bool,
) -> LossOutput:
    """Cross-entropy whose samples weigh ``class_weight[y_i]`` (times ``weight``), divided
    by the number of samples for ``'mean'``: the class-balanced loss for given weights."""
    num_classes, _, rows_shape = _softmax_layout(logits)
    rows = _hard_labels(
        target,
        logits,
        rows_shape,
        num_classes,
        ignore_index,
        weight,
        validate,
        "class_balanced_cross_entropy",
    )
    assert rows.labels is not None
    dtype = compute_dtype(logits)
    sample_weight = class_weight.to(device=logits.device, dtype=dtype)[rows.labels]
    if rows.weight is not None:
        sample_weight = sample_weight * rows.weight
    return cross_entropy_blocks(
        logits,
        target,
        num_classes=num_classes,
        adjustment=None,
        entry_adjustment=None,
        weight=sample_weight.reshape(rows_shape),
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        validate=False,  # the labels were checked above
    )


# --------------------------------------------------------------------------- seesaw


def seesaw_loss(
    logits: Tensor,
    target: Tensor,
    class_counts: Tensor,
    *,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    validate: bool = True,
) -> LossOutput:
    r"""Stateless Seesaw loss (Wang et al., CVPR 2021) for given cumulative counts.

    .. math::
        L = \frac{1}{N}\sum_i -\log \frac{e^{z_{iy}}}{e^{z_{iy}} +
            \sum_{j \ne y} S_{ij} e^{z_{ij}}}, \qquad S_{ij} = M_{ij}\,C_{ij}

    (``y = y_i``), i.e. a cross-entropy on ``z_ij + log S_ij`` for ``j ≠ y_i``, with

    * mitigation ``M_ij = (N_j / N_y)^p`` where ``N_j < N_y``, else 1;
    * compensation ``C_ij = (σ_j / max(σ_y, ε))^q`` where that ratio exceeds 1, else 1,
      ``σ`` the softmax of the *detached* raw logits.

    ``S`` is a constant for autograd: the gradient is ``softmax(z + log S) - y``. It is
    never materialised: ``log S`` is computed for one block of rows at a time inside the
    fused cross-entropy.

    As in mmdetection, every count is floored at 1 (``N_j = 0`` acts as ``N_j = 1``, so an
    unseen class gets ``M = N_y^{-p}``, finite), and ``ε`` floors the *divisor* ``σ_y`` of
    the compensation ratio: it bounds ``C_ij`` by ``ε^{-q}`` (``10^4`` at the defaults),
    so a sample whose own class has near-zero probability cannot make ``log S`` blow up.

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        target: integer labels ``(N)`` / ``(N, d1, ...)`` in ``[0, C)`` or
            ``ignore_index``.
        class_counts: ``(C,)`` cumulative samples per class ``N``. The module
            :class:`~eqlosses.losses.peers.SeesawLoss` passes counts that already include
            the current batch, as the published method does.
        p: mitigation exponent ``p >= 0`` (0.8; 0 disables it).
        q: compensation exponent ``q >= 0`` (2; 0 disables it).
        eps: ``ε`` in ``(0, 1]`` (1e-2).
        weight: optional per-sample weights, the shape of the labels.
        reduction: ``'mean'`` over non-ignored samples, ``'sum'`` or ``'none'`` (per
            sample).
        ignore_index: label of samples to drop.
        validate: check label and count values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput` from the fused cross-entropy.

    Example:
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> out = seesaw_loss(logits, torch.tensor([0, 2, 1, 0]), torch.tensor([90, 9, 1]))
        >>> out.loss.backward()
    """
    p, q, eps = check_seesaw_options(p, q, eps)
    num_classes, _, _ = _softmax_layout(logits)
    counts = check_counts(class_counts, num_classes, validate)
    return seesaw_cross_entropy(
        logits,
        target,
        counts,
        p=p,
        q=q,
        eps=eps,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        validate=validate,
    )


def seesaw_cross_entropy(
    logits: Tensor,
    target: Tensor,
    counts: Tensor,
    *,
    p: float,
    q: float,
    eps: float,
    weight: Tensor | None,
    reduction: Reduction,
    ignore_index: int,
    validate: bool,
) -> LossOutput:
    """:func:`seesaw_loss` for counts and options already checked (float64 ``counts``)."""
    num_classes, _, rows_shape = _softmax_layout(logits)
    rows = _hard_labels(
        target, logits, rows_shape, num_classes, ignore_index, weight, validate, "seesaw_loss"
    )
    assert rows.labels is not None
    labels = rows.labels
    dtype = compute_dtype(logits)
    log_counts = counts.clamp_min(MIN_COUNT).log().to(device=logits.device, dtype=dtype)
    log_eps = math.log(eps)

    def log_seesaw(block: Tensor, rows: slice) -> Tensor:
        # ``block``: (rows, C) raw logits, detached, possibly the caller's own memory:
        # never written to.
        label = labels[rows]
        adjusted = block
        if p > 0:
            # p · min(log N_j - log N_y, 0); exactly 0 at j = y
            log_ratio = log_counts.unsqueeze(0) - log_counts[label].unsqueeze(1)
            adjusted = adjusted + log_ratio.clamp_max_(0.0).mul_(p)
        if q > 0:
            # q · max(log σ_j - max(log σ_y, log ε), 0); exactly 0 at j = y
            log_prob = torch.log_softmax(block, dim=1)
            row = torch.arange(label.shape[0], device=label.device)
            log_self = log_prob[row, label].clamp_min(log_eps)
            log_comp = log_prob.sub_(log_self.unsqueeze(1)).clamp_min_(0.0).mul_(q)
            adjusted = adjusted.add_(log_comp) if adjusted is not block else block + log_comp
        return adjusted

    return cross_entropy_blocks(
        logits,
        target,
        num_classes=num_classes,
        adjustment=None,
        entry_adjustment=log_seesaw,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=0.0,
        validate=False,  # the labels were checked above
    )


# ------------------------------------------------------------------------ federated


def check_federated_options(num_sample_classes: int, freq_exponent: float) -> tuple[int, float]:
    """``num_sample_classes`` (an integer >= 1) and ``freq_exponent`` (a finite number
    >= 0), checked."""
    return (
        check_integer("num_sample_classes", num_sample_classes, minimum=1),
        check_number("freq_exponent", freq_exponent, low=0.0),
    )


def federated_classes(
    target: Tensor,
    image_counts: Tensor,
    num_sample_classes: int = 50,
    *,
    freq_exponent: float = 0.5,
    generator: torch.Generator | None = None,
    ignore_index: int = -100,
    validate: bool = True,
) -> Tensor:
    r"""The classes a federated loss trains on in one step, as a bool ``(C,)`` mask.

    Every class that is a positive in ``target`` is in; then, while fewer than
    ``num_sample_classes`` are in, further classes are drawn without replacement with
    probability proportional to ``n_j^{freq_exponent}`` (``n_j`` the training images
    containing class ``j``; 0.5 in CenterNet2). A class with ``n_j = 0`` is never drawn.
    With ``num_sample_classes >= C`` every class is in.

    The draw is the exponential race (the classes with the largest ``n_j^e / E_j``,
    ``E_j ~ Exp(1)``, the sampling :func:`torch.multinomial` does without replacement),
    taken every call, so no value is read on the host.

    Args:
        target: integer labels in ``[0, C]`` (``C`` = background) or ``ignore_index``.
        image_counts: ``(C,)`` training images per class.
        num_sample_classes: the total number of classes to reach (50 in CenterNet2).
        freq_exponent: the exponent of the sampling weights (0.5).
        generator: the random source of the draw (on the device of ``image_counts``).
        ignore_index: label of rows to drop.
        validate: check label and count values (skipped under ``torch.compile``).

    Example:
        >>> mask = federated_classes(torch.tensor([0, 4, 4]), torch.tensor([9, 4, 1, 1]), 2,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> bool(mask[0]), int(mask.sum())
        (True, 2)
    """
    num_sample_classes, freq_exponent = check_federated_options(num_sample_classes, freq_exponent)
    counts = check_counts(image_counts, None, validate, "image_counts")
    rows = prepare_rows(
        check_tensor("target", target),
        target.shape,
        counts.numel(),
        allow_background=True,
        ignore_index=ignore_index,
        validate=validate,
    )
    assert rows.labels is not None
    return _draw_classes(rows.labels, counts, num_sample_classes, freq_exponent, generator)


def _draw_classes(
    labels: Tensor,
    counts: Tensor,
    num_sample_classes: int,
    freq_exponent: float,
    generator: torch.Generator | None,
) -> Tensor:
    num_classes = counts.numel()
    # background (label C) lands in a spare last entry, dropped: it is no class here
    present = torch.zeros(num_classes + 1, dtype=torch.bool, device=counts.device)
    present = present.scatter_(0, labels.to(counts.device), True)[:num_classes]
    # n^0 would be 1 for an absent class too: such a class is never drawn
    sampling = torch.where(counts > 0, counts.pow(freq_exponent), 0.0).masked_fill(present, 0.0)
    noise = torch.empty_like(sampling).exponential_(generator=generator)
    keys = (sampling / noise).masked_fill(present, math.inf)
    top = keys.topk(min(num_sample_classes, num_classes)).indices
    # a key of 0 (never drawn) can be among the top only when too few classes can be
    drawn = torch.zeros_like(present).scatter_(0, top, keys.gather(0, top) > 0)
    return drawn | present


def federated_loss(
    logits: Tensor,
    target: Tensor,
    image_counts: Tensor,
    *,
    num_sample_classes: int = 50,
    freq_exponent: float = 0.5,
    generator: torch.Generator | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    ignore_index: int = -100,
    validate: bool = True,
) -> LossOutput:
    r"""Stateless federated loss (Zhou et al., "Probabilistic two-stage detection", 2021).

    .. math::
        L = \frac{1}{N}\sum_i \sum_{j \in S} \mathrm{BCE}(z_{ij}, y_{ij})

    A sigmoid cross-entropy over the ``C`` foreground columns of a ``C + 1`` layout (the
    background column, last, takes no loss and no gradient; a background sample, label
    ``C``, has an all-zero target row), restricted to the step's class set ``S`` from
    :func:`federated_classes`: the batch's positive classes plus classes drawn with
    probability ``∝ n_j^{0.5}`` up to ``num_sample_classes``. The columns outside ``S``
    are neither pushed down nor up. At test time the scores are ``σ(z_j)`` of the ``C``
    columns.

    Args:
        logits: ``(..., C + 1)``, background column last.
        target: integer labels ``(...)`` in ``[0, C]`` or ``ignore_index``.
        image_counts: ``(C,)`` training images per class (the sampling weights).
        num_sample_classes: ``|S|`` to reach (50 as in CenterNet2).
        freq_exponent: exponent of the sampling weights (0.5).
        generator: the random source of the draw; seed it for a reproducible run.
        weight: optional per-sample weights ``(...)``.
        reduction: ``'mean'`` (sum / non-ignored samples, as CenterNet2 divides by the
            RoIs), ``'sum'`` or ``'none'`` (per entry, ``(..., C)``).
        ignore_index: label of rows to drop.
        validate: check label and count values (skipped under ``torch.compile``).

    Returns:
        :class:`LossOutput` from the weighted-BCE kernel (increments unused).

    Shape:
        - logits: ``(..., C + 1)``; target, weight: ``(...)``.
        - loss: scalar, or ``(..., C)`` for ``'none'``.

    Example:
        >>> logits = torch.randn(4, 4, requires_grad=True)  # 3 classes + background
        >>> out = federated_loss(logits, torch.tensor([0, 3, 3, 2]), torch.tensor([50, 9, 1]),
        ...                      num_sample_classes=2)
        >>> out.loss.backward()
        >>> logits.grad[:, -1].abs().sum().item()  # the background column takes no gradient
        0.0
    """
    num_sample_classes, freq_exponent = check_federated_options(num_sample_classes, freq_exponent)
    counts = check_counts(image_counts, None, validate, "image_counts")
    return sampled_binary_cross_entropy(
        logits,
        target,
        counts,
        num_sample_classes=num_sample_classes,
        freq_exponent=freq_exponent,
        generator=generator,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        validate=validate,
    )


def sampled_binary_cross_entropy(
    logits: Tensor,
    target: Tensor,
    counts: Tensor,
    *,
    num_sample_classes: int,
    freq_exponent: float,
    generator: torch.Generator | None,
    weight: Tensor | None,
    reduction: Reduction,
    ignore_index: int,
    validate: bool,
) -> LossOutput:
    """:func:`federated_loss` for counts and options already checked (float64 ``counts``)."""
    num_classes = counts.numel()
    check_logits(logits, num_classes + 1)
    rows = prepare_rows(
        check_tensor("target", target),
        logits.shape[:-1],
        num_classes,
        allow_background=True,
        ignore_index=ignore_index,
        weight=weight,
        dtype=compute_dtype(logits),
        validate=validate,
    )
    assert rows.labels is not None
    chosen = _draw_classes(rows.labels, counts, num_sample_classes, freq_exponent, generator)
    mask = chosen.to(device=logits.device, dtype=compute_dtype(logits))
    return sigmoid_eql(
        logits[..., :num_classes],
        target,
        mask,
        mask,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        validate=False,  # the labels were checked above
    )
