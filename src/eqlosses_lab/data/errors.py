"""Errors raised when data or pretrained weights are not on this machine.

Nothing in ``eqlosses`` downloads anything at run time, so a missing data set or weight file
is a setup problem the user must fix by hand.  These errors carry a single-line message that
names what is missing, where it was looked for, and the one command or option that fixes it,
so that a command-line tool can print ``str(error)`` and nothing else.
"""

from __future__ import annotations


def _one_line(message: str) -> str:
    # Callers build messages from paths and f-strings; collapsing whitespace keeps the
    # promise of a single line even if a path or hint contains a newline.
    return " ".join(message.split())


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not installed where it was looked for.

    Subclasses :class:`FileNotFoundError` so that generic ``except OSError`` handlers still
    catch it, while callers that care can tell it apart from other missing files.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained model weights are not installed (same one-line style as the data error)."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))
