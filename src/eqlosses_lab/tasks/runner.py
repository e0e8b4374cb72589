"""The seed × loss loop every comparison runs, with its records, resume and outputs.

A task (:class:`Task`) says what its runs are configured by, how to prepare the data of a
seed, how to train and evaluate one (loss, seed) run and which outputs it draws; this
module does the rest:

* every finished run is saved as ``runs/<loss>__seed<k>.json`` in the output folder,
  written to a temporary file and renamed, so a record is whole or absent;
* a rerun reuses a saved run only if its ``config`` (everything that changes its
  numbers: the task's settings, the loss and the seed) equals the rerun's; a saved run
  made with other settings stops the comparison before anything is trained, naming the
  file and the settings that differ; a damaged record (cut short, empty, not a run) is
  trained again, and the output says so;
* progress reports "run k of n" and an estimate of the time left; Ctrl-C stops with one
  line saying how many runs are saved, and the same command resumes (exit code 130);
* at the end: ``results.json``, ``results.md``, the task's pictures, and for every metric
  the best loss and whether it beats the baseline (:func:`eqlosses_lab.metrics.beats`).
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import report
from ..errors import SettingsError

Record = dict[str, Any]
INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT
RUNS = "runs"
# What a run record holds whatever its task (report.py reads these), with their types.
RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "loss": str,
    "seed": int,
    "config": dict,
    "metrics": dict,
    "per_class": list,
    "class_sizes": list,
    "seconds": (int, float),
}


class DamagedRunError(Exception):
    """A saved run that cannot be used (its message says why); it is trained again."""


@dataclass
class TaskOutputs:
    """What a task adds to the comparison's outputs: facts for ``results.json``'s
    ``config``, the files it drew, and Markdown notes printed and saved after the
    table."""

    details: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    notes: str = ""


class Task(Protocol):
    """One comparison task: its metrics, baseline and runs."""

    @property
    def name(self) -> str:
        """What ``results.json`` calls the task."""
        ...

    @property
    def metrics(self) -> Sequence[str]:
        """The metrics of a run record, in table order (higher is better)."""
        ...

    @property
    def baseline(self) -> str:
        """The loss the others are judged against."""
        ...

    def settings(self) -> dict[str, Any]:
        """Everything besides the loss and the seed that changes a run's numbers (plain
        JSON values)."""
        ...

    def prepare(self, seed: int) -> None:
        """Make ready what the runs of ``seed`` need; called before they are trained."""
        ...

    def train(self, loss: str, seed: int, record_path: Path) -> Record:
        """Train and evaluate one run and return its record (the fields of
        :data:`RECORD_FIELDS` but ``config``); files of its own go beside
        ``record_path``."""
        ...

    def reuse(self, record: Record, record_path: Path) -> Record:
        """A saved record as the comparison uses it; raises :class:`DamagedRunError` if it
        cannot be used."""
        ...

    def describe(self, record: Record) -> str:
        """The run's headline numbers, for the progress line."""
        ...

    def write_outputs(
        self, out: Path, runs: Sequence[Record], losses: Sequence[str], seeds: Sequence[int]
    ) -> TaskOutputs:
        """Draw the task's pictures into ``out`` from all the runs."""
        ...


def run_path(out: Path, loss: str, seed: int) -> Path:
    """The record of one finished run."""
    return out / RUNS / f"{loss}__seed{seed}.json"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so that an interrupted write never leaves a partial file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    write_atomically(path, json.dumps(payload, indent=1, sort_keys=True).encode())


def save_array(path: Path, array: Any) -> None:
    """``numpy.save`` through :func:`write_atomically`."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomically(path, buffer.getvalue())


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so that settings
    compare equal with the ones a saved record holds."""
    return json.loads(json.dumps(value))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class _Run:
    loss: str
    seed: int
    path: Path
    config: dict[str, Any]
    record: Record | None = None


