"""`eqlosses compare` as a user meets it: option checks, resume, damaged records, Ctrl-C,
default folders, the closing verdicts and a results file that reproduces itself; each run
in a temporary folder on the tiny Fashion-MNIST-like set (one epoch, few losses)."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eqlosses
from eqlosses.__main__ import main
from eqlosses_lab.metrics import beats
from eqlosses_lab.tasks.runner import write_json

SRC = Path(__file__).resolve().parents[3] / "src"


def _args(data: Path | None, out: Path, *extra: str) -> list[str]:
    given = [] if data is None else ["--data-dir", str(data)]
    return [
        "compare", *given, "--out", str(out), "--epochs", "1", "--threads", "1",
        "--no-progress", "--imbalance-ratio", "10", "--seeds", "0", "--losses", "ce",
        "softmax-eql", *extra,
    ]  # fmt: skip


def _with(args: list[str], option: str, *values: str) -> list[str]:
    """``args`` with ``option``'s (one) value replaced by ``values``."""
    at = args.index(option)
    return [*args[: at + 1], *values, *args[at + 2 :]]


# ------------------------------------------------------------------- option checks


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--epochs", "0", "a whole number of at least 1"),
        ("--epochs", "-1", "a whole number of at least 1"),
        ("--epochs", "two", "a whole number of at least 1"),
        ("--seeds", "-1", "a whole number of at least 0"),
        ("--threads", "0", "a whole number of at least 1"),
        (
            "--imbalance-ratio",
            "0",
            "a finite ratio of at least 1 (head class count over tail class count)",
        ),
        (
            "--imbalance-ratio",
            "0.5",
            "a finite ratio of at least 1 (head class count over tail class count)",
        ),
        (
            "--imbalance-ratio",
            "nan",
            "a finite ratio of at least 1 (head class count over tail class count)",
        ),
        (
            "--imbalance-ratio",
            "inf",
            "a finite ratio of at least 1 (head class count over tail class count)",
        ),
        ("--limit-images", "0", "a whole number of at least 1"),
        ("--center-radius", "-1", "a finite number above 0"),
    ],
)
def test_bad_values_are_refused_as_they_are_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    out = tmp_path / "out"
    args = ["compare", "--data-dir", str(tmp_path / "none"), "--out", str(out), option, value]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected {expected}, got '{value}'" in err
    assert "Traceback" not in err and not out.exists()


