"""The equalization losses as mmdetection 3 classification losses.

Importing this module (for example through a config's
``custom_imports=dict(imports=['eqlosses.integrations.mmdet'])``) registers in mmdet's
``MODELS`` registry :class:`SigmoidEQL`, :class:`SoftmaxEQL`, :class:`EQL`,
:class:`EqualizedFocalLoss` and :class:`EqualizedQualityFocalLoss`, and in its ``HOOKS``
registry :class:`CommitStatisticsHook`.

Each loss takes mmdet's call ``loss_cls(cls_score, labels, weight, avg_factor=...,
reduction_override=...)`` with mmdet's labels (``0..C-1`` the classes, ``C`` the
background): ``weight`` (the head's ``label_weights``) weighs each row's loss and
statistics, and ``avg_factor`` replaces the loss's own normaliser of ``'mean'`` (used as
given, any finite number > 0, as mmdet divides by it).

One statistics update per training step: a dense head calls its classification loss
once per FPN level, and every call of a step must see the same statistics. So a call
adds its statistics increments to a pending step, and the pending step enters the
statistics (one :meth:`~eqlosses.GradientStatistics.update`, so one all-reduce) when

* :class:`CommitStatisticsHook` ends the training iteration (the configs in the
  repository add it to ``custom_hooks``), or
* the first call of the next training iteration finds the iteration changed in
  mmengine's ``MessageHub`` (what mmengine's train loops record), or
* code that drives the model by hand calls :meth:`MMDetStatisticsLoss.commit_statistics`.

The calls of a step may pass different normalisers (``avg_factor``); each call's
increments are rescaled to the first call's normaliser, so the update adds what separate
updates per call would have added. The pending step is saved in the model's
``state_dict`` (as extra state, which DistributedDataParallel never broadcasts) next to
the statistics' buffers.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from mmdet.registry import HOOKS, MODELS
from mmengine.fileio import load
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from torch import Tensor, nn

import eqlosses
from eqlosses import StatisticsLoss
from eqlosses import functional as F
from eqlosses.checks import check_tensor
from eqlosses.functional import LossOutput
from eqlosses.functional._fused import compute_dtype
from eqlosses.functional.focal import check_avg_factor
from eqlosses.labels import REDUCTIONS, Reduction

__all__ = [
    "EQL",
    "CommitStatisticsHook",
    "EqualizedFocalLoss",
    "EqualizedQualityFocalLoss",
    "MMDetStatisticsLoss",
    "SigmoidEQL",
    "SoftmaxEQL",
]

PENDING_KEYS = (
    "calls",
    "iteration",
    "pos",
    "neg",
    "normaliser",
    "normaliser_floor",
    "num_samples",
    "loss",
)


def _current_iteration() -> int | None:
    """The training iteration mmengine's loop is in, or ``None`` outside such a loop."""
    iteration = MessageHub.get_current_instance().get_info("iter")
    return iteration if isinstance(iteration, int) else None


def _divisor(value: Tensor | float | None, floor: float) -> Tensor | float:
    # ``None`` is "not normalised", i.e. divided by 1; a count of the batch below 1 counts
    # as 1 (``floor``), a divisor the head gave is used as given (floor 0)
    if isinstance(value, Tensor):
        value = value.to(torch.float64)
        return value.clamp_min(floor) if floor > 0 else value
    return max(1.0 if value is None else float(value), floor)


def _normaliser_ratio(
    step: Tensor | float | None, call: Tensor | float | None, floor: float
) -> Tensor | float | None:
    """The factor that moves a call's increments from its normaliser to the step's;
    ``None`` when it is 1 and known on the host."""
    if step is call:
        return None
    ratio = _divisor(step, floor) / _divisor(call, floor)
    if isinstance(ratio, float) and ratio == 1.0:
        return None
    return ratio


