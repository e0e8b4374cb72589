"""One label convention for every loss, and the rows of a batch as the kernels see them.

``num_classes`` is the number ``C`` of foreground classes.

* Sigmoid losses take integer labels in ``[0, C)``; label ``C`` is background (an
  all-zero target row, or the background column with ``objectness=True``).
* Softmax losses take labels in ``[0, C)``.
* Rows whose label equals ``ignore_index`` (default -100) are dropped everywhere, and so
  are rows whose per-sample ``weight`` is 0: neither counts in the mean, the statistics
  or the gradient, whatever their logits hold (``inf`` and NaN included).
* ``background_index="first"`` accepts the layout where 0 is background and the classes
  are ``1..C``; it is translated to the one above.

Shape checks always run; checks that read tensor values (the label range, weights >= 0)
can be switched off with ``validate=False`` and are skipped under ``torch.compile``. On
the CPU they read the values at once (one read of the labels' minimum and maximum, which
also tells a batch without dropped rows, so the kernels skip the per-row mask); on other
devices they are device-side assertions and every batch takes the masked path, so a
training step never waits for the device (see :mod:`eqlosses.checks`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .checks import (
    check_choice,
    check_not_differentiated,
    check_tensor,
    check_values,
    checks_on_host,
    reads_values,
)

Reduction = Literal["mean", "sum", "none"]
BackgroundIndex = Literal["last", "first"]

REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")
BACKGROUND_INDICES = ("last", "first")


def check_logits(logits: Tensor, num_columns: int, *, class_dim: int = -1) -> None:
    """Floating logits whose class dimension has ``num_columns`` entries."""
    check_tensor("logits", logits)
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or (class_dim == 1 and logits.dim() < 2):
        raise ValueError(
            f"logits: expected a class dimension at dim {class_dim}, got shape "
            f"{tuple(logits.shape)}"
        )
    if logits.shape[class_dim] != num_columns:
        raise ValueError(
            f"logits: expected {num_columns} class columns at dim {class_dim}, got shape "
            f"{tuple(logits.shape)} ({logits.shape[class_dim]} columns)"
        )


def check_same_rows(name: str, tensor: Tensor, rows_shape: Sequence[int]) -> None:
    check_tensor(name, tensor)
    if tuple(tensor.shape) != tuple(rows_shape):
        raise ValueError(
            f"{name}: expected shape {tuple(rows_shape)} to match the logits, got "
            f"{tuple(tensor.shape)}"
        )


def class_vector_length(name: str, tensor: Tensor) -> int:
    """The number of classes a per-class vector gives (it must be 1-D)."""
    if not isinstance(tensor, Tensor) or tensor.dim() != 1:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected a 1-D per-class tensor (C,), got {shape}")
    return tensor.shape[0]


def check_class_vector(name: str, tensor: Tensor, num_classes: int) -> None:
    if tensor.shape != (num_classes,):
        raise ValueError(f"{name}: expected shape ({num_classes},), got {tuple(tensor.shape)}")


def check_unit_interval(name: str, values: Tensor, ignored: Tensor | None) -> None:
    """Raise unless every entry of ``values`` lies in [0, 1] (NaN does not), except where
    ``ignored`` (broadcast against ``values``) is true."""
    inside = (values >= 0) & (values <= 1)
    if ignored is not None:
        inside = inside | ignored
    check_values(inside, f"{name}: expected values in [0, 1], got values outside (or NaN)")


class Rows(NamedTuple):
    """The rows of a batch as the kernels see them, flattened.

    Attributes:
        labels: canonical labels (background ``C``); a row that does not count carries
            background where there is one, else class 0 (an in-range index it weighs 0 at).
            ``None`` for soft targets.
        weight: per-row multiplier: the per-sample weight, 0 where the row does not count;
            ``None`` where every row counts with weight 1.
        keep: bool, the rows that count (not ignored, weight not 0); ``None``: all of them.
        num_kept: the number of rows that count; a Python number where it is known without
            reading the device (no row dropped), which costs no operation.
    """

    labels: Tensor | None
    weight: Tensor | None
    keep: Tensor | None
    num_kept: Tensor | float


def sample_weights(
    weight: Tensor | None, rows_shape: Sequence[int], dtype: torch.dtype, validate: bool
) -> Tensor | None:
    """The optional per-sample ``weight`` checked and flattened to ``dtype``."""
    if weight is None:
        return None
    check_same_rows("weight", weight, rows_shape)
    if not weight.is_floating_point():
        raise ValueError(f"weight: expected floating-point per-sample weights, got {weight.dtype}")
    check_not_differentiated("weight", weight)
    flat = weight.reshape(-1).to(dtype)
    if reads_values(validate) and flat.numel() > 0:
        # NaN passes: like a NaN logit, it makes the loss NaN and the step is dropped
        check_values(~(flat < 0), "weight: expected per-sample weights >= 0, got a negative")
    return flat


def weighted_rows(
    weight: Tensor | None, rows_shape: Sequence[int], dtype: torch.dtype, validate: bool
) -> Rows:
    """Rows without labels (soft targets): dropped where ``weight`` is 0."""
    flat = sample_weights(weight, rows_shape, dtype, validate)
    if flat is None:
        return Rows(None, None, None, float(math.prod(rows_shape)))
    keep = flat != 0
    return Rows(None, torch.where(keep, flat, 0.0), keep, keep.sum(dtype=dtype))


def prepare_rows(
    target: Tensor,
    rows_shape: Sequence[int],
    num_classes: int,
    *,
    allow_background: bool,
    background_index: BackgroundIndex = "last",
    ignore_index: int = -100,
    weight: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    validate: bool = True,
) -> Rows:
    """Integer labels and optional per-sample weights → :class:`Rows`.

    Labels must lie in ``[0, C)`` (``[0, C]`` where ``allow_background``) or equal
    ``ignore_index``; a zero ``weight`` drops its row like ``ignore_index`` does.
    """
    check_tensor("target", target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target: expected integer class labels, got dtype {target.dtype}")
    check_same_rows("target", target, rows_shape)
    check_choice("background_index", background_index, BACKGROUND_INDICES)
    flat_weight = sample_weights(weight, rows_shape, dtype, validate)
    labels = target if target.dim() == 1 else target.reshape(-1)
    if labels.dtype != torch.long:
        labels = labels.long()
    first = allow_background and background_index == "first"
    # both background layouts use the range [0, C]: label C or label 0 is background
    highest = num_classes if allow_background else num_classes - 1
    check = reads_values(validate) and labels.numel() > 0
    on_host = check and checks_on_host(labels)
    if on_host and flat_weight is None:
        # One read of both values. Usually every label is in range and ignore_index lies
        # outside that range: no row is dropped.
        lowest_seen, highest_seen = torch.stack(torch.aminmax(labels)).tolist()
        if lowest_seen >= 0 and highest_seen <= highest:
            if not lowest_seen <= ignore_index <= highest_seen:
                canonical = _canonical(labels, num_classes, first)
                return Rows(canonical, None, None, float(labels.numel()))
            check = False  # in range already: no second read
    valid = labels != ignore_index
    # Dropped rows take a label that is in range and means "background" (or class 0
    # where there is none) once translated.
    fill = 0 if first or not allow_background else num_classes
    labels = torch.where(valid, labels, fill)
    if check:
        _check_label_range(labels, num_classes, highest, ignore_index, allow_background, first)
    if flat_weight is None:
        keep = valid
        row_weight = valid.to(dtype)
    else:
        keep = valid & (flat_weight != 0)
        labels = torch.where(keep, labels, fill)
        row_weight = torch.where(keep, flat_weight, 0.0)
    return Rows(_canonical(labels, num_classes, first), row_weight, keep, keep.sum(dtype=dtype))


def _check_label_range(
    labels: Tensor,
    num_classes: int,
    highest: int,
    ignore_index: int,
    allow_background: bool,
    background_first: bool,
) -> None:
    if not allow_background:
        what = f"labels in [0, {num_classes - 1}]"
    elif background_first:
        what = f"labels in [0, {num_classes}] (0 = background, 1..{num_classes} = classes)"
    else:
        what = f"labels in [0, {num_classes}] ({num_classes} = background)"
    expected = f"target: expected {what} or ignore_index={ignore_index}"
    if not checks_on_host(labels):
        check_values((labels >= 0) & (labels <= highest), f"{expected}, got one outside")
        return
    lowest_seen, highest_seen = torch.stack(torch.aminmax(labels)).tolist()
    if lowest_seen < 0 or highest_seen > highest:
        first_bad = int(labels[(labels < 0) | (labels > highest)][0])
        raise ValueError(f"{expected}, got {first_bad}")


def _canonical(labels: Tensor, num_classes: int, background_first: bool) -> Tensor:
    """Labels with background ``C``: ``'first'`` labels (0 = background) translated."""
    if background_first:
        return torch.where(labels == 0, num_classes, labels - 1)
    return labels


def mean_scale(count: Tensor | float) -> Tensor | float:
    """The mean's factor ``1 / max(count, 1)``, of the same kind as ``count``."""
    if isinstance(count, Tensor):
        return count.clamp_min(1.0).reciprocal()
    return 1.0 / max(count, 1.0)
