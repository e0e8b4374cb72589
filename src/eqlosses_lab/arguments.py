"""Argument types of the lab's commands.

Each turns one command-line string into a value or refuses it, so that argparse reports
a bad value as ``argument --epochs: expected ..., got '0'`` (exit code 2) before anything
runs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _number(text: str, kind: type[int] | type[float], expected: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (epochs, threads, images, canvases).

    Example:
        >>> positive_int("3")
        3
        >>> positive_int("0")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: expected a whole number of at least 1, got '0'
    """
    value: int = _number(text, int, "a whole number of at least 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (seeds, warm-up rounds)."""
    value: int = _number(text, int, "a whole number of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value: float = _number(text, float, "a finite number above 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text!r}")
    return value


def imbalance_ratio(text: str) -> float:
    """A finite number of at least 1: the head class's count over the tail class's."""
    expected = "a finite ratio of at least 1 (head class count over tail class count)"
    value: float = _number(text, float, expected)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def output_folder(text: str) -> Path:
    """A folder to write into: it may not exist yet, but neither it nor any folder above
    it may be an existing file."""
    path = Path(text)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise argparse.ArgumentTypeError(
                f"expected a folder to write results into, got {text!r} ({part} is a file)"
            )
    return path


class Distinct(argparse.Action):
    """Stores a list option (``nargs="+"``), refusing a value given twice (a repeated
    seed or loss would train and count the same run twice)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        items = [values] if isinstance(values, str) or values is None else list(values)
        repeated = [v for i, v in enumerate(items) if v in items[:i]]
        if repeated:
            given = ", ".join(str(v) for v in dict.fromkeys(repeated))
            parser.error(f"argument {option_string}: expected each value once, got {given} twice")
        setattr(namespace, self.dest, items)