class _PendingStep:
    """The statistics increments of the training step in progress.

    ``normaliser`` is the first call's; later calls are rescaled to it. An empty step
    holds zeros, normaliser 0 and no sample, which is what a rank without a call of the
    step contributes to the ranks' sums.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.clear()

    def clear(self) -> None:
        self.calls = 0
        self.iteration: int | None = None
        self.pos = torch.zeros(self.num_classes, dtype=torch.float64)
        self.neg = torch.zeros(self.num_classes, dtype=torch.float64)
        self.normaliser: Tensor | float | None = 0.0
        # see GradientStatistics.update: 0 for a divisor the head gave, 1 for a count
        self.normaliser_floor = 1.0
        self.num_samples: Tensor | float = 0.0
        self.loss = torch.zeros((), dtype=torch.float64)

    def add(
        self,
        pos: Tensor,
        neg: Tensor,
        normaliser: Tensor | float | None,
        normaliser_floor: float,
        num_samples: Tensor | float,
        loss: Tensor,
        iteration: int | None,
    ) -> None:
        pos = pos.to(torch.float64)
        neg = neg.to(torch.float64)
        # any non-finite loss entry makes the sum non-finite, which drops the step
        loss_total = loss.detach().sum(dtype=torch.float64)
        if self.calls == 0:
            self.iteration = iteration
            self.normaliser = normaliser
            self.normaliser_floor = normaliser_floor
            self.pos, self.neg, self.loss = pos, neg, loss_total
            self.num_samples = num_samples
        else:
            ratio = _normaliser_ratio(self.normaliser, normaliser, self.normaliser_floor)
            if ratio is not None:
                pos, neg = pos * ratio, neg * ratio
            # out of place: the previous tensors may be referenced by a state_dict
            self.pos = self.pos.to(pos.device) + pos
            self.neg = self.neg.to(neg.device) + neg
            self.loss = self.loss.to(loss_total.device) + loss_total
            self.num_samples = self.num_samples + num_samples
        self.calls += 1

    def state(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "iteration": self.iteration,
            "pos": self.pos,
            "neg": self.neg,
            "normaliser": self.normaliser,
            "normaliser_floor": self.normaliser_floor,
            "num_samples": self.num_samples,
            "loss": self.loss,
        }

    def load(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != set(PENDING_KEYS):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"state_dict: expected the pending step's entries {list(PENDING_KEYS)}, got {found}"
            )
        for key in ("pos", "neg"):
            value = state[key]
            if not isinstance(value, Tensor) or value.shape != (self.num_classes,):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"state_dict: expected the pending step's {key!r} of shape "
                    f"({self.num_classes},), got {shape}"
                )
        self.calls = int(state["calls"])
        self.iteration = state["iteration"]
        self.pos = state["pos"].to(torch.float64)
        self.neg = state["neg"].to(torch.float64)
        self.normaliser = state["normaliser"]
        self.normaliser_floor = float(state["normaliser_floor"])
        self.num_samples = state["num_samples"]
        self.loss = state["loss"]


def _mean_normaliser(
    reduction: Reduction, avg_factor: float | Tensor | None, cls_score: Tensor, validate: bool
) -> Tensor | float | None:
    """The normaliser of ``'mean'`` the head gave, as given; ``None``: the loss's own.

    ``'none'`` ignores ``avg_factor`` (mmdet's heads pass it along with
    ``reduction_override='none'``); ``'sum'`` with an ``avg_factor`` is an error, as in
    mmdet.
    """
    if avg_factor is None or reduction == "none":
        return None
    if reduction == "sum":
        raise ValueError(
            f"avg_factor: only used with reduction 'mean', got {avg_factor} with reduction 'sum'"
        )
    check_tensor("cls_score", cls_score)
    return check_avg_factor(avg_factor, cls_score.device, compute_dtype(cls_score), validate)


def _percent(correct: Tensor) -> Tensor:
    """Share of true entries in percent (mmdet's accuracy unit); 0 for no entry."""
    if correct.numel() == 0:
        return correct.new_zeros((), dtype=torch.float32)
    return correct.float().mean() * 100.0


def _check_use_sigmoid(name: str, use_sigmoid: bool, expected: bool) -> None:
    # mmdet's dense heads size their output from the config's ``use_sigmoid``
    if use_sigmoid != expected:
        raise ValueError(
            f"use_sigmoid: {name} is a {'sigmoid' if expected else 'softmax'} loss, expected "
            f"{expected}, got {use_sigmoid!r}"
        )


class MMDetStatisticsLoss(nn.Module):
    """Base of the mmdet losses: a library loss (``criterion``) behind mmdet's contract.

    ``criterion`` holds the statistics (``criterion.statistics``, its ``grad_ratio``)
    and the loss's settings. A call in training mode with grad enabled (and
    ``criterion.update_statistics``) adds its increments to the pending step; see the
    module's description for when that step enters the statistics.

    Args:
        criterion: the library module whose factors and statistics are used.
    """

    def __init__(self, criterion: StatisticsLoss) -> None:
        super().__init__()
        self.criterion = criterion
        self._pending = _PendingStep(criterion.num_classes)

    @property
    def num_classes(self) -> int:
        """``C``, the number of foreground classes."""
        return self.criterion.num_classes

    @property
    def pending_calls(self) -> int:
        """Calls recorded in the step not yet committed to the statistics."""
        return self._pending.calls

    @torch.no_grad()
    def commit_statistics(self) -> Tensor:
        """Add the pending step to the statistics: one update; returns whether it was
        accepted (bool tensor).

        Under ``torch.distributed`` every rank must call this once per step, a rank that
        had no call in the step included (it adds nothing), since the update joins one
        all-reduce. A step without any sample on any rank is dropped.
        """
        pending = self._pending
        accepted = self.criterion.statistics.update(
            pending.pos,
            pending.neg,
            pending.normaliser,
            num_samples=pending.num_samples,
            loss=pending.loss,
            normaliser_floor=pending.normaliser_floor,
        )
        pending.clear()
        return accepted

    def _begin(self) -> tuple[bool, int | None]:
        """Whether this call records increments, and the iteration it belongs to; a
        pending step of an earlier iteration is committed first, so the call's factors
        include it."""
        criterion = self.criterion
        if not (self.training and criterion.update_statistics and torch.is_grad_enabled()):
            return False, None
        iteration = _current_iteration()
        pending = self._pending
        if pending.calls > 0 and iteration is not None and iteration != pending.iteration:
            self.commit_statistics()
        return True, iteration

    def _record(
        self,
        output: LossOutput,
        normaliser: Tensor | float | None,
        iteration: int | None,
        *,
        given: bool,
    ) -> None:
        """Add a call's increments to the pending step; ``given``: ``normaliser`` is the
        head's ``avg_factor`` (used as given), not a count of the batch."""
        pos, neg = output.pos_increment, output.neg_increment
        criterion = self.criterion
        if criterion.statistics_include_loss_weight and criterion.loss_weight != 1.0:
            pos, neg = pos * criterion.loss_weight, neg * criterion.loss_weight
        floor = 0.0 if given else 1.0
        self._pending.add(pos, neg, normaliser, floor, output.num_samples, output.loss, iteration)

    def _reduction(self, reduction_override: str | None) -> Reduction:
        """The call's reduction: ``reduction_override``, else the loss's own."""
        if reduction_override is None:
            return self.criterion.reduction
        for choice in REDUCTIONS:
            if reduction_override == choice:
                return choice
        expected = ", ".join(repr(r) for r in REDUCTIONS)
        raise ValueError(
            f"reduction_override: expected one of {expected} or None, got {reduction_override!r}"
        )

    def _weighted(self, loss: Tensor) -> Tensor:
        loss_weight = self.criterion.loss_weight
        return loss if loss_weight == 1.0 else loss * loss_weight

    def _check_head_classes(self, num_classes: int) -> None:
        if num_classes != self.num_classes:
            raise ValueError(
                f"num_classes: the head has {num_classes} classes, the loss was built for "
                f"{self.num_classes}"
            )

    def get_extra_state(self) -> dict[str, Any]:
        """The pending step, saved in ``state_dict`` beside the statistics."""
        return self._pending.state()

    def set_extra_state(self, state: Any) -> None:
        self._pending.load(state)


class SigmoidEQL(MMDetStatisticsLoss):
    r"""Sigmoid-EQL (EQLv2) for mmdet's two-stage box heads (``BBoxHead`` family).

    The head predicts ``C + 1`` logits, the background (objectness) column last: it
    takes the loss with weight 1 and stays out of the statistics. Test-time scores are
    ``σ(z_c)(1 - σ(z_bg))``, with ``σ(z_bg)`` as the background column mmdet drops.
    The loss is :func:`eqlosses.functional.sigmoid_eql`; the statistics are not
    normalised.

    Args:
        num_classes: ``C``, the head's ``num_classes``.
        gamma, mu, alpha: the weight mapping's ``γ`` (12), ``μ`` (0.8), ``α`` (4).
        use_sigmoid: must be True (read by mmdet's heads from the config).
        reduction: ``'mean'`` (over the rows, or ``avg_factor``), ``'sum'`` or ``'none'``
            (per entry).
        loss_weight: multiplies the loss (not the statistics).
        update_statistics: False freezes the statistics.
        validate: check label values.

    Example:
        >>> criterion = SigmoidEQL(num_classes=3)
        >>> criterion.get_cls_channels(3)
        4
        >>> cls_score = torch.randn(6, 4, requires_grad=True)
        >>> labels = torch.tensor([0, 2, 3, 3, 1, 3])  # 3 = background
        >>> loss = criterion(cls_score, labels, torch.ones(6), avg_factor=6.0)
        >>> loss.backward()
        >>> criterion.get_activation(cls_score).shape
        torch.Size([6, 4])
    """

    custom_cls_channels = True
    custom_activation = True
    custom_accuracy = True
    use_sigmoid = True
    criterion: eqlosses.SigmoidEQL

    def __init__(
        self,
        num_classes: int,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        *,
        use_sigmoid: bool = True,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        update_statistics: bool = True,
        validate: bool = True,
    ) -> None:
        _check_use_sigmoid("SigmoidEQL", use_sigmoid, True)
        super().__init__(
            eqlosses.SigmoidEQL(
                num_classes,
                gamma,
                mu,
                alpha,
                objectness=True,
                reduction=reduction,
                loss_weight=loss_weight,
                update_statistics=update_statistics,
                validate=validate,
            )
        )

    def get_cls_channels(self, num_classes: int) -> int:
        """``C + 1``: the classes and the objectness column."""
        self._check_head_classes(num_classes)
        return num_classes + 1

    @torch.no_grad()
    def get_activation(self, cls_score: Tensor) -> Tensor:
        """``(N, C + 1)``: ``σ(z_c)(1 - σ(z_bg))`` per class, then ``σ(z_bg)``."""
        background = torch.sigmoid(cls_score[..., -1:])
        return torch.cat([self.criterion.predict(cls_score), background], dim=-1)

    @torch.no_grad()
    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``acc_objectness``: background told apart (``σ(z_bg) > 0.5``), in percent;
        ``acc_classes``: top-1 class of the foreground rows, in percent."""
        is_background = labels == self.num_classes
        objectness_correct = (cls_score[..., -1] > 0) == is_background
        foreground = ~is_background
        class_correct = cls_score[foreground, :-1].argmax(-1) == labels[foreground]
        return {
            "acc_objectness": _percent(objectness_correct),
            "acc_classes": _percent(class_correct),
        }

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        criterion = self.criterion
        reduction = self._reduction(reduction_override)
        normaliser = _mean_normaliser(reduction, avg_factor, cls_score, criterion.validate)
        recording, iteration = self._begin()
        pos_weight, neg_weight = criterion.factors()
        output = F.sigmoid_eql(
            cls_score,
            labels,
            pos_weight,
            neg_weight,
            objectness=True,
            weight=weight,
            reduction="sum" if normaliser is not None else reduction,
            validate=criterion.validate,
        )
        if recording:
            self._record(output, output.normaliser, iteration, given=normaliser is not None)
        loss = output.loss if normaliser is None else output.loss / normaliser
        return self._weighted(loss)


class EQL(MMDetStatisticsLoss):
    r"""Equalization loss v1 (sigmoid form) for mmdet's two-stage box heads.

    The head predicts ``C`` logits (no background column; a background row's targets
    are all zero). On foreground rows the negatives of rare classes (image frequency
    below ``threshold``) are dropped. Test-time scores are ``σ(z)`` with a zero
    background column. The loss is :func:`eqlosses.functional.eql_sigmoid`; its
    statistics are recorded for diagnostics only.

    The class frequencies come either from an LVIS-format annotation file
    (``ann_file``: its categories' ``image_count`` in the order of their ids, and its
    number of images) or from ``image_counts`` and ``num_images``.

    Args:
        num_classes: ``C``, the head's ``num_classes``.
        threshold: ``λ`` (0.0011 for LVIS v1, 0.00177 for LVIS v0.5).
        ann_file: the training annotation file to count from.
        image_counts, num_images: the counts themselves, instead of ``ann_file``.
        use_sigmoid, reduction, loss_weight, update_statistics, validate: as
            :class:`SigmoidEQL`.

    Example:
        >>> criterion = EQL(3, 0.05, image_counts=[900, 40, 3], num_images=1000)
        >>> cls_score = torch.randn(4, 3, requires_grad=True)
        >>> criterion(cls_score, torch.tensor([0, 1, 3, 3]), torch.ones(4)).backward()
        >>> criterion.get_activation(cls_score).shape
        torch.Size([4, 4])
    """

    custom_cls_channels = True
    custom_activation = True
    custom_accuracy = True
    use_sigmoid = True
    criterion: eqlosses.EQL

    def __init__(
        self,
        num_classes: int,
        threshold: float,
        *,
        ann_file: str | None = None,
        image_counts: list[int] | None = None,
        num_images: int | None = None,
        use_sigmoid: bool = True,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        update_statistics: bool = True,
        validate: bool = True,
    ) -> None:
        _check_use_sigmoid("EQL", use_sigmoid, True)
        if ann_file is not None:
            if image_counts is not None or num_images is not None:
                raise ValueError(
                    "ann_file: expected either ann_file or image_counts and num_images, got both"
                )
            image_counts, num_images = _lvis_image_counts(ann_file)
        elif image_counts is None or num_images is None:
            raise ValueError(
                "image_counts, num_images: expected both (or ann_file), got "
                f"image_counts={'given' if image_counts is not None else None}, "
                f"num_images={num_images}"
            )
        if len(image_counts) != num_classes:
            raise ValueError(
                f"image_counts: expected {num_classes} counts (num_classes), got "
                f"{len(image_counts)}"
            )
        super().__init__(
            eqlosses.EQL(
                image_counts,
                num_images,
                threshold,
                reduction=reduction,
                loss_weight=loss_weight,
                update_statistics=update_statistics,
                validate=validate,
            )
        )

    def get_cls_channels(self, num_classes: int) -> int:
        """``C``: no background column."""
        self._check_head_classes(num_classes)
        return num_classes

    @torch.no_grad()
    def get_activation(self, cls_score: Tensor) -> Tensor:
        """``(N, C + 1)``: ``σ(z)`` and a zero background column."""
        scores = self.criterion.predict(cls_score)
        return torch.cat([scores, scores.new_zeros(*scores.shape[:-1], 1)], dim=-1)

    @torch.no_grad()
    def get_accuracy(self, cls_score: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``acc_classes``: top-1 class of the foreground rows, in percent."""
        foreground = labels < self.num_classes
        correct = cls_score[foreground].argmax(-1) == labels[foreground]
        return {"acc_classes": _percent(correct)}

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        criterion = self.criterion
        reduction = self._reduction(reduction_override)
        normaliser = _mean_normaliser(reduction, avg_factor, cls_score, criterion.validate)
        recording, iteration = self._begin()
        output = F.eql_sigmoid(
            cls_score,
            labels,
            criterion.rare,
            weight=weight,
            reduction="sum" if normaliser is not None else reduction,
            validate=criterion.validate,
        )
        if recording:
            self._record(output, output.normaliser, iteration, given=normaliser is not None)
        loss = output.loss if normaliser is None else output.loss / normaliser
        return self._weighted(loss)


def _lvis_image_counts(ann_file: str) -> tuple[list[int], int]:
    """Per-category image counts (categories in id order) and the number of images of
    an LVIS-format annotation file."""
    data = load(ann_file)
    if not isinstance(data, dict) or "categories" not in data or "images" not in data:
        raise ValueError(
            f"ann_file: expected an LVIS-format annotation file with 'categories' and "
            f"'images', got {ann_file!r}"
        )
    categories = sorted(data["categories"], key=lambda category: category["id"])
    missing = [c["id"] for c in categories if "image_count" not in c]
    if missing:
        raise ValueError(
            f"ann_file: expected an 'image_count' for every category, category ids "
            f"{missing[:5]} have none (in {ann_file!r})"
        )
    return [int(c["image_count"]) for c in categories], len(data["images"])


class SoftmaxEQL(MMDetStatisticsLoss):
    r"""Softmax-EQL for mmdet's two-stage box heads, the background as class ``C``.

    The head predicts ``C + 1`` logits as for its softmax cross-entropy, and scores
    them at test time with the plain softmax of the raw logits, which is Softmax-EQL's
    inference; so none of mmdet's ``custom_*`` flags is needed. The loss is
    :func:`eqlosses.functional.softmax_eql` over the ``C + 1`` classes; its statistics
    are the true gradient of the loss (normalised by the rows or ``avg_factor``, times
    ``loss_weight``).

    Args:
        num_classes: ``C``, the head's ``num_classes`` (foreground classes).
        tau, eps: ``τ`` (1) and ``ε`` (1e-4) of the adjustment ``τ log max(I_j, ε)``.
        indicator: ``'pos'`` or ``'neg'``.
        use_sigmoid: must be False.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (per row).
        loss_weight, update_statistics, validate: as :class:`SigmoidEQL`.

    Example:
        >>> criterion = SoftmaxEQL(num_classes=3)
        >>> cls_score = torch.randn(5, 4, requires_grad=True)
        >>> labels = torch.tensor([0, 3, 3, 2, 1])  # 3 = background
        >>> criterion(cls_score, labels, torch.ones(5), avg_factor=5.0).backward()
    """

    use_sigmoid = False
    criterion: eqlosses.SoftmaxEQL

    def __init__(
        self,
        num_classes: int,
        tau: float = 1.0,
        eps: float = 1e-4,
        *,
        indicator: Literal["pos", "neg"] = "pos",
        use_sigmoid: bool = False,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        update_statistics: bool = True,
        validate: bool = True,
    ) -> None:
        _check_use_sigmoid("SoftmaxEQL", use_sigmoid, False)
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes}")
        super().__init__(
            eqlosses.SoftmaxEQL(
                num_classes + 1,
                tau,
                eps,
                indicator=indicator,
                reduction=reduction,
                loss_weight=loss_weight,
                update_statistics=update_statistics,
                validate=validate,
            )
        )

    @property
    def num_classes(self) -> int:
        """``C``, the number of foreground classes (the statistics also keep the
        background's, at index ``C``)."""
        return self.criterion.num_classes - 1

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        criterion = self.criterion
        reduction = self._reduction(reduction_override)
        normaliser = _mean_normaliser(reduction, avg_factor, cls_score, criterion.validate)
        recording, iteration = self._begin()
        output = F.softmax_eql(
            cls_score,
            labels,
            criterion.adjustment(),
            weight=weight,
            reduction="sum" if normaliser is not None else reduction,
            validate=criterion.validate,
        )
        if recording:
            # the statistics are the gradient of the returned loss: over its normaliser
            self._record(
                output,
                output.normaliser if normaliser is None else normaliser,
                iteration,
                given=normaliser is not None,
            )
        loss = output.loss if normaliser is None else output.loss / normaliser
        return self._weighted(loss)


