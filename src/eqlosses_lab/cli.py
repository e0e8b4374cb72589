"""The lab's commands, ``eqlosses compare`` and ``eqlosses benchmark``.

They reach the ``eqlosses`` command line through its ``eqlosses.commands`` entry points
(see :mod:`eqlosses.__main__`). A command whose modules need packages that are not
installed (the ``lab`` extra) is still listed, and running it says what to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from .data.errors import DatasetNotFoundError, WeightsNotFoundError

LAB_EXTRA = "pip install 'eqlosses[lab]'"

Subparsers = Any  # argparse's sub-parser collection (a private class)


def _register(
    commands: Subparsers, name: str, module_name: str, help_text: str
) -> argparse.ArgumentParser:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=f"{help_text} (needs the lab extra: {LAB_EXTRA})"
        )
        parser.set_defaults(handler=_missing_extra(name, error.name))
        return parser
    parser = commands.add_parser(name, help=help_text)
    module.add_arguments(parser)
    parser.set_defaults(handler=_guarded(module.run))
    return parser


def _missing_extra(name: str, missing: str | None) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(
            f"eqlosses {name}: needs the lab extra, which is not installed (no module "
            f"{missing!r}): {LAB_EXTRA}",
            file=sys.stderr,
        )
        return 2

    return handler


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (DatasetNotFoundError, WeightsNotFoundError) as error:
            print(f"eqlosses: {error}", file=sys.stderr)
            return 2

    return handler


def register_compare(commands: Subparsers) -> None:
    """Entry point: adds ``compare``."""
    _register(
        commands,
        "compare",
        "eqlosses_lab.tasks.compare",
        "train one model per (loss, seed) on a long-tailed data set",
    )


def register_benchmark(commands: Subparsers) -> None:
    """Entry point: adds ``benchmark``."""
    _register(
        commands,
        "benchmark",
        "eqlosses_lab.benchmark",
        "speed and memory of each loss against the plain and straightforward forms",
    )
