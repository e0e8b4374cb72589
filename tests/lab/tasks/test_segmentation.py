"""`eqlosses compare --task segmentation`: the losses per pixel, and a tiny end-to-end run
on a few real CamVid images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eqlosses.__main__ import main
from eqlosses_lab.data.camvid import CAMVID_IGNORE_INDEX
from eqlosses_lab.registry import SEGMENTATION, LossContext
from eqlosses_lab.tasks.segmentation import example_indices

C = 11


@pytest.mark.parametrize("name", SEGMENTATION.names)
def test_each_loss_per_pixel_equals_the_loss_over_the_labelled_pixels_as_rows(
    name: str,
) -> None:
    """(N, C, H, W) logits with ignored pixels give the loss and gradient of the (M, C)
    rows of the labelled pixels alone."""
    torch.manual_seed(0)
    counts = [5000, 3000, 800, 600, 400, 300, 200, 100, 60, 30, 10]
    weights = torch.linspace(0.5, 3.0, C, dtype=torch.float64)
    logits = torch.randn(2, C, 5, 7, requires_grad=True)
    target = torch.randint(0, C, (2, 5, 7))
    target[0, :2] = CAMVID_IGNORE_INDEX
    context = LossContext(counts, ignore_index=CAMVID_IGNORE_INDEX, class_weights=weights)
    per_pixel = SEGMENTATION.build(name, context)
    value = per_pixel(logits, target)
    value.backward()

    keep = target != CAMVID_IGNORE_INDEX
    rows = logits.detach().movedim(1, -1)[keep].requires_grad_(True)
    as_rows = SEGMENTATION.build(name, context)
    expected = as_rows(rows, target[keep])
    expected.backward()
    torch.testing.assert_close(value, expected)
    assert logits.grad is not None and rows.grad is not None
    grad = logits.grad.movedim(1, -1)
    torch.testing.assert_close(grad[keep], rows.grad)
    assert bool((grad[~keep] == 0).all())


def test_example_images_have_the_most_rare_pixels() -> None:
    labels = torch.zeros(4, 2, 3, dtype=torch.long)
    labels[1, 0, :2] = 3  # 2 rare pixels
    labels[2, :, :] = 4  # 6 rare pixels
    labels[3, 0, 0] = 3  # 1
    assert example_indices(labels, rare=[3, 4], count=3) == [2, 1, 3]


def test_classification_loss_is_refused_for_segmentation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["compare", "--task", "segmentation", "--losses", "eql", "--out", str(tmp_path)])
    assert code == 2
    assert "--losses: segmentation takes ce, " in capsys.readouterr().err


def test_missing_camvid_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compare", "--task", "segmentation", "--data-dir", str(tmp_path / "none")]
    assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "CamVid not found" in capsys.readouterr().err


def test_segmentation_compare_end_to_end_and_resume(
    camvid_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    losses = ["ce", "softmax-eql", "focal"]
    args = [
        "compare", "--task", "segmentation", "--data-dir", str(camvid_dir),
        "--limit-images", "4", "--epochs", "2", "--seeds", "0", "--threads", "1",
        "--no-progress", "--out", str(out), "--losses", *losses,
    ]  # fmt: skip
    assert main([*args, "--log-dir", str(tmp_path / "tb")]) == 0
    assert list((tmp_path / "tb" / "segmentation-softmax-eql__seed0").glob("events.out.*"))
    results = json.loads((out / "results.json").read_text())
    assert {r["loss"] for r in results["runs"]} == set(losses)
    assert results["config"]["train_images"] == results["config"]["test_images"] == 4
    run = results["runs"][0]
    assert len(run["per_class"]) == len(run["class_sizes"]) == C
    assert sum(run["pixel_share"]) == pytest.approx(1.0)
    confusion = np.array(run["confusion"])
    # every labelled test pixel is counted once
    assert confusion.sum() < 4 * 180 * 240 and confusion.shape == (C, C)
    assert 0.0 <= run["metrics"]["miou"] <= 1.0
    eql = next(r for r in results["runs"] if r["loss"] == "softmax-eql")
    assert len(eql["grad_ratio_history"]) == 2 and len(eql["grad_ratio_history"][0]) == C
    assert next(r for r in results["runs"] if r["loss"] == "ce")["grad_ratio_history"] is None
    assert "`softmax-eql`" in (out / "results.md").read_text()
    for picture in ("per_class_iou.png", "grad_ratio.png", "examples.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.load(out / "runs" / "ce__seed0.examples.npy").shape == (3, 180, 240)

    # a rerun keeps finished runs and redoes the missing one
    saved = out / "runs" / "ce__seed0.json"
    record = json.loads(saved.read_text())
    miou = record["metrics"]["miou"]
    record["marker"] = "kept"
    record["metrics"]["miou"] = 5.0  # stale scores are recomputed from the confusion matrix
    saved.write_text(json.dumps(record))
    (out / "runs" / "focal__seed0.json").unlink()
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    kept = next(r for r in again["runs"] if r["loss"] == "ce")
    assert kept.get("marker") == "kept" and kept["metrics"]["miou"] == miou
    assert (out / "runs" / "focal__seed0.json").exists()

    # a run whose predicted example maps are gone is trained again
    examples = out / "runs" / "softmax-eql__seed0.examples.npy"
    examples.unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "has lost its predicted example maps" in capsys.readouterr().out
    assert np.load(examples).shape == (3, 180, 240)
