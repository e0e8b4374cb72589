"""`eqlosses compare` end to end on a tiny Fashion-MNIST-like set written as IDX files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eqlosses.__main__ import main

LOSSES = ["ce", "softmax-eql", "sigmoid-eql", "seesaw"]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compare", "--data-dir", str(data), "--out", str(out), "--epochs", "2",
        "--threads", "1", "--no-progress", "--imbalance-ratio", "10", *extra,
    ]  # fmt: skip


def test_compare_writes_results_and_resumes(tiny_fashion: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(_args(tiny_fashion, out, "--losses", *LOSSES, "--seeds", "0", "1")) == 0
    results = json.loads((out / "results.json").read_text())
    assert {(r["loss"], r["seed"]) for r in results["runs"]} == {
        (loss, seed) for loss in LOSSES for seed in (0, 1)
    }
    run = results["runs"][0]
    # ρ = 10 over 10 classes from n_max = 60: floor(60 · 10^(-j/9))
    assert run["class_sizes"] == [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]
    assert 0.0 <= run["metrics"]["overall"] <= 1.0
    assert set(results["summary"]) == set(LOSSES)
    table = (out / "results.md").read_text()
    assert all(f"`{loss}`" in table for loss in LOSSES)
    for picture in ("per_class_accuracy.png", "grad_ratio.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    eql_runs = [r for r in results["runs"] if r["loss"] == "softmax-eql"]
    assert len(eql_runs[0]["grad_ratio_history"]) == 2  # one g vector per epoch
    ce_runs = [r for r in results["runs"] if r["loss"] == "ce"]
    assert ce_runs[0]["grad_ratio_history"] is None

    # a rerun skips finished runs: a marker written into a saved run survives
    saved = out / "runs" / "ce__seed0.json"
    record = json.loads(saved.read_text())
    record["marker"] = "kept"
    saved.write_text(json.dumps(record))
    (out / "runs" / "seesaw__seed1.json").unlink()
    assert main(_args(tiny_fashion, out, "--losses", *LOSSES, "--seeds", "0", "1")) == 0
    again = json.loads((out / "results.json").read_text())
    kept = [r for r in again["runs"] if r["loss"] == "ce" and r["seed"] == 0]
    assert kept[0]["marker"] == "kept"
    assert (out / "runs" / "seesaw__seed1.json").exists()


def test_same_seed_same_result(tiny_fashion: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert main(_args(tiny_fashion, tmp_path / name, "--losses", "eql", "--seeds", "3")) == 0
    first, second = (
        json.loads((tmp_path / name / "runs" / "eql__seed3.json").read_text())
        for name in ("a", "b")
    )
    assert first["per_class"] == second["per_class"]


def test_missing_data_set_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(_args(tmp_path / "nowhere", tmp_path / "out", "--losses", "ce", "--seeds", "0"))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err
    assert "apt-get install dataset-fashion-mnist" in err and "--data-dir" in err


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_match_one(tiny_fashion: Path, tmp_path: Path) -> None:
    """torchrun --nproc_per_node=2 splits every batch across two gloo ranks: the same
    per-class results and the same gradient statistics as one process."""
    losses = ["softmax-eql", "seesaw"]
    common = _args(tiny_fashion, tmp_path / "x", "--losses", *losses, "--seeds", "0")
    single = tmp_path / "single"
    double = tmp_path / "double"
    assert main([*common[:4], str(single), *common[5:]]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["torchrun", "--nproc_per_node=2", "--rdzv-backend=c10d"]
    launcher += ["--rdzv-endpoint=127.0.0.1:0", "-m", "eqlosses"]
    completed = subprocess.run(
        [*launcher, *common[:4], str(double), *common[5:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    for loss in losses:
        one = json.loads((single / "runs" / f"{loss}__seed0.json").read_text())
        two = json.loads((double / "runs" / f"{loss}__seed0.json").read_text())
        assert one["per_class"] == two["per_class"]
        if one["grad_ratio_history"] is not None:
            np.testing.assert_allclose(
                two["grad_ratio_history"], one["grad_ratio_history"], rtol=1e-4, atol=1e-7
            )
    results = json.loads((double / "results.json").read_text())
    assert results["config"]["world_size"] == 2
    assert results["command"].startswith("torchrun --nproc_per_node=2 -m eqlosses compare ")


def test_log_dir_writes_tensorboard_scalars(tiny_fashion: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "logs"
    args = _args(tiny_fashion, tmp_path / "out", "--losses", "softmax-eql", "--seeds", "0")
    assert main([*args, "--log-dir", str(logs)]) == 0
    events = EventAccumulator(str(logs / "softmax-eql__seed0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "grad_ratio/head", "grad_ratio/tail"} <= tags
    assert len(events.Scalars("train/loss")) == 2  # one per epoch


def test_unsupported_options_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "out")
    code = main(["compare", "--task", "detection", "--log-dir", str(tmp_path), "--out", out])
    assert code == 2
    assert "--log-dir" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["compare", "--task", "segmentation", "--out", out]) == 2
    assert "--task segmentation" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
