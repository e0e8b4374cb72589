"""The speed and memory benchmark at smoke size.

The smoke run goes end to end through ``run()`` (verification, interleaved timing,
table, targets, JSON); the memory measurement is checked on its own in a fresh process,
against an allocation of known size.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from eqlosses_lab import benchmark


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _table_rows(text: str) -> list[list[str]]:
    """Rows of the plain-text table: cells are separated by two or more spaces."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("loss "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def _positive_number(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


@pytest.mark.usefixtures("keep_threads")
def test_smoke_run_reports_every_loss_with_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "bench.json"
    code = benchmark.run(
        _args("--size", "smoke", "--repeats", "2", "--threads", "1", "--json", str(saved))
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "torch.set_num_threads(1) -> 1 intra-op" in out
    assert f"torch {torch.__version__}" in out
    assert "MALLOC_* in force" in out
    assert "verified: (a) and (b) agree" in out

    rows = _table_rows(out)
    assert len(rows) == len(benchmark.CASES)
    for case, row in zip(benchmark.CASES.values(), rows, strict=True):
        assert row[0] == case.title and row[1] == case.setting
        assert row[2] == " × ".join(str(s) for s in case.smoke_shape)
        for cell in row[3:6]:  # "median (IQR x)" of (a), (b), (c)
            match = re.fullmatch(r"(\S+) \(IQR (\S+)\)", cell)
            assert match, cell
            _positive_number(match.group(1))
            assert float(match.group(2)) >= 0
        _positive_number(row[6])  # a/b
        _positive_number(row[7])  # a/c
        assert row[8] == "-"  # no --load
        assert row[9:12] == ["-", "-", "-"]  # memory is off by default at smoke size
    for title in ("Sigmoid-EQL", "EQL", "EFL", "EQFL", "Softmax-EQL"):
        assert any(row[0] == title for row in rows)
    assert "targets (the targets are for --size full" in out

    payload = json.loads(saved.read_text())
    assert payload["size"] == "smoke" and payload["threads"] == 1
    assert [r["case"] for r in payload["results"]] == list(benchmark.CASES)
    for result in payload["results"]:
        for impl in "abc":
            timing = result["timings"][impl]
            assert len(timing["samples_ms"]) == 2
            assert timing["q1_ms"] <= timing["median_ms"] <= timing["q3_ms"]
        medians = {k: result["timings"][k]["median_ms"] for k in "abc"}
        assert result["ratios"]["a/b"] == pytest.approx(medians["a"] / medians["b"])
        assert result["ratios"]["a/c"] == pytest.approx(medians["a"] / medians["c"])
        # (a) and (b) start from the same state, so their first losses agree
        first = result["first_loss"]
        assert first["a"] == pytest.approx(first["b"], rel=1e-4)
        fixed = result.get("fixed_overhead")
        assert (fixed is not None) == result["case"].endswith("/small")
        if fixed is not None:
            assert fixed["rows"] == benchmark.FIXED_OVERHEAD_ROWS
            assert fixed["a_ms"] > 0 and fixed["c_ms"] > 0
            assert fixed["overhead_ms"] == pytest.approx(fixed["a_ms"] - fixed["c_ms"])
    assert f"fixed overhead: CPU time per step on {benchmark.FIXED_OVERHEAD_ROWS} rows" in out
    assert "fixed a-c = " in out


@pytest.mark.usefixtures("keep_threads")
def test_markdown_table_for_a_subset(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(
        "--size", "smoke", "--repeats", "1", "--threads", "1", "--losses", "softmax-eql",
        "--markdown", "--lvis-counts", "synthetic",
    )  # fmt: skip
    assert benchmark.run(args) == 0
    out = capsys.readouterr().out
    assert "synthetic Zipf profile" in out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, alignment, the three Softmax-EQL cases
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["loss", "setting", "logits"] and "a/b" in header and "a/c" in header
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header) and cells[0] == "Softmax-EQL"
        _positive_number(cells[header.index("a/b")])
        _positive_number(cells[header.index("a/c")])


def test_select_cases() -> None:
    assert [c.key for c in benchmark.select_cases(["efl"])] == ["efl", "efl/small"]
    assert [c.key for c in benchmark.select_cases(["eqfl/small,eql"])] == [
        "eql",
        "eql/small",
        "eqfl/small",
    ]
    assert len(benchmark.select_cases(None)) == len(benchmark.CASES)
    with pytest.raises(ValueError, match="--losses"):
        benchmark.select_cases(["focal"])


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--threads", "0", "expected a whole number of at least 1, got '0'"),
        ("--repeats", "-2", "expected a whole number of at least 1, got '-2'"),
        ("--warmup", "-1", "expected a whole number of at least 0, got '-1'"),
        ("--losses", "focal", "expected loss names (sigmoid-eql, eql, efl, eqfl, softmax-eql)"),
    ],
)
def test_bad_options_are_refused_as_they_are_parsed(
    capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    with pytest.raises(SystemExit) as info:
        _args(option, value)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {expected}" in err


def test_label_streams_look_like_the_data() -> None:
    profile = benchmark.load_profile(None)
    generator = torch.Generator().manual_seed(0)
    two_stage = benchmark.sample_labels(
        benchmark.CASES["sigmoid-eql"], (8192, 1204), profile, generator
    )
    assert float((two_stage == 1203).double().mean()) == pytest.approx(0.75, abs=1e-3)
    assert int(two_stage.max()) == 1203 and int(two_stage.min()) >= 0
    one_stage = benchmark.sample_labels(benchmark.CASES["efl"], (65536, 1203), profile, generator)
    assert float((one_stage < 1203).double().mean()) == pytest.approx(0.01, abs=1e-3)
    pixels = benchmark.sample_labels(
        benchmark.CASES["softmax-eql/pixel"], (8, 12, 180, 240), profile, generator
    )
    assert pixels.shape == (8, 180, 240)
    ignored = pixels == benchmark.PIXEL_IGNORE_INDEX
    assert float(ignored.double().mean()) == pytest.approx(0.04, abs=0.005)
    assert int(pixels[~ignored].max()) <= 10  # class 11 (unlabelled) only as the ignore label
    # long-tailed: the most frequent class outnumbers the rarest drawn by far
    counts = torch.bincount(one_stage[one_stage < 1203], minlength=1203)
    assert int(counts.max()) >= 20 * max(1, int(counts[counts > 0].min()))


def test_verification_catches_a_different_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    original = benchmark.build

    def wrong_tau(
        case: benchmark.Case, which: str, shape: tuple[int, ...], profile: benchmark.LabelProfile
    ) -> benchmark.Implementation:
        impl = original(case, which, shape, profile)
        if isinstance(impl, benchmark.StraightSoftmaxEQL):
            impl.tau = 0.5  # invisible at step 1 (no statistics yet), wrong from step 2
        return impl

    monkeypatch.setattr(benchmark, "build", wrong_tau)
    profile = benchmark.load_profile(None)
    with pytest.raises(benchmark.BenchmarkError, match=r"disagree .* at step 2"):
        benchmark.verify([benchmark.CASES["softmax-eql"]], profile)
    monkeypatch.setattr(benchmark, "build", original)
    assert benchmark.verify(benchmark.select_cases(None), profile, steps=2)


class _SpinningLoss(benchmark.Implementation):
    """The plain loss plus a known amount of the calling thread's CPU time."""

    def __init__(self, plain: benchmark.Implementation, spin_ms: float) -> None:
        self.plain = plain
        self.spin_ms = spin_ms

    def __call__(self, inputs: benchmark.Inputs) -> torch.Tensor:
        end = time.thread_time() + self.spin_ms / 1000.0
        while time.thread_time() < end:
            pass
        return self.plain(inputs)


@pytest.mark.usefixtures("keep_threads")
def test_fixed_overhead_finds_a_known_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    original = benchmark.build

    def spinning(
        case: benchmark.Case,
        which: str,
        shape: tuple[int, ...],
        profile: benchmark.LabelProfile,
        device: torch.device | str = "cpu",
    ) -> benchmark.Implementation:
        plain = original(case, "c", shape, profile, device)
        return _SpinningLoss(plain, 0.3) if which == "a" else plain

    monkeypatch.setattr(benchmark, "build", spinning)
    monkeypatch.setattr(benchmark, "FIXED_OVERHEAD_CALLS", 5)
    torch.set_num_threads(2)
    fixed = benchmark.fixed_overhead(
        benchmark.CASES["softmax-eql/small"], benchmark.load_profile(None), 81, repeats=2
    )
    assert fixed["overhead_ms"] == pytest.approx(0.3, abs=0.1)
    assert torch.get_num_threads() == 2  # restored after the one-thread measurement


class _ColdAfterSwitch(benchmark.Implementation):
    """A loss that takes ``fast`` seconds a call, but ``cold`` seconds on its first call
    after another implementation ran (caches and pages left by that one);
    ``last_caller`` holds the implementation that ran last, shared by all of them."""

    def __init__(self, fast: float, cold: float, last_caller: list[object]) -> None:
        self.fast, self.cold, self.last_caller = fast, cold, last_caller

    def __call__(self, inputs: benchmark.Inputs) -> torch.Tensor:
        switched = self.last_caller[0] is not self
        self.last_caller[0] = self
        time.sleep(self.cold if switched else self.fast)
        return inputs.logits.sum()


def test_a_slow_first_call_does_not_set_the_calls_per_sample() -> None:
    inputs = {
        key: benchmark.Inputs(torch.randn(4, 3, requires_grad=True), torch.zeros(4)) for key in "ac"
    }
    last_caller: list[object] = [None]
    impls: dict[str, benchmark.Implementation] = {
        "a": _ColdAfterSwitch(fast=0.001, cold=0.03, last_caller=last_caller),
        "c": _ColdAfterSwitch(fast=0.001, cold=0.001, last_caller=last_caller),
    }
    timings, _ = benchmark.time_case(impls, inputs, repeats=1, warmup=2)
    # 1 ms calls: a 10 ms sample holds several, however slow the first one after "c" is
    assert timings["a"].inner >= 4
    assert timings["c"].inner >= 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_case_reads_a_known_allocation() -> None:
    # 1024 x 1000 float32 logits: 4 MB per logit-sized tensor
    # each case starts its own Python; run the two side by side
    with ThreadPoolExecutor(2) as pool:
        calibration, library = pool.map(
            lambda impl: benchmark.run_memory_case(
                "softmax-eql", impl, size="full", counts="synthetic", threads=1
            ),
            ["alloc3", "a"],
        )
    assert calibration["logit_bytes"] == 1024 * 1000 * 4
    assert calibration["logit_units"] == pytest.approx(3.0, abs=0.15)
    # at least the returned gradient, and far from the straightforward form's ~7
    assert 0.9 <= library["logit_units"] <= 2.0


@pytest.mark.usefixtures("keep_threads")
def test_load_times_every_case_again_beside_busy_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "bench.json"
    args = _args(
        "--size", "smoke", "--repeats", "1", "--threads", "1", "--losses", "efl",
        "--load", "1", "--json", str(saved),
    )  # fmt: skip
    assert benchmark.run(args) == 0
    out = capsys.readouterr().out
    assert "beside 1 busy processes" in out
    rows = _table_rows(out)
    assert [row[0] for row in rows] == ["EFL", "EFL"]
    payload = json.loads(saved.read_text())
    assert payload["load"] == 1
    for result, row in zip(payload["results"], rows, strict=True):
        loaded = result["loaded"]
        assert loaded["processes"] == 1
        medians = {k: loaded["timings"][k]["median_ms"] for k in "ac"}
        assert loaded["ratios"]["a/c"] == pytest.approx(medians["a"] / medians["c"])
        assert float(row[8]) == pytest.approx(loaded["ratios"]["a/c"], abs=0.005)
    assert "loaded a/c = " in out


def test_busy_processes_are_stopped_however_the_block_ends() -> None:
    with pytest.raises(KeyboardInterrupt), benchmark.busy_processes(2) as processes:
        assert all(process.poll() is None for process in processes)
        raise KeyboardInterrupt
    assert all(process.poll() is not None for process in processes)


def test_load_must_not_be_negative() -> None:
    with pytest.raises(SystemExit):
        _args("--load", "-1")