def test_an_output_folder_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "results.txt"
    taken.write_text("not a folder")
    for out in (taken, taken / "inside"):
        with pytest.raises(SystemExit) as info:
            main(["compare", "--data-dir", str(tmp_path / "none"), "--out", str(out)])
        assert info.value.code == 2
        assert f"argument --out: expected a folder to write results into, got '{out}'" in (
            capsys.readouterr().err
        )
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("option", "values"), [("--seeds", ["0", "1", "0"]), ("--losses", ["ce", "ce"])]
)
def test_a_value_given_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, values: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["compare", "--data-dir", str(tmp_path / "none"), option, *values])
    assert info.value.code == 2
    assert f"argument {option}: expected each value once, got {values[0]} twice" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "segmentation", "--dataset", "omniglot"], "--dataset: only for classification"),
        (["--task", "classification", "--detector", "two-stage"], "--detector: only for detection"),
        (["--task", "detection", "--limit-images", "3"], "--limit-images: only for segmentation"),
        (
            ["--task", "detection", "--detector", "two-stage", "--center-radius", "1"],
            "--center-radius: only for one-stage",
        ),
        (["--dataset", "omniglot", "--imbalance-ratio", "10"], "--imbalance-ratio: only for"),
        (["--losses", "focal", "efl"], "--losses: classification takes ce, focal,"),
        (["--task", "detection", "--losses", "seesaw"], "--losses: detection one-stage takes"),
    ],
)
def test_options_of_another_task_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["compare", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eqlosses compare: ") and "\n" not in err
    assert message in err, err
    assert not out.exists()


# ------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("option", "value", "setting"),
    [
        ("--epochs", "2", "epochs 1 (now 2)"),
        ("--imbalance-ratio", "5", "imbalance_ratio 10.0 (now 5.0)"),
        ("--threads", "2", "threads 1 (now 2)"),
    ],
)
def test_saved_runs_of_other_settings_stop_the_rerun(
    tiny_fashion: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    setting: str,
) -> None:
    out = tmp_path / "out"
    args = _args(tiny_fashion, out)
    assert main(args) == 0
    saved = {path: path.read_bytes() for path in out.rglob("*.json")}
    capsys.readouterr()
    assert main(_with(args, option, value)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "holds 2 run(s) made with other settings" in err
    assert "ce__seed0.json" in err and setting in err
    assert {path: path.read_bytes() for path in out.rglob("*.json")} == saved


def test_a_rerun_with_the_same_settings_trains_only_what_is_missing(
    tiny_fashion: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = _args(tiny_fashion, out)
    assert main(args) == 0
    first = (out / "runs" / "ce__seed0.json").read_bytes()
    capsys.readouterr()
    assert main(_with(args, "--seeds", "0", "1")) == 0
    printed = capsys.readouterr().out
    assert "4 runs in" in printed and "2 saved, 2 to train" in printed
    assert (out / "runs" / "ce__seed0.json").read_bytes() == first
    assert {
        (r["loss"], r["seed"]) for r in json.loads((out / "results.json").read_text())["runs"]
    } == {(loss, seed) for loss in ("ce", "softmax-eql") for seed in (0, 1)}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is not valid JSON"),
        (b'{"loss": "ce", "seed": 0, "metr', "is not valid JSON"),
        (b"{}", "has no loss, seed, config, metrics, per_class, class_sizes, seconds"),
        (b"[1, 2]", "holds a JSON list"),
        (b'{"loss": "ce", "seed": "0"}', "has no config"),
    ],
)
def test_a_damaged_record_is_trained_again(
    tiny_fashion: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    why: str,
) -> None:
    out = tmp_path / "out"
    args = _args(tiny_fashion, out)
    assert main(args) == 0
    record = out / "runs" / "ce__seed0.json"
    original = json.loads(record.read_text())
    record.write_bytes(content)
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"{record} {why}" in printed and "training that run again" in printed
    again = json.loads(record.read_text())
    assert again["per_class"] == original["per_class"]  # same seed, same settings
    assert again["config"] == original["config"]


