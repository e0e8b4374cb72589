"""Argument checks: the one place that decides what is accepted and what the errors say.

Every check raises a ``ValueError`` that names the argument, says what was expected and
what came. Hyper-parameters are checked once, where they are set (a module's constructor
or a functional call); tensor values are checked per call by :func:`check_values`, which
reads them on the host only where that costs no device synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import torch
from torch import Tensor

# Value checks read these devices' tensors on the host, where a read is free and the error
# can quote the offending value. Elsewhere (CUDA, ...) they become device-side assertions
# so a training step never waits for the device. Tests empty it to run the device path on
# CPU tensors.
HOST_CHECKED_DEVICES = frozenset({"cpu"})


def checks_on_host(tensor: Tensor) -> bool:
    """Whether value checks of ``tensor`` read it on the host (see
    :data:`HOST_CHECKED_DEVICES`)."""
    return tensor.device.type in HOST_CHECKED_DEVICES


def reads_values(validate: bool) -> bool:
    """Whether value checks run: asked for, and not inside ``torch.compile``."""
    return validate and not torch.compiler.is_compiling()


def check_values(condition: Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless every entry of ``condition`` is true.

    On a host-checked device the condition is read at once; elsewhere it becomes a
    device-side assertion (``torch._assert_async``) carrying the same message, which fails
    the run at the device's next synchronisation.
    """
    if checks_on_host(condition):
        if not bool(condition.all()):
            raise ValueError(message)
    else:
        torch._assert_async(condition.all(), message)


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {expected}, got {value!r}")


def check_integer(name: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``; raises unless it is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name}: expected an integer{bound}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a ``float``; raises unless it is a finite real number (not a bool)
    within the bounds (closed unless ``low_open`` / ``high_open``)."""
    if not isinstance(value, bool) and isinstance(value, Real):
        number = float(value)
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if math.isfinite(number) and not too_low and not too_high:
            return number
    # the message is built only here: the checks run in every training step
    lower = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    upper = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    if low is not None and high is not None:
        opening, closing = "(" if low_open else "[", ")" if high_open else "]"
        what = f"a finite number in {opening}{low:g}, {high:g}{closing}"
    else:
        what = " ".join(part for part in ("a finite number", lower, upper) if part)
    raise ValueError(f"{name}: expected {what}, got {value!r}")


def check_flag(name: str, value: object) -> bool:
    """Raise unless ``value`` is a ``bool``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


def check_tensor(name: str, value: object) -> Tensor:
    """Raise unless ``value`` is a tensor (lists and arrays are not converted silently)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_not_differentiated(name: str, tensor: Tensor) -> None:
    """Raise if ``tensor`` requires grad where autograd records: the losses differentiate
    their logits only, so a gradient meant for ``tensor`` would silently never come."""
    if tensor.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name}: expected a tensor that does not require grad (the loss is "
            f"differentiated with respect to the logits only), got one that requires grad; "
            f"pass {name}.detach()"
        )