def _read_record(path: Path) -> Record:
    """The saved record at ``path``; :class:`DamagedRunError` if it is not a whole record."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DamagedRunError("is not valid JSON (empty or cut short)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedRunError(f"cannot be read ({error})") from None
    if not isinstance(record, dict):
        raise DamagedRunError(f"holds a JSON {type(record).__name__}, not a run record")
    missing = [name for name in RECORD_FIELDS if name not in record]
    if missing:
        raise DamagedRunError(f"has no {', '.join(missing)}")
    for name, kind in RECORD_FIELDS.items():
        if not isinstance(record[name], kind):
            raise DamagedRunError(f"has a {name} of the wrong type")
    return record


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [
        f"{key} {json.dumps(saved.get(key))} (now {json.dumps(wanted.get(key))})"
        for key in sorted(set(saved) | set(wanted))
        if saved.get(key) != wanted.get(key)
    ]


def _plan(
    task: Task,
    losses: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    say: Callable[[str], None],
) -> list[_Run]:
    """Every (seed, loss) run with its saved record if that can be reused."""
    settings = as_json(task.settings())
    plan: list[_Run] = []
    others: list[tuple[Path, list[str]]] = []
    for seed in seeds:
        for loss in losses:
            run = _Run(
                loss, seed, run_path(out, loss, seed), {**settings, "loss": loss, "seed": seed}
            )
            plan.append(run)
            if not run.path.exists():
                continue
            try:
                record = _read_record(run.path)
                differences = _differences(record["config"], run.config)
                if differences:
                    others.append((run.path, differences))
                    continue
                run.record = task.reuse(record, run.path)
            except DamagedRunError as damage:
                say(f"{run.path} {damage}: training that run again")
    if others:
        path, differences = others[0]
        raise SettingsError(
            f"{out / RUNS} holds {len(others)} run(s) made with other settings, e.g. "
            f"{path.name}: {'; '.join(differences)}. Give the same settings to resume them, "
            "or choose another --out (or delete those files) to train them afresh"
        )
    return plan


def compare(
    task: Task,
    losses: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    command: str,
    *,
    is_main: bool = True,
) -> int:
    """Run (or reuse) every (seed, loss) run of ``task`` into ``out`` and write the
    outputs; returns the command's exit code. ``command`` (the command line that
    reproduces the comparison) is stored in ``results.json``. Only the main process
    (``is_main``) prints and writes; the others train alongside it."""

    def say(text: str) -> None:
        if is_main:
            print(text, flush=True)

    plan = _plan(task, losses, seeds, out, say)
    pending = [run for run in plan if run.record is None]
    say(
        f"{task.name}: {len(losses)} loss(es) × {len(seeds)} seed(s) = {len(plan)} runs in "
        f"{out}; {len(plan) - len(pending)} saved, {len(pending)} to train"
    )
    trained_seconds: list[float] = []
    try:
        for seed in seeds:
            todo = [run for run in pending if run.seed == seed]
            if todo:
                task.prepare(seed)
            for run in todo:
                number = len(trained_seconds) + 1
                say(f"run {number} of {len(pending)}: {run.loss} seed {run.seed}")
                started = time.perf_counter()
                record = task.train(run.loss, run.seed, run.path)
                record["config"] = run.config
                if is_main:
                    write_json(run.path, record)
                run.record = record
                trained_seconds.append(time.perf_counter() - started)
                left = len(pending) - len(trained_seconds)
                estimate = (
                    f"; about {_duration(left * sum(trained_seconds) / len(trained_seconds))} left"
                    if left
                    else ""
                )
                say(
                    f"  {run.loss} seed {run.seed}: {task.describe(record)} "
                    f"({_duration(trained_seconds[-1])}){estimate}"
                )
        if not is_main:
            return 0
        runs = [run.record for run in plan if run.record is not None]
        _write_outputs(task, runs, losses, seeds, out, command)
    except KeyboardInterrupt:
        if is_main:
            saved = sum(run.record is not None for run in plan)
            print(
                f"\neqlosses compare: interrupted; {saved} of {len(plan)} runs are saved in "
                f"{out / RUNS} ({len(trained_seconds)} from this session); rerun the same "
                "command to resume",
                file=sys.stderr,
                flush=True,
            )
        return INTERRUPTED
    return 0


def _write_outputs(
    task: Task,
    runs: Sequence[Record],
    losses: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    command: str,
) -> None:
    outputs = task.write_outputs(out, runs, losses, seeds)
    table = report.markdown_table(runs, losses, task.metrics, task.baseline)
    best = report.best_per_metric(runs, losses, task.metrics, task.baseline)
    verdicts = report.best_lines(best, task.baseline)
    payload = {
        "command": command,
        "config": {
            **task.settings(),
            **outputs.details,
            "seeds": list(seeds),
            "losses": list(losses),
            "baseline": task.baseline,
        },
        "summary": report.summarise(runs, losses, task.metrics),
        "best": best,
        "runs": list(runs),
    }
    write_json(out / "results.json", payload)
    markdown = table + "\n" + verdicts + (f"\n{outputs.notes}" if outputs.notes else "")
    write_atomically(out / "results.md", markdown.encode())
    print()
    print(markdown)
    files = ", ".join(["results.json", "results.md", *outputs.files])
    print(f"results in {out}/ ({files})")
    print(f"reproduce with: {command}", flush=True)
