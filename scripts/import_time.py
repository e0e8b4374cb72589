"""What ``import eqlosses`` adds to ``import torch``, measured with ``python -X importtime``.

Each sample is a fresh interpreter running ``import torch; import eqlosses`` under
``-X importtime``: torch is imported first, so the cumulative time the report gives the
top-level ``eqlosses`` import is exactly what the library adds on top of torch. The
median over the samples goes into a results file that the documentation renders::

    python scripts/import_time.py --out docs/results/import-time/results.json

Run it on an idle machine, with the environment the numbers should describe (an
installed wheel, or ``PYTHONPATH=src`` for the source tree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SNIPPET = "import torch; import eqlosses; print(torch.__version__, eqlosses.__version__)"


def top_level_microseconds(report: str, module: str) -> int:
    """The cumulative time (µs) of the top-level import of ``module`` in an importtime
    report; a nested import of the same name (indented) does not count."""
    for line in report.splitlines():
        prefix, _, rest = line.partition("import time:")
        if prefix or not rest:
            continue
        fields = rest.split("|")
        if len(fields) == 3 and fields[2].rstrip() == f" {module}":
            return int(fields[1])
    raise ValueError(f"report: expected a top-level import of {module!r}, found none")


def sample() -> tuple[float, float, str, str]:
    """One fresh interpreter: (eqlosses ms, torch ms, torch version, eqlosses version)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", SNIPPET],
        capture_output=True,
        text=True,
        check=True,
    )
    torch_version, eqlosses_version = done.stdout.split()
    return (
        top_level_microseconds(done.stderr, "eqlosses") / 1000,
        top_level_microseconds(done.stderr, "torch") / 1000,
        torch_version,
        eqlosses_version,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="results.json to write")
    parser.add_argument("--samples", type=int, default=15, help="fresh interpreters (15)")
    parser.add_argument(
        "--limit",
        type=float,
        metavar="SECONDS",
        help="fail (exit 1) when the median is not below this (CI holds it under 0.3 s)",
    )
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples: expected at least 1, got {args.samples}")

    sample()  # warm the file cache, so the first sample does not read from disk
    samples = [sample() for _ in range(args.samples)]
    eqlosses_ms = [s[0] for s in samples]
    torch_ms = [s[1] for s in samples]
    payload = {
        "command": f"{Path(sys.executable).name} -X importtime -c {SNIPPET!r}",
        "samples": args.samples,
        "eqlosses_ms": {
            "median": statistics.median(eqlosses_ms),
            "min": min(eqlosses_ms),
            "max": max(eqlosses_ms),
            "all": eqlosses_ms,
        },
        "torch_ms": {"median": statistics.median(torch_ms), "all": torch_ms},
        "environment": {
            "python": platform.python_version(),
            "torch": samples[0][2],
            "eqlosses": samples[0][3],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    }
    median_ms = payload["eqlosses_ms"]["median"]
    print(
        f"import eqlosses adds {median_ms:.0f} ms to import torch "
        f"({payload['torch_ms']['median']:.0f} ms), median of {args.samples}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"written to {args.out}")
    if args.limit is not None and not median_ms < args.limit * 1000:
        print(f"import_time: {median_ms:.0f} ms is not under the limit of {args.limit} s")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
