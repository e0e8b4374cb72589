"""The peer losses as modules, with the conventions of the equalization losses.

Each takes ``reduction``, ``loss_weight``, ``ignore_index`` and ``validate`` and has a
``predict(logits)`` that turns logits into the scores used at test time. Only
:class:`SeesawLoss` is stateful (cumulative class counts); the others hold fixed training
counts (:class:`FederatedLoss` also a random generator). Count buffers are float64 and
stay float64 under ``.half()``, ``.double()`` or ``.to(torch.bfloat16)`` of a parent model
(counts above 65504 overflow float16).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..checks import check_choice, check_flag, check_number
from ..functional.peers import (
    _hard_labels,
    _softmax_layout,
    balanced_softmax_adjustment,
    check_federated_options,
    check_focal_options,
    check_seesaw_options,
    class_balanced_weights,
    sampled_binary_cross_entropy,
    seesaw_cross_entropy,
    sigmoid_focal_loss,
    weighted_cross_entropy,
)
from ..functional.softmax import softmax_eql
from ..labels import BACKGROUND_INDICES, BackgroundIndex, Reduction, check_logits
from ..stats import ClassCounts
from ._base import DeviceGenerators, LossModule, counts_tensor

__all__ = ["BalancedSoftmax", "ClassBalancedLoss", "FederatedLoss", "FocalLoss", "SeesawLoss"]


class _SoftmaxPeer(LossModule):
    """The softmax peers: class scores at dim 1, scored with the plain softmax."""

    def _check_softmax_logits(self, logits: Tensor) -> int:
        """Raise unless ``logits`` has ``num_classes`` columns at dim 1; returns that dim."""
        class_dim = 1 if isinstance(logits, Tensor) and logits.dim() > 1 else -1
        check_logits(logits, self.num_classes, class_dim=class_dim)
        return class_dim

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """Plain softmax of the raw logits over the class dimension (dim 1)."""
        return torch.softmax(logits, dim=self._check_softmax_logits(logits))


class FocalLoss(LossModule):
    r"""Sigmoid focal loss (Lin et al., ICCV 2017).

    .. math::
        L = \frac{1}{Z}\sum_{i,j} α_t\,(1 - p_t)^{γ}\,(-\log p_t)

    ``p_t = σ(z)``, ``α_t = α`` on positives; ``1 - σ(z)``, ``1 - α`` on negatives. The
    Equalized Focal Loss with every class's ``γ_j = γ`` and weight 1, on the same fused
    kernel. ``Z`` is the number of positive samples (at least 1) unless ``avg_factor`` is
    given: for classification, the number of samples.

    Args:
        num_classes: ``C`` (no background column).
        gamma: ``γ >= 0`` (2).
        alpha: ``α`` in ``[0, 1]`` (0.25).
        reduction: ``'mean'`` (sum / ``Z``), ``'sum'`` or ``'none'`` (per entry).
        loss_weight: multiplies the loss.
        ignore_index: label of rows to drop.
        background_index: ``'last'`` (label ``C`` is background) or ``'first'``.
        validate: check label values (skipped under ``torch.compile``).

    Shape:
        - logits: ``(..., C)``; target, weight: ``(...)`` labels in ``[0, C]``
          (``C`` = background; classification labels are in ``[0, C)``).
        - output: scalar, or ``(..., C)`` for ``reduction='none'``.

    Example:
        >>> criterion = FocalLoss(num_classes=3)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.tensor([0, 2, 1, 3])).backward()  # 3 = background
        >>> criterion.predict(logits).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        num_classes: int,
        gamma: float = 2.0,
        alpha: float = 0.25,
        *,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        background_index: BackgroundIndex = "last",
        validate: bool = True,
    ) -> None:
        super().__init__(
            num_classes,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.gamma, self.alpha = check_focal_options(gamma, alpha)
        check_choice("background_index", background_index, BACKGROUND_INDICES)
        self.background_index: BackgroundIndex = background_index

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        check_logits(logits, self.num_classes)
        output = sigmoid_focal_loss(
            logits,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            avg_factor=avg_factor,
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            background_index=self.background_index,
            validate=self.validate,
        )
        return self._weighted(output.loss)

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """Class probabilities ``σ(z)``, ``(..., C)``."""
        check_logits(logits, self.num_classes)
        return torch.sigmoid(logits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, alpha={self.alpha}"


class BalancedSoftmax(_SoftmaxPeer):
    r"""Balanced Softmax (Ren et al., NeurIPS 2020) / logit adjustment loss (Menon et al.,
    ICLR 2021).

    .. math::
        L = \frac{1}{N}\sum_i \mathrm{CE}(z_i + τ\log π,\ y_i), \qquad
        π_j = \frac{\max(n_j, 1)}{\sum_k \max(n_k, 1)}

    The prior ``π`` comes from the training counts ``n``; a class with no sample counts
    as one, so the loss stays finite. ``τ = 1`` is Balanced Softmax. Inference uses the
    raw logits: :meth:`predict` is their plain softmax.

    Args:
        class_counts: training samples per class, ``(C,)``; stored as the float64 buffer
            ``class_counts`` (in ``state_dict``).
        tau: ``τ >= 0`` (1).
        reduction: ``'mean'`` over non-ignored samples, ``'sum'`` or ``'none'`` (per
            sample).
        loss_weight: multiplies the loss.
        ignore_index: label of samples to drop.
        validate: check label values (skipped under ``torch.compile``).
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``.
        - target: ``(N,)`` / ``(N, d1, ...)`` labels in ``[0, C)``, or ``(N, C)`` soft.
        - output: scalar, or per sample for ``reduction='none'``.

    Example:
        >>> criterion = BalancedSoftmax(class_counts=[500, 50, 5])
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.tensor([0, 2, 1, 0])).backward()
        >>> criterion.predict(logits).shape  # softmax of the raw logits
        torch.Size([4, 3])
    """

    class_counts: Tensor

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        tau: float = 1.0,
        *,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        validate: bool = True,
    ) -> None:
        counts = counts_tensor(class_counts)
        super().__init__(
            counts.numel(),
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.tau = check_number("tau", tau, low=0.0)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.register_buffer("class_counts", counts)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        self._check_softmax_logits(logits)
        # the counts were checked when they were set
        adjustment = balanced_softmax_adjustment(self.class_counts, self.tau, validate=False)
        output = softmax_eql(
            logits,
            target,
            adjustment,
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            validate=self.validate,
        )
        return self._weighted(output.loss)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau}"


class ClassBalancedLoss(_SoftmaxPeer):
    r"""Class-balanced softmax cross-entropy (Cui et al., CVPR 2019).

    .. math::
        L = \frac{1}{N}\sum_i w_{y_i}\,\mathrm{CE}(z_i, y_i), \qquad
        w_j \propto \frac{1 - β}{1 - β^{\max(n_j, 1)}}, \quad \sum_j w_j = C

    Each sample is weighted by the inverse effective number of its class.
    ``'mean'`` divides by the number of non-ignored samples, not by the sum of the weights
    as :func:`torch.nn.functional.cross_entropy` with ``weight=`` would. A class with no
    sample counts as one. :meth:`predict` is the plain softmax.

    Args:
        class_counts: training samples per class, ``(C,)``; the float64 buffer
            ``class_counts``.
        beta: ``β`` in ``[0, 1)`` (0.9999).
        reduction: ``'mean'`` over non-ignored samples, ``'sum'`` or ``'none'`` (per
            sample).
        loss_weight: multiplies the loss.
        ignore_index: label of samples to drop.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        validate: check label values (skipped under ``torch.compile``).

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``; target, weight: ``(N,)`` /
          ``(N, d1, ...)`` integer labels.
        - output: scalar, or per sample for ``reduction='none'``.

    Example:
        >>> criterion = ClassBalancedLoss(class_counts=[500, 50, 5], beta=0.99)
        >>> criterion.class_weights
        tensor([0.1261, 0.3172, 2.5566], dtype=torch.float64)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.tensor([0, 2, 1, 0])).backward()
    """

    class_counts: Tensor

    def __init__(
        self,
        class_counts: Sequence[int] | Tensor,
        beta: float = 0.9999,
        *,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        validate: bool = True,
    ) -> None:
        counts = counts_tensor(class_counts)
        super().__init__(
            counts.numel(),
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.beta = check_number("beta", beta, low=0.0, high=1.0, high_open=True)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.register_buffer("class_counts", counts)

    @property
    def class_weights(self) -> Tensor:
        """The per-class weights ``w``, float64 ``(C,)`` summing to ``C``."""
        return class_balanced_weights(self.class_counts, self.beta, validate=False)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        self._check_softmax_logits(logits)
        output = weighted_cross_entropy(
            logits,
            target,
            self.class_weights,
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            validate=self.validate,
        )
        return self._weighted(output.loss)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"


class SeesawLoss(_SoftmaxPeer):
    r"""Seesaw loss (Wang et al., CVPR 2021) with cumulative, synchronised class counts.

    .. math::
        L = \frac{1}{N}\sum_i -\log \frac{e^{z_{iy}}}{e^{z_{iy}} +
            \sum_{j \ne y} S_{ij} e^{z_{ij}}}, \qquad S_{ij} = M_{ij}\,C_{ij}

    Mitigation ``M_ij = (N_j / N_y)^p`` where ``N_j < N_y`` (else 1) lowers the penalty a
    head-class sample puts on a rarer class; compensation ``C_ij = (σ_j / max(σ_y, ε))^q``
    where above 1 (``σ`` the softmax of the detached logits) restores it when the sample
    is misclassified as ``j``. ``S`` is a constant for autograd; counts are floored at 1.
    See :func:`~eqlosses.functional.peers.seesaw_loss`.

    ``N`` is the number of samples of each class seen so far in training, kept in
    ``self.statistics`` (:class:`~eqlosses.stats.ClassCounts`, ``state_dict`` key
    ``statistics.counts``). As in the published method (and mmdetection), a training
    forward first adds the current batch's labels to ``N`` and then computes the loss with
    the updated counts, so a class's first sample already sees ``N_y >= 1``. Counting
    happens when the module is training, grad is enabled and ``update_statistics`` is
    true; ignored labels are not counted. The batch counts are summed over the ranks of
    ``process_group`` (all-reduce) before they are added, so every rank holds the same
    counts, those of the union of the batches; every rank must then run the same number
    of counting forwards.

    Args:
        num_classes: ``C``.
        p: mitigation exponent (0.8).
        q: compensation exponent (2).
        eps: ``ε`` (1e-2), the floor of ``σ_y`` in the compensation ratio.
        reduction: ``'mean'`` over non-ignored samples, ``'sum'`` or ``'none'`` (per
            sample).
        loss_weight: multiplies the loss.
        ignore_index: label of samples to drop.
        validate: check label values (skipped under ``torch.compile``).
        update_statistics: set False to freeze the counts.
        process_group: ranks that share the counts (default group when initialised).

    Shape:
        - logits: ``(N, C)`` or ``(N, C, d1, ...)``; target, weight: ``(N,)`` /
          ``(N, d1, ...)`` integer labels.
        - output: scalar, or per sample for ``reduction='none'``.

    Example:
        >>> criterion = SeesawLoss(num_classes=3)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.tensor([0, 2, 0, 0])).backward()
        >>> criterion.class_counts
        tensor([3., 0., 1.], dtype=torch.float64)
    """

    def __init__(
        self,
        num_classes: int,
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
        *,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        update_statistics: bool = True,
        process_group: dist.ProcessGroup | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(
            num_classes,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.p, self.q, self.eps = check_seesaw_options(p, q, eps)
        self.update_statistics = check_flag("update_statistics", update_statistics)
        self.statistics = ClassCounts(self.num_classes, process_group)

    @property
    def class_counts(self) -> Tensor:
        """Cumulative samples per class ``N``, float64 ``(C,)``."""
        return self.statistics.counts

    def reset_statistics(self) -> None:
        """Forget the counts."""
        self.statistics.reset()

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        self._check_softmax_logits(logits)
        counts = self.class_counts
        batch: Tensor | None = None
        if self.training and self.update_statistics and torch.is_grad_enabled():
            # The labels are checked before they reach the other ranks; the counts change
            # only once the loss exists, so a call that raises leaves them as they were.
            _, _, rows_shape = _softmax_layout(logits)
            rows = _hard_labels(
                target,
                logits,
                rows_shape,
                self.num_classes,
                self.ignore_index,
                weight,
                self.validate,
                "SeesawLoss",
            )
            assert rows.labels is not None
            counted = rows.labels if rows.keep is None else torch.where(rows.keep, rows.labels, -1)
            batch = self.statistics.batch_counts(counted)
            counts = counts + batch
        output = seesaw_cross_entropy(
            logits,
            target,
            counts,
            p=self.p,
            q=self.q,
            eps=self.eps,
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            validate=self.validate and batch is None,
        )
        if batch is not None:
            self.statistics.add(batch)
        return self._weighted(output.loss)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}, q={self.q}, eps={self.eps}"


class FederatedLoss(LossModule):
    r"""Federated loss (Zhou et al., "Probabilistic two-stage detection", 2021).

    .. math::
        L = \frac{1}{N}\sum_i \sum_{j \in S} \mathrm{BCE}(z_{ij}, y_{ij})

    Sigmoid cross-entropy on the ``C`` foreground columns of a ``C + 1`` layout
    (background column last, dropped: no loss, no gradient; a background RoI has an
    all-zero target row), restricted each step to the set ``S`` of the batch's positive
    classes plus classes drawn without replacement with probability
    ``∝ n_j^{freq_exponent}`` until ``|S| = num_sample_classes``. See
    :func:`~eqlosses.functional.peers.federated_loss`. :meth:`predict` is ``σ`` of the
    ``C`` foreground columns.

    Args:
        image_counts: training images per class, ``(C,)``; the float64 buffer
            ``image_counts``.
        num_sample_classes: ``|S|`` (50 in CenterNet2, for LVIS's 1203 classes).
        freq_exponent: exponent of the sampling weights (0.5).
        generator: the random source of the draw (seed it for reproducible runs).
        reduction: ``'mean'`` over non-ignored samples, ``'sum'`` or ``'none'`` (per entry).
        loss_weight: multiplies the loss.
        ignore_index: label of rows to drop.
        validate: check label values (skipped under ``torch.compile``).

    Shape:
        - logits: ``(N, C + 1)``; target, weight: ``(N,)`` labels in ``[0, C]``.
        - output: scalar, or ``(N, C)`` for ``reduction='none'``.

    Example:
        >>> criterion = FederatedLoss([500, 50, 5], num_sample_classes=2,
        ...                           generator=torch.Generator().manual_seed(0))
        >>> logits = torch.randn(4, 4, requires_grad=True)
        >>> criterion(logits, torch.tensor([0, 3, 3, 3])).backward()  # 3 = background
        >>> criterion.predict(logits).shape
        torch.Size([4, 3])
    """

    image_counts: Tensor

    def __init__(
        self,
        image_counts: Sequence[int] | Tensor,
        num_sample_classes: int = 50,
        freq_exponent: float = 0.5,
        *,
        generator: torch.Generator | None = None,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        validate: bool = True,
    ) -> None:
        counts = counts_tensor(image_counts, "image_counts")
        super().__init__(
            counts.numel(),
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            validate=validate,
        )
        self.num_sample_classes, self.freq_exponent = check_federated_options(
            num_sample_classes, freq_exponent
        )
        self.generators = DeviceGenerators(generator)
        self.register_buffer("image_counts", counts)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        output = sampled_binary_cross_entropy(
            logits,
            target,
            self.image_counts,
            num_sample_classes=self.num_sample_classes,
            freq_exponent=self.freq_exponent,
            generator=self.generators.on(self.image_counts.device),
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            validate=self.validate,
        )
        return self._weighted(output.loss)

    def get_extra_state(self) -> dict[str, Any]:
        """The random state of the class draws (see :class:`DeviceGenerators`)."""
        return {"generators": self.generators.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generators.load(state["generators"])

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """Class probabilities ``σ(z_j)`` of the ``C`` foreground columns, ``(..., C)``."""
        check_logits(logits, self.num_classes + 1)
        return torch.sigmoid(logits[..., : self.num_classes])

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_sample_classes={self.num_sample_classes}, "
            f"freq_exponent={self.freq_exponent}"
        )
