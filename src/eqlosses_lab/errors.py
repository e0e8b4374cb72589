"""Errors the lab's commands report as one line (and exit code 2) instead of a traceback.

Nothing in the lab downloads anything at run time, so a missing data set or weight file
is a setup problem the user must fix by hand; a comparison asked to do something its
saved runs or its data cannot support is a usage problem. Each message names what is
wrong, where it was looked for and the option, environment variable or command that
fixes it, so that a command can print ``str(error)`` and nothing else.
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


class SettingsError(ValueError):
    """Command-line settings that cannot work: with each other, with the data, or with the
    runs already saved in the output folder."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))