class _DenseSigmoidLoss(MMDetStatisticsLoss):
    """A loss for dense heads: ``C`` sigmoid logits, background rows all negative."""

    use_sigmoid = True

    def _check_score(self, cls_score: Tensor) -> None:
        if cls_score.dim() >= 1 and cls_score.shape[-1] == self.num_classes + 1:
            raise ValueError(
                f"cls_score: expected {self.num_classes} columns, got {cls_score.shape[-1]}; "
                "a dense head predicts num_classes + 1 channels unless the loss_cls config "
                "says use_sigmoid=True"
            )


class EqualizedFocalLoss(_DenseSigmoidLoss):
    r"""Equalized Focal Loss for mmdet's dense heads (RetinaNet, ATSS, FCOS, ...).

    ``C`` sigmoid logits (the config must say ``use_sigmoid=True``, which the heads
    read to size their output), label ``C`` = background. The loss is
    :func:`eqlosses.functional.equalized_focal_loss` normalised by ``avg_factor``; its
    statistics are the true gradient of the loss, times ``loss_weight``. Called once per
    FPN level, it still updates its statistics once per training step.

    Args:
        num_classes: ``C``, the head's ``num_classes``.
        gamma_b, scale, alpha: ``γ_b`` (2), ``s`` (8) and ``α`` (0.25).
        use_sigmoid: must be True.
        reduction: ``'mean'`` (over ``avg_factor``, else the positive rows), ``'sum'`` or
            ``'none'`` (per entry).
        loss_weight, update_statistics, validate: as :class:`SigmoidEQL`.

    Example:
        >>> criterion = EqualizedFocalLoss(num_classes=3)
        >>> levels = [torch.randn(n, 3, requires_grad=True) for n in (16, 4)]
        >>> labels = [torch.full((16,), 3), torch.tensor([0, 3, 2, 3])]
        >>> loss = sum(criterion(s, l, torch.ones(len(l)), avg_factor=2.0)
        ...            for s, l in zip(levels, labels))
        >>> loss.backward()
        >>> criterion.pending_calls  # one step, two calls, not yet in the statistics
        2
        >>> criterion.commit_statistics()
        tensor(True)
    """

    criterion: eqlosses.EqualizedFocalLoss

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        alpha: float = 0.25,
        *,
        use_sigmoid: bool = True,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        update_statistics: bool = True,
        validate: bool = True,
    ) -> None:
        _check_use_sigmoid("EqualizedFocalLoss", use_sigmoid, True)
        super().__init__(
            eqlosses.EqualizedFocalLoss(
                num_classes,
                gamma_b,
                scale,
                alpha,
                reduction=reduction,
                loss_weight=loss_weight,
                update_statistics=update_statistics,
                validate=validate,
            )
        )

    def forward(
        self,
        cls_score: Tensor,
        labels: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        criterion = self.criterion
        self._check_score(cls_score)
        reduction = self._reduction(reduction_override)
        normaliser = _mean_normaliser(reduction, avg_factor, cls_score, criterion.validate)
        recording, iteration = self._begin()
        focusing, weighting = criterion.factors()
        output = F.equalized_focal_loss(
            cls_score,
            labels,
            focusing,
            weighting,
            alpha=criterion.alpha,
            avg_factor=normaliser,
            weight=weight,
            reduction=reduction,
            validate=criterion.validate,
        )
        if recording:
            self._record(output, output.normaliser, iteration, given=normaliser is not None)
        return self._weighted(output.loss)


class EqualizedQualityFocalLoss(_DenseSigmoidLoss):
    r"""Equalized Quality Focal Loss for mmdet's quality-focal heads (GFL and kin).

    Called as mmdet's ``QualityFocalLoss``: ``loss_cls(cls_score, (labels, score),
    weight=..., avg_factor=...)`` with ``score`` the IoU quality target of each row
    (read on foreground rows only). The loss is
    :func:`eqlosses.functional.equalized_quality_focal_loss`; statistics and steps as
    :class:`EqualizedFocalLoss`.

    Args:
        num_classes: ``C``. gamma_b: ``γ_b`` (2, at least 1). scale: ``s`` (8).
        use_sigmoid, reduction, loss_weight, update_statistics, validate: as
            :class:`EqualizedFocalLoss`.

    Example:
        >>> criterion = EqualizedQualityFocalLoss(num_classes=3)
        >>> cls_score = torch.randn(6, 3, requires_grad=True)
        >>> labels, score = torch.tensor([0, 3, 3, 2, 3, 1]), torch.rand(6)
        >>> criterion(cls_score, (labels, score), weight=torch.ones(6), avg_factor=3.0).backward()
    """

    criterion: eqlosses.EqualizedQualityFocalLoss

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        *,
        use_sigmoid: bool = True,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        update_statistics: bool = True,
        validate: bool = True,
    ) -> None:
        _check_use_sigmoid("EqualizedQualityFocalLoss", use_sigmoid, True)
        super().__init__(
            eqlosses.EqualizedQualityFocalLoss(
                num_classes,
                gamma_b,
                scale,
                reduction=reduction,
                loss_weight=loss_weight,
                update_statistics=update_statistics,
                validate=validate,
            )
        )

    def forward(
        self,
        cls_score: Tensor,
        target: tuple[Tensor, Tensor],
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
    ) -> Tensor:
        if not isinstance(target, tuple | list) or len(target) != 2:
            raise ValueError(
                f"target: expected a pair (labels, score), got {type(target).__name__}"
            )
        labels, score = target
        criterion = self.criterion
        self._check_score(cls_score)
        reduction = self._reduction(reduction_override)
        normaliser = _mean_normaliser(reduction, avg_factor, cls_score, criterion.validate)
        recording, iteration = self._begin()
        focusing, weighting = criterion.factors()
        output = F.equalized_quality_focal_loss(
            cls_score,
            labels,
            score,
            focusing,
            weighting,
            avg_factor=normaliser,
            weight=weight,
            reduction=reduction,
            validate=criterion.validate,
        )
        if recording:
            self._record(output, output.normaliser, iteration, given=normaliser is not None)
        return self._weighted(output.loss)


class CommitStatisticsHook(Hook):  # type: ignore[misc]  # mmengine is untyped
    """Ends each training iteration's statistics step in every :class:`MMDetStatisticsLoss`.

    Runs after each training iteration on every rank, before mmengine's
    ``CheckpointHook``. A checkpoint then holds no pending step, which makes a resumed
    distributed run continue exactly (a pending step is per rank, and only rank 0's
    would be saved); and every rank joins the update's all-reduce once per iteration,
    also where its head skipped the loss. Add it with
    ``custom_hooks=[dict(type='CommitStatisticsHook')]``.
    """

    priority = "ABOVE_NORMAL"

    def after_train_iter(
        self,
        runner: Any,
        batch_idx: int,
        data_batch: Any = None,
        outputs: Any = None,
    ) -> None:
        for module in runner.model.modules():
            if isinstance(module, MMDetStatisticsLoss):
                module.commit_statistics()


MODELS.register_module(module=SigmoidEQL)
MODELS.register_module(module=SoftmaxEQL)
MODELS.register_module(module=EQL)
MODELS.register_module(module=EqualizedFocalLoss)
MODELS.register_module(module=EqualizedQualityFocalLoss)
HOOKS.register_module(module=CommitStatisticsHook)
