"""``eqlosses`` and ``python -m eqlosses``: the command line.

The core library has no command of its own. Installed packages add theirs through the
``eqlosses.commands`` entry-point group: each entry is a function that takes the
sub-parser collection and adds one command (``eqlosses_lab`` adds ``compare`` and
``benchmark``). The core therefore never imports the packages that extend it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from . import __version__

COMMAND_GROUP = "eqlosses.commands"
LAB_HINT = (
    "The comparison and benchmark commands (compare, benchmark) come with the lab: "
    "pip install 'eqlosses[lab]'."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqlosses",
        description="Equalization losses for long-tailed recognition.",
        epilog=LAB_HINT,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if args.command is None else 2
    code: int = handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