def test_records_are_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs" / "ce__seed0.json"
    write_json(path, {"kept": True})

    def interrupted(source: str, target: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"kept": False, "padding": "x" * 100_000})
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_ctrl_c_says_what_is_saved_and_the_same_command_resumes(
    tiny_fashion: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [*_with(_args(tiny_fashion, out), "--epochs", "60"), "seesaw"]
    command = [sys.executable, "-m", "eqlosses", *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("run 2 of 3"):  # the first run is saved
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "interrupted; 1 of 3 runs are saved in" in lines[0]
    assert "rerun the same command to resume" in lines[0]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["ce__seed0.json"]

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 saved, 2 to train" in resumed.stdout
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 3


# ------------------------------------------------------------------------ outputs


def test_each_task_and_data_set_has_its_own_default_folder(
    tiny_fashion: Path, camvid_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    classification = _args(tiny_fashion, Path("unused"))
    del classification[classification.index("--out") : classification.index("--out") + 2]
    assert main(classification) == 0
    assert main([
        "compare", "--task", "segmentation", "--data-dir", str(camvid_dir), "--limit-images", "2",
        "--epochs", "1", "--seeds", "0", "--losses", "ce", "--threads", "1", "--no-progress",
    ]) == 0  # fmt: skip
    folders = {
        json.loads(path.read_text())["config"]["task"]: path.parent.relative_to(tmp_path)
        for path in tmp_path.glob("runs/*/results.json")
    }
    assert folders == {
        "classification": Path("runs", "classification-fashion-mnist"),
        "segmentation": Path("runs", "segmentation-camvid"),
    }
    for folder in folders.values():
        assert {
            r["config"]["task"] for r in json.loads((folder / "results.json").read_text())["runs"]
        } == {json.loads((folder / "results.json").read_text())["config"]["task"]}


def test_progress_and_the_closing_verdicts(
    tiny_fashion: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = _with(_args(tiny_fashion, out, "balanced-softmax"), "--seeds", "0", "1")
    assert main(args) == 0
    printed = capsys.readouterr().out
    for k in range(1, 7):
        assert f"run {k} of 6: " in printed
    assert printed.count(" left\n") == 5  # an estimate after every run but the last

    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    losses = ["ce", "softmax-eql", "balanced-softmax"]
    metrics = [m for m in ("overall", "head", "middle", "tail", "many", "medium", "few")
               if m in runs[0]["metrics"]]  # fmt: skip
    assert set(results["best"]) == set(metrics)
    for metric in metrics:
        per_seed = {
            loss: [r["metrics"][metric] for s in (0, 1) for r in runs
                   if r["loss"] == loss and r["seed"] == s]
            for loss in losses
        }  # fmt: skip
        means = {loss: sum(v) / len(v) for loss, v in per_seed.items()}
        best = max(losses, key=lambda loss: means[loss])  # first listed on a tie
        if best == "ce":
            verdict = "baseline"
        elif beats(per_seed[best], per_seed["ce"]):
            verdict = "beats"
        else:
            verdict = "loses" if beats(per_seed["ce"], per_seed[best]) else "tie"
        entry = results["best"][metric]
        assert (entry["loss"], entry["vs_baseline"]) == (best, verdict)
        assert math.isclose(entry["mean"], means[best])
        line = next(line for line in printed.splitlines() if line.startswith(f"- {metric}: "))
        assert f"`{best}` {100 * means[best]:.1f} ± " in line
        assert ("beats `ce`" in line) == (verdict == "beats")
        assert ("the baseline itself" in line) == (verdict == "baseline")


def test_results_hold_the_settings_and_the_command_that_reproduces_them(
    tiny_fashion: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the data set named by its environment variable, not by --data-dir
    monkeypatch.setenv("EQLOSSES_FASHION_MNIST_DIR", str(tiny_fashion))
    out = tmp_path / "first"
    assert main(_args(None, out)) == 0
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    assert config["threads"] == 1 and config["world_size"] == 1
    assert config["torch_version"] == torch.__version__
    assert config["eqlosses_version"] == eqlosses.__version__
    assert (config["epochs"], config["imbalance_ratio"], config["task"]) == (
        1,
        10.0,
        "classification",
    )
    assert config["data_dir"] == str(tiny_fashion.resolve())
    for run in results["runs"]:
        settings = {k: v for k, v in run["config"].items() if k not in ("loss", "seed")}
        assert settings == {k: config[k] for k in settings}
        assert (run["config"]["loss"], run["config"]["seed"]) == (run["loss"], run["seed"])

    words = shlex.split(results["command"])
    assert words[:2] == ["eqlosses", "compare"]
    assert words[words.index("--data-dir") + 1] == str(tiny_fashion.resolve())
    monkeypatch.delenv("EQLOSSES_FASHION_MNIST_DIR")
    again = tmp_path / "again"
    assert main(_with(words[1:], "--out", str(again))) == 0
    reproduced = json.loads((again / "results.json").read_text())
    assert reproduced["config"] == config
    for first, second in zip(results["runs"], reproduced["runs"], strict=True):
        assert (first["metrics"], first["per_class"]) == (second["metrics"], second["per_class"])


def test_a_ratio_the_data_cannot_give_is_one_line(
    tiny_fashion: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 60 training images per class: a ratio above 60 leaves the tail class none
    assert main(_with(_args(tiny_fashion, tmp_path / "out"), "--imbalance-ratio", "61")) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "eqlosses compare: --imbalance-ratio: expected at most 60 (the head class "
        "keeps 60 training images, so a larger ratio leaves the tail class none), got 61"
    )


def test_missing_omniglot_names_the_option_and_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EQLOSSES_OMNIGLOT_DIR", raising=False)
    assert main(["compare", "--dataset", "omniglot", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("eqlosses compare: Omniglot: no location given:")
    assert "--data-dir" in err and "EQLOSSES_OMNIGLOT_DIR" in err
    assert "images_background_small1.zip" in err
