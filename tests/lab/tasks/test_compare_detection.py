"""The detection comparison: loss layouts by hand, and a tiny end-to-end run per detector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eqlosses.__main__ import main
from eqlosses.losses import SeesawLoss
from eqlosses_lab.registry import ONE_STAGE, TWO_STAGE, LossContext
from eqlosses_lab.tasks.detection import _dense_step
from eqlosses_lab.tasks.settings import TwoStageConfig


def _context(two_stage: TwoStageConfig | None = None) -> LossContext:
    """Four classes seen on 120, 40, 5 and 1 of 200 training images."""
    two_stage = two_stage or TwoStageConfig()
    return LossContext(
        [120, 40, 5, 1],
        groups=["f", "c", "r", "r"],
        num_images=200,
        sampled_classes=two_stage.federated_classes(4),
    )


def test_roi_loss_columns_and_test_time_scores():
    c = 4
    expected_columns = {"ce": c + 1, "bce": c, "eql": c, "sigmoid-eql": c + 1, "seesaw": c + 2,
                        "federated": c + 1}  # fmt: skip
    torch.manual_seed(0)
    for name in TWO_STAGE.names:
        spec = TWO_STAGE.build(name, _context())
        assert spec.columns == expected_columns[name], name
        logits = torch.randn(6, spec.columns)
        scores = spec.scores(logits)
        assert scores.shape == (6, c), name
        p = torch.sigmoid(logits)
        if name == "ce":
            want = torch.softmax(logits, 1)[:, :c]
        elif name in ("bce", "eql"):
            want = p
        elif name == "sigmoid-eql":
            want = p[:, :c] * (1 - p[:, c:])
        elif name == "seesaw":
            want = torch.softmax(logits[:, :c], 1) * torch.softmax(logits[:, c:], 1)[:, :1]
        else:
            want = p[:, :c]
        torch.testing.assert_close(scores, want)


def test_roi_losses_at_the_start_are_their_plain_forms():
    c = 4
    logits = torch.randn(8, c + 2, dtype=torch.float64)
    labels = torch.tensor([0, 4, 4, 2, 4, 1, 3, 4])  # 4 = background
    onehot = F.one_hot(labels, c + 1).to(torch.float64)

    def loss(name: str, z: torch.Tensor) -> torch.Tensor:
        return TWO_STAGE.build(name, _context()).loss(z, labels)

    torch.testing.assert_close(
        loss("ce", logits[:, : c + 1]), F.cross_entropy(logits[:, : c + 1], labels)
    )
    bce = F.binary_cross_entropy_with_logits(logits[:, :c], onehot[:, :c], reduction="sum") / 8
    torch.testing.assert_close(loss("bce", logits[:, :c]), bce)
    # Sigmoid-EQL starts with every weight ~1, background column included
    full = F.binary_cross_entropy_with_logits(logits[:, : c + 1], onehot, reduction="sum") / 8
    torch.testing.assert_close(loss("sigmoid-eql", logits[:, : c + 1]), full, rtol=1e-4, atol=1e-4)
    # EQL v1: the 'r' classes (2, 3) lose their negatives on foreground RoIs only
    weight = torch.ones(8, c, dtype=torch.float64)
    foreground = labels < c
    weight[foreground, 2:] = 0.0
    weight[labels == 2, 2] = 1.0
    weight[labels == 3, 3] = 1.0
    entries = F.binary_cross_entropy_with_logits(logits[:, :c], onehot[:, :c], reduction="none")
    torch.testing.assert_close(loss("eql", logits[:, :c]), (weight * entries).sum() / 8)
    # Seesaw (mmdetection layout): objectness CE on all + class term on the foreground
    objectness = F.cross_entropy(logits[:, c:], (~foreground).long())
    classes = SeesawLoss(c, reduction="sum")(logits[foreground, :c], labels[foreground]) / 8
    torch.testing.assert_close(loss("seesaw", logits), objectness + classes)
    # federated with every class sampled: BCE on the C columns, the background column dropped
    spec = TWO_STAGE.build("federated", _context(TwoStageConfig(federated_min_classes=c)))
    z = logits[:, : c + 1].clone().requires_grad_(True)
    value = spec.loss(z, labels)
    torch.testing.assert_close(value, bce)
    value.backward()
    assert z.grad is not None and torch.equal(z.grad[:, c], torch.zeros(8, dtype=torch.float64))


def test_dense_losses_share_the_positive_normaliser():
    torch.manual_seed(0)
    from eqlosses_lab.models.detectors import DenseHead, fcos_targets, level_points

    c = 3
    points = level_points([(4, 4), (2, 2)], [16, 32])
    boxes = torch.tensor([[4.0, 4.0, 40.0, 36.0], [20.0, 30.0, 60.0, 64.0]])
    labels, target_boxes = fcos_targets(points, [16, 32], boxes, torch.tensor([0, 2]), c)
    num_pos = int((labels < c).sum())
    assert num_pos > 1
    model = DenseHead(c, in_channels=(5, 7), width=8)
    maps = [torch.randn(1, 5, 4, 4), torch.randn(1, 7, 2, 2)]
    strides = torch.cat([torch.full((16,), 16.0), torch.full((4,), 32.0)])
    with torch.no_grad():
        logits_maps, _ = model(maps)
    logits = torch.cat([m.flatten(2).transpose(1, 2) for m in logits_maps], dim=1)[0]
    onehot = F.one_hot(labels, c + 1)[:, :c].float()
    entries = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p = torch.sigmoid(logits)
    focal = torch.where(onehot == 1, 0.25 * (1 - p) ** 2, 0.75 * p**2) * entries
    want = {"focal": focal.sum() / num_pos, "efl": focal.sum() / num_pos,
            "sigmoid-eql": entries.sum() / num_pos}  # fmt: skip
    for name, expected in want.items():
        cls_loss, box_loss = _dense_step(
            model, ONE_STAGE.build(name, LossContext([1] * c)), maps, labels[None],
            target_boxes[None], torch.cat(points), strides,
        )  # fmt: skip
        torch.testing.assert_close(cls_loss, expected, rtol=1e-4, atol=1e-5)
        assert 0 < float(box_loss.detach()) <= 2.0  # mean GIoU loss over the positives
    with pytest.raises(ValueError, match=r"^loss:"):
        ONE_STAGE.build("ce", LossContext([1] * c))


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("det-cache")


def _compare(omniglot_dir: Path, out: Path, cache: Path, detector: str, *extra: str) -> int:
    args = ["compare", "--task", "detection", "--detector", detector, "--canvas-preset", "tiny",
            "--epochs", "1", "--seeds", "0", "--threads", "1", "--no-progress",
            "--data-dir", str(omniglot_dir), "--cache-dir", str(cache), "--out", str(out),
            *extra]  # fmt: skip
    return main(args)


@pytest.mark.parametrize("detector", ["one-stage", "two-stage"])
def test_tiny_end_to_end(omniglot_dir: Path, feature_cache: Path, tmp_path: Path, detector: str):
    out = tmp_path / detector
    assert _compare(omniglot_dir, out, feature_cache, detector) == 0
    results = json.loads((out / "results.json").read_text())
    losses = results["config"]["losses"]
    assert len(results["runs"]) == len(losses)
    for run in results["runs"]:
        assert set(run["metrics"]) == {"AP", "AP50", "AP75", "APr", "APc", "APf"}
        assert 0.0 <= run["metrics"]["AP"] <= 1.0
        assert len(run["per_class"]) == len(run["class_sizes"]) == 6
    table = (out / "results.md").read_text()
    assert all(f"`{loss}`" in table for loss in losses)
    for picture in ("per_class_ap.png", "grad_ratio.png", "detections.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = next(r for r in results["runs"] if r["loss"] == "sigmoid-eql")
    assert len(stats["grad_ratio_history"]) == 1 and set(stats["grad_ratio_groups"][0]) == {
        "r", "c", "f"
    }  # fmt: skip
    if detector == "two-stage":
        return
    # resumable (the same code for both detectors): a finished run is kept, a missing one
    # is redone
    kept = out / "runs" / f"{losses[0]}__seed0.json"
    record = json.loads(kept.read_text())
    record["marker"] = "kept"
    kept.write_text(json.dumps(record))
    (out / "runs" / f"{losses[1]}__seed0.json").unlink()
    assert _compare(omniglot_dir, out, feature_cache, detector) == 0
    again = json.loads((out / "results.json").read_text())
    assert next(r for r in again["runs"] if r["loss"] == losses[0])["marker"] == "kept"
    assert (out / "runs" / f"{losses[1]}__seed0.json").exists()


def test_wrong_loss_for_the_detector(omniglot_dir: Path, tmp_path: Path, capsys):
    code = _compare(omniglot_dir, tmp_path, tmp_path, "one-stage", "--losses", "seesaw")
    assert code == 2
    assert "--losses" in capsys.readouterr().err
