"""MkDocs hook: the pages' result tables and numbers, rendered from the results files.

A page never holds a number from a run. It holds a marker, and at build time the marker
is replaced by what the results file says, so a page cannot drift from its file:

    <!-- results-KIND: NAME key=value ... -->

``NAME`` is a folder under ``docs/results/`` holding the ``results.json`` that an
``eqlosses compare --out``, ``eqlosses benchmark --json`` or ``scripts/import_time.py``
run wrote. The kinds:

- ``table``: a comparison's summary, mean ± std over seeds and the verdict against the
  baseline (``metrics=a,b,c``, ``baseline=LOSS``; optional ``scale``, ``decimals``);
- ``per-class``: a segmentation comparison's per-class IoU;
- ``group-ratios``: a detection comparison's last-epoch ``g``, mean per LVIS group;
- ``config``: the configuration the comparison ran with;
- ``benchmark``, ``benchmark-overhead``, ``benchmark-targets``: the speed and memory
  table, the fixed overheads and the targets of an ``eqlosses benchmark`` run;
- ``value``: one entry, inline: ``path=`` a JSON Pointer (``/config/epochs``,
  ``/runs/0/class_sizes``), where ``*`` takes every item of a list; optional ``reduce=``
  one of ``REDUCERS``, ``scale=`` a factor and ``format=`` a format spec.

Before any page is rendered, a missing results file fails the build with the list of
every missing file and the pages that want it; a marker that asks for what its file does
not hold fails it with a message naming the page, the marker and the file.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

from eqlosses_lab import benchmark, report
from eqlosses_lab.tasks import segmentation

RESULTS_DIR = "results"
RESULTS_FILE = "results.json"
MARKER = re.compile(r"<!--\s*results-(?P<kind>[a-z-]+):\s*(?P<name>\S+)(?P<options>.*?)\s*-->")
REDUCERS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": statistics.fmean,
    "median": statistics.median,
    "min": min,
    "max": max,
    "sum": sum,
    "len": len,
}
LVIS_GROUPS = {"r": "rare", "c": "common", "f": "frequent"}

Payload = dict[str, Any]
Options = dict[str, str]


class ResultsError(Exception):
    """What a marker asks for and the results file does not hold."""


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Fails the build up front if any page's marker names a missing results file, listing
    every missing file with the pages that want it."""
    results_root = Path(config.docs_dir) / RESULTS_DIR
    wanted: dict[Path, set[str]] = {}
    for file in files.documentation_pages():
        for match in MARKER.finditer(file.content_string):
            path = results_root / match["name"] / RESULTS_FILE
            wanted.setdefault(path, set()).add(file.src_uri)
    missing = {path: pages for path, pages in wanted.items() if not path.is_file()}
    if missing:
        lines = [f"  {path} (for {', '.join(sorted(pages))})" for path, pages in missing.items()]
        raise PluginError("results files missing:\n" + "\n".join(sorted(lines)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replaces every results marker of the page; fails the build on the first bad one."""
    results_root = Path(config.docs_dir) / RESULTS_DIR

    def replace(match: re.Match[str]) -> str:
        try:
            return render(match["kind"], results_root / match["name"], _options(match["options"]))
        except ResultsError as error:
            raise PluginError(f"{page.file.src_uri}: {match[0]}: {error}") from None

    return MARKER.sub(replace, markdown)


def render(kind: str, folder: Path, options: Options) -> str:
    """The Markdown of one marker: ``kind`` of the results in ``folder``."""
    renderer = RENDERERS.get(kind)
    if renderer is None:
        raise ResultsError(f"unknown marker kind {kind!r}; expected one of {', '.join(RENDERERS)}")
    path = folder / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(f"results file {path} is missing")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsError(f"results file {path} is not valid JSON: {error}") from None
    accepted = ACCEPTED_OPTIONS[kind]
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ResultsError(
            f"unknown option(s) {', '.join(unknown)}; {kind} takes "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )
    try:
        return renderer(payload, options)
    except ResultsError as error:
        raise ResultsError(f"{path}: {error}") from None
    except KeyError as error:
        raise ResultsError(f"{path} has no entry {error} that {kind} needs") from None


def _options(text: str) -> Options:
    options: Options = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ResultsError(f"expected options as key=value, got {item!r}")
        options[key] = value
    return options


def _required(options: Options, key: str) -> str:
    if key not in options:
        raise ResultsError(f"the marker needs {key}=")
    return options[key]


def _number(options: Options, key: str, default: float) -> float:
    try:
        return float(options.get(key, default))
    except ValueError:
        raise ResultsError(f"{key}: expected a number, got {options[key]!r}") from None


def _comparison(payload: Payload) -> tuple[list[Payload], list[str]]:
    """The runs of a comparison and its losses, in the order they were run."""
    try:
        runs: list[Payload] = payload["runs"]
        losses: list[str] = payload["config"]["losses"]
    except (KeyError, TypeError):
        raise ResultsError("expected a comparison's results (config.losses and runs)") from None
    if not runs:
        raise ResultsError("the comparison holds no run")
    return runs, losses


def render_table(payload: Payload, options: Options) -> str:
    runs, losses = _comparison(payload)
    metrics = _required(options, "metrics").split(",")
    baseline = _required(options, "baseline")
    if baseline not in {run["loss"] for run in runs}:
        raise ResultsError(f"baseline: no run of {baseline!r}")
    recorded = {name for run in runs for name in run["metrics"]}
    missing = [name for name in metrics if name not in recorded]
    if missing:
        raise ResultsError(
            f"metrics: {', '.join(missing)} in no run; the runs hold {', '.join(sorted(recorded))}"
        )
    return report.markdown_table(
        runs,
        losses,
        metrics,
        baseline,
        scale=_number(options, "scale", 100.0),
        decimals=int(_number(options, "decimals", 1)),
    )


def render_per_class(payload: Payload, options: Options) -> str:
    runs, losses = _comparison(payload)
    return segmentation.per_class_table(runs, losses)


def render_group_ratios(payload: Payload, options: Options) -> str:
    runs, losses = _comparison(payload)
    header = "| loss | " + " | ".join(f"g {group}" for group in LVIS_GROUPS.values()) + " |"
    lines = [header, "|---|" + "---|" * len(LVIS_GROUPS)]
    for loss in losses:
        # a loss without statistics (the focal baseline, cross-entropy) records no g
        last = [
            run["grad_ratio_groups"][-1]
            for run in runs
            if run["loss"] == loss and run.get("grad_ratio_groups")
        ]
        if not last:
            continue
        means = (statistics.fmean(groups[key] for groups in last) for key in LVIS_GROUPS)
        lines.append(f"| `{loss}` | " + " | ".join(f"{mean:.3g}" for mean in means) + " |")
    if len(lines) == 2:
        raise ResultsError("no run records the gradient ratio per group")
    return "\n".join(lines) + "\n"


def render_config(payload: Payload, options: Options) -> str:
    if "config" not in payload:
        raise ResultsError("no config")
    lines = ["| setting | value |", "|---|---|"]
    lines.extend(f"| `{key}` | {value} |" for key, value in _flatten(payload["config"]))
    return "\n".join(lines) + "\n"


def _flatten(config: Payload, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            rows.append((f"{prefix}{key}", ", ".join(str(item) for item in value)))
        else:
            rows.append((f"{prefix}{key}", str(value)))
    return rows


def _benchmark_results(payload: Payload) -> list[Payload]:
    if not isinstance(payload.get("results"), list) or not payload["results"]:
        raise ResultsError("expected an eqlosses benchmark --json file with results")
    results: list[Payload] = payload["results"]
    return results


def render_benchmark(payload: Payload, options: Options) -> str:
    return benchmark.format_table(_benchmark_results(payload), markdown=True) + "\n"


def render_benchmark_targets(payload: Payload, options: Options) -> str:
    targets = benchmark.format_targets(_benchmark_results(payload), str(payload.get("size")))
    return f"```text\n{targets}\n```\n"


def render_benchmark_overhead(payload: Payload, options: Options) -> str:
    fixed = [result for result in _benchmark_results(payload) if "fixed_overhead" in result]
    if not fixed:
        raise ResultsError("no case measured a fixed overhead")
    lines = [
        "| loss | (a) eqlosses ms | (c) plain ms | fixed overhead a − c ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for result in fixed:
        overhead = result["fixed_overhead"]
        lines.append(
            f"| {result['title']} | {overhead['a_ms']:.3g} | {overhead['c_ms']:.3g} | "
            f"{overhead['overhead_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def render_value(payload: Payload, options: Options) -> str:
    path = _required(options, "path")
    if not path.startswith("/"):
        raise ResultsError(f"path: expected a JSON Pointer such as /config/epochs, got {path!r}")
    value = _lookup(payload, path[1:].split("/"))
    reducer = options.get("reduce")
    if reducer is not None:
        if reducer not in REDUCERS:
            raise ResultsError(f"reduce: expected one of {', '.join(REDUCERS)}, got {reducer!r}")
        if not isinstance(value, list) or not value:
            raise ResultsError(f"reduce: {path} is not a non-empty list")
        value = REDUCERS[reducer](value)
    if "scale" in options:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ResultsError(f"scale: {path} is not a number")
        value = value * _number(options, "scale", 1.0)
    try:
        return format(value, options.get("format", ""))
    except (TypeError, ValueError) as error:
        raise ResultsError(f"format: {error}") from None


def _lookup(node: Any, keys: Sequence[str]) -> Any:
    """The entry at ``keys`` (``*`` maps over a list)."""
    if not keys:
        return node
    key, rest = keys[0], keys[1:]
    if key == "*":
        if not isinstance(node, list):
            raise ResultsError("path: '*' needs a list")
        return [_lookup(item, rest) for item in node]
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise ResultsError(f"path: no item {key!r} in a list of {len(node)}")
        return _lookup(node[int(key)], rest)
    if not isinstance(node, dict) or key not in node:
        raise ResultsError(f"path: no entry {key!r}")
    return _lookup(node[key], rest)


Renderer = Callable[[Payload, Options], str]
RENDERERS: dict[str, Renderer] = {
    "table": render_table,
    "per-class": render_per_class,
    "group-ratios": render_group_ratios,
    "config": render_config,
    "benchmark": render_benchmark,
    "benchmark-overhead": render_benchmark_overhead,
    "benchmark-targets": render_benchmark_targets,
    "value": render_value,
}
ACCEPTED_OPTIONS: dict[str, set[str]] = {
    "table": {"metrics", "baseline", "scale", "decimals"},
    "per-class": set(),
    "group-ratios": set(),
    "config": set(),
    "benchmark": set(),
    "benchmark-overhead": set(),
    "benchmark-targets": set(),
    "value": {"path", "reduce", "scale", "format"},
}
