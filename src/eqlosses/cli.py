"""The ``eqlosses`` command line: argument parsing only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .data.errors import DatasetNotFoundError, WeightsNotFoundError


def build_parser() -> argparse.ArgumentParser:
    from . import __version__, benchmark
    from .tasks import compare

    parser = argparse.ArgumentParser(
        prog="eqlosses", description="Equalization losses for long-tailed recognition."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    compare_parser = commands.add_parser(
        "compare", help="train one model per (loss, seed) on a long-tailed data set"
    )
    compare.add_arguments(compare_parser)
    compare_parser.set_defaults(handler=compare.run)
    bench_parser = commands.add_parser(
        "benchmark",
        help="speed and memory of each loss against the plain and straightforward forms",
    )
    benchmark.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=benchmark.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (DatasetNotFoundError, WeightsNotFoundError) as error:
        print(f"eqlosses: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
