"""One label convention for every loss, and the checks whose errors users see.

``num_classes`` is the number ``C`` of foreground classes.

* Sigmoid losses take integer labels in ``[0, C)``; label ``C`` is background (an
  all-zero target row, or the background column with ``objectness=True``).
* Softmax losses take labels in ``[0, C)``.
* Rows whose label equals ``ignore_index`` (default -100) are dropped everywhere.
* ``background_index="first"`` accepts the layout where 0 is background and the classes
  are ``1..C``; it is translated to the one above.

Every check raises a ``ValueError`` that names the argument, what was expected and what
came. Shape checks always run; checks that read tensor values (the label range) can be
switched off with ``validate=False`` and are skipped under ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum", "none"]
BackgroundIndex = Literal["last", "first"]

REDUCTIONS = ("mean", "sum", "none")
BACKGROUND_INDICES = ("last", "first")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {expected}, got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a number {bound}, got {value!r}")


def reads_values(validate: bool) -> bool:
    """Whether value-reading checks run: asked for, and not inside ``torch.compile``."""
    return validate and not torch.compiler.is_compiling()


def check_logits(logits: Tensor, num_columns: int, *, class_dim: int = -1) -> None:
    """Floating logits whose class dimension has ``num_columns`` entries."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
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


def class_indices(
    target: Tensor,
    rows_shape: Sequence[int],
    num_classes: int,
    *,
    allow_background: bool,
    background_index: BackgroundIndex = "last",
    ignore_index: int = -100,
    validate: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Integer labels → flat canonical labels and a flat mask of the rows that count.

    Returns ``(labels, valid)`` of length ``prod(rows_shape)``: labels in ``[0, C)`` for
    foreground rows and ``C`` for background rows (only where ``allow_background``).
    Ignored rows get ``valid`` False and the label ``C`` (no positive entry) where
    background is allowed, else 0 (an in-range index for gathers; the row weighs 0).
    ``valid`` is ``None`` when the labels were read and no row is ignored, which spares
    the callers their per-row masking.
    """
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target: expected integer class labels, got dtype {target.dtype}")
    check_same_rows("target", target, rows_shape)
    check_choice("background_index", background_index, BACKGROUND_INDICES)
    labels = target if target.dim() == 1 else target.reshape(-1)
    if labels.dtype != torch.long:
        labels = labels.long()
    first = allow_background and background_index == "first"
    # both background layouts use the range [0, C]: label C or label 0 is background
    highest = num_classes if allow_background else num_classes - 1
    checked = reads_values(validate) and labels.numel() > 0
    if checked:
        # One read of both values (one device sync on an accelerator). Usually every
        # label is in range and ignore_index lies outside that range: no row is ignored.
        lowest_seen, highest_seen = torch.stack(torch.aminmax(labels)).tolist()
        if lowest_seen >= 0 and highest_seen <= highest:
            if not lowest_seen <= ignore_index <= highest_seen:
                return _canonical(labels, num_classes, first), None
            checked = False  # in range already: no second read
    valid = labels != ignore_index
    # Ignored rows take a label that is in range and means "background" (or class 0
    # where there is none) once translated.
    fill = 0 if first or not allow_background else num_classes
    labels = torch.where(valid, labels, fill)
    if checked:
        # Some label is outside the range; it is an error unless it is ignore_index.
        lowest_seen, highest_seen = torch.stack(torch.aminmax(labels)).tolist()
        if lowest_seen < 0 or highest_seen > highest:
            first_bad = int(labels[(labels < 0) | (labels > highest)][0])
            if not allow_background:
                what = f"labels in [0, {num_classes - 1}]"
            elif first:
                what = f"labels in [0, {num_classes}] (0 = background, 1..{num_classes} = classes)"
            else:
                what = f"labels in [0, {num_classes}] ({num_classes} = background)"
            raise ValueError(
                f"target: expected {what} or ignore_index={ignore_index}, got {first_bad}"
            )
    return _canonical(labels, num_classes, first), valid


def _canonical(labels: Tensor, num_classes: int, background_first: bool) -> Tensor:
    """Labels with background ``C``: ``'first'`` labels (0 = background) translated."""
    if background_first:
        return torch.where(labels == 0, num_classes, labels - 1)
    return labels


def count_rows(valid: Tensor | None, num_rows: int, dtype: torch.dtype) -> Tensor | float:
    """The number of rows that count: a scalar tensor of ``dtype``, or the Python number
    ``num_rows`` where ``valid`` is ``None`` (every row counts), which costs no operation."""
    if valid is None:
        return float(num_rows)
    return valid.sum(dtype=dtype)


def mean_scale(count: Tensor | float) -> Tensor | float:
    """The mean's factor ``1 / max(count, 1)``, of the same kind as ``count``."""
    if isinstance(count, Tensor):
        return count.clamp_min(1.0).reciprocal()
    return 1.0 / max(count, 1.0)


def row_weights(
    valid: Tensor | None, weight: Tensor | None, rows_shape: Sequence[int], dtype: torch.dtype
) -> Tensor | None:
    """Per-row multiplier: 0 for ignored rows, else the optional per-sample ``weight``;
    ``None`` where every row counts with weight 1.

    ``weight`` has the shape of the label tensor; its entries scale both the loss and the
    statistics of their row.
    """
    if weight is not None:
        if not isinstance(weight, Tensor) or not weight.is_floating_point():
            raise ValueError("weight: expected a floating-point tensor of per-sample weights")
        check_same_rows("weight", weight, rows_shape)
        weight = weight.reshape(-1).to(dtype)
        return weight if valid is None else valid.to(dtype) * weight
    return None if valid is None else valid.to(dtype)
