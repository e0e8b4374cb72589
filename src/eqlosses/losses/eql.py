"""Equalization Loss v1 (Tan et al., CVPR 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ..checks import check_choice, check_integer, check_number, check_tensor
from ..functional.sigmoid import eql_sigmoid
from ..functional.softmax import eql_softmax
from ..labels import BACKGROUND_INDICES, BackgroundIndex, Reduction, check_logits
from ._base import DeviceGenerators, StatisticsLoss, counts_tensor

Activation = Literal["sigmoid", "softmax"]


class EQL(StatisticsLoss):
    r"""Equalization loss v1: drop the negative gradients of rare classes.

    Sigmoid form (detection, ``C`` logits, background rows all zero):

    .. math::
        L = \frac{1}{N}\sum_{i,j} \big(1 - E_i T_j (1 - y_{ij})\big)\,
            \mathrm{BCE}(z_{ij}, y_{ij})

    ``E_i = 1`` for a foreground sample, ``T_j = 1`` when class ``j``'s frequency
    (images containing it / images) is below ``threshold``. Softmax form
    (classification): ``p̃_j = e^{z_j} / Σ_k w̃_k e^{z_k}`` with
    ``w̃_k = 1 - β T_k (1 - y_k)``, ``β ~ Bernoulli(drop_prob)`` drawn per entry from
    ``generator``.

    EQL v1 is frequency-based: its gradient statistics are recorded for diagnostics
    (``grad_ratio``) but never change the loss.

    Args:
        image_counts: per-class number of training images containing the class.
        num_images: number of training images.
        threshold: ``λ``. The paper's LVIS values: 0.00177 (v0.5), 0.0011 (v1).
        activation: ``'sigmoid'`` or ``'softmax'``.
        drop_prob: ``γ`` of the softmax form (required there).
        generator: random source of the softmax form's ``β``.
        reduction: ``'mean'`` (over non-ignored samples), ``'sum'`` or ``'none'``.
        loss_weight: multiplies the loss.
        ignore_index: label of rows to drop.
        background_index: ``'last'`` (label ``C`` is background) or ``'first'``.
        update_statistics: set False to freeze the diagnostic statistics.
        process_group: ranks that share the statistics (default group when initialised).
        validate: check label values (skipped under ``torch.compile``).

    Shape:
        - logits: ``(N, C)``; target, weight: ``(N,)``.

    Example:
        >>> criterion = EQL(image_counts=[900, 40, 3], num_images=1000, threshold=0.05)
        >>> criterion.rare
        tensor([False,  True,  True])
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> criterion(logits, torch.tensor([0, 0, 2, 3])).backward()  # 3 = background
    """

    rare: Tensor
    statistics_include_loss_weight = False

    def __init__(
        self,
        image_counts: Sequence[int] | Tensor,
        num_images: int,
        threshold: float,
        *,
        activation: Activation = "sigmoid",
        drop_prob: float | None = None,
        generator: torch.Generator | None = None,
        reduction: Reduction = "mean",
        loss_weight: float = 1.0,
        ignore_index: int = -100,
        background_index: BackgroundIndex = "last",
        update_statistics: bool = True,
        process_group: dist.ProcessGroup | None = None,
        validate: bool = True,
    ) -> None:
        counts = counts_tensor(image_counts, "image_counts")
        num_images = check_integer("num_images", num_images, minimum=1)
        if bool((counts > num_images).any()):
            raise ValueError(
                f"image_counts: expected counts in [0, num_images={num_images}], got "
                f"{counts.max().item():g}"
            )
        check_choice("activation", activation, ("sigmoid", "softmax"))
        check_choice("background_index", background_index, BACKGROUND_INDICES)
        if activation == "softmax" and drop_prob is None:
            raise ValueError("drop_prob: required with activation='softmax', got None")
        super().__init__(
            counts.numel(),
            initial_ratio=1.0,
            reduction=reduction,
            loss_weight=loss_weight,
            ignore_index=ignore_index,
            update_statistics=update_statistics,
            process_group=process_group,
            validate=validate,
        )
        self.threshold = check_number("threshold", threshold, low=0.0)
        self.activation: Activation = activation
        self.drop_prob = (
            None if drop_prob is None else check_number("drop_prob", drop_prob, low=0.0, high=1.0)
        )
        self.generators = DeviceGenerators(generator)
        self.background_index: BackgroundIndex = background_index
        self.register_buffer("rare", counts / num_images < self.threshold)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if self.activation == "sigmoid":
            output = eql_sigmoid(
                logits,
                target,
                self.rare,
                weight=weight,
                reduction=self.reduction,
                ignore_index=self.ignore_index,
                background_index=self.background_index,
                validate=self.validate,
            )
        else:
            assert self.drop_prob is not None
            output = eql_softmax(
                logits,
                target,
                self.rare,
                self.drop_prob,
                generator=self.generators.on(check_tensor("logits", logits).device),
                weight=weight,
                reduction=self.reduction,
                ignore_index=self.ignore_index,
                validate=self.validate,
            )
        return self._finish(output)

    def get_extra_state(self) -> dict[str, Any]:
        """The random state of the softmax form's draws (see :class:`DeviceGenerators`)."""
        return {"generators": self.generators.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generators.load(state["generators"])

    @torch.no_grad()
    def predict(self, logits: Tensor) -> Tensor:
        """``σ(z)`` for the sigmoid form, ``softmax(z)`` for the softmax form."""
        check_logits(logits, self.num_classes)
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, threshold={self.threshold}, "
            f"activation={self.activation!r}, rare={int(self.rare.sum())}"
        )
