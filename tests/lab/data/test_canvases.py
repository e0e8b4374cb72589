"""Omniglot-Det canvases: long-tail groups, balanced test set, disjoint drawings, tight boxes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from eqlosses_lab.data.canvases import (
    CanvasDataset,
    banded_longtail_counts,
    build_canvases,
)
from eqlosses_lab.data.omniglot import Omniglot, load_omniglot

# 30 classes on small canvases: 9 frequent, 12 common, 9 rare; about 1,500 training glyphs.
SMALL = {
    "num_classes": 30,
    "num_train": 400,
    "num_test": 60,
    "test_images_per_class": 5,
    "size": 128,
    "n_max": 120,
    "glyphs_per_canvas": (2, 6),
    "glyph_size": (12, 40),
}


def lvis_group(images: int) -> str:
    # LVIS v1: rare 1-10 training images, common 11-100, frequent more.
    return "r" if images <= 10 else ("c" if images <= 100 else "f")


@pytest.fixture(scope="module")
def omniglot(omniglot_dir: Path) -> Omniglot:
    return load_omniglot(omniglot_dir)


@pytest.fixture(scope="module")
def small(omniglot: Omniglot) -> CanvasDataset:
    return build_canvases(omniglot, seed=3, **SMALL)


def images_containing(labels: list[torch.Tensor], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    for canvas_labels in labels:
        counts[np.unique(canvas_labels.numpy())] += 1
    return counts


def test_banded_counts_hand_example_and_default_groups() -> None:
    assert banded_longtail_counts(6, n_max=200, group_fractions=(1 / 3, 1 / 3)) == [
        200,
        101,
        100,
        11,
        10,
        1,
    ]
    counts = banded_longtail_counts(242)
    assert counts == sorted(counts, reverse=True)
    # 30 % of 242 rare, 40 % common, the rest frequent.
    assert Counter(lvis_group(n) for n in counts) == {"r": 73, "c": 97, "f": 72}
    assert min(counts) == 1 and max(counts) == 140


def test_realised_training_counts_and_groups(small: CanvasDataset) -> None:
    realised = images_containing(small.train.labels, small.num_classes)
    assert realised.tolist() == small.train_image_counts.tolist()
    assert realised.tolist() == banded_longtail_counts(30, n_max=120)
    assert list(small.frequency) == [lvis_group(int(n)) for n in realised]
    assert Counter(small.frequency) == {"f": 9, "c": 12, "r": 9}
    # Class index is the frequency rank.
    assert (np.diff(realised) <= 0).all()


def test_test_set_is_balanced_and_covers_every_class(small: CanvasDataset) -> None:
    counts = images_containing(small.test.labels, small.num_classes)
    assert counts.tolist() == [5] * 30
    assert len(small.test) == 60


def test_canvas_contents(small: CanvasDataset) -> None:
    for split in (small.train, small.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (128, 128)
        for boxes, labels, drawings in zip(split.boxes, split.labels, split.drawings, strict=True):
            assert 2 <= labels.numel() <= 6
            assert labels.unique().numel() == labels.numel()  # a class at most once per canvas
            assert boxes.shape == (labels.numel(), 4) and drawings.shape == labels.shape
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
            assert (boxes[:, 2:] > boxes[:, :2]).all()
    names = small.class_names
    assert len(set(names)) == 30 and all("/character" in name for name in names)


def test_train_and_test_use_disjoint_drawings(small: CanvasDataset) -> None:
    def pairs(split_labels: list[torch.Tensor], split_drawings: list[torch.Tensor]) -> set:
        return {
            (int(c), int(d))
            for labels, drawings in zip(split_labels, split_drawings, strict=True)
            for c, d in zip(labels, drawings, strict=True)
        }

    train = pairs(small.train.labels, small.train.drawings)
    test = pairs(small.test.labels, small.test.drawings)
    assert {d for _, d in train} <= set(range(15))
    assert {d for _, d in test} <= set(range(15, 20))
    assert not train & test


def test_seeded_determinism(omniglot: Omniglot, small: CanvasDataset) -> None:
    again = build_canvases(omniglot, seed=3, **SMALL)
    assert torch.equal(again.train.images, small.train.images)
    assert torch.equal(again.test.images, small.test.images)
    assert all(torch.equal(a, b) for a, b in zip(again.train.boxes, small.train.boxes, strict=True))
    assert again.class_names == small.class_names
    other = build_canvases(omniglot, seed=4, **SMALL)
    assert not torch.equal(other.train.images, small.train.images)
    assert other.class_names != small.class_names


def test_boxes_are_tight_around_ink(omniglot: Omniglot) -> None:
    # Plain white background and no overlap: inside its box the only ink is the glyph's own.
    ds = build_canvases(omniglot, seed=5, clutter=False, max_overlap=0.0, **SMALL)
    for split in (ds.train, ds.test):
        for image, boxes in zip(split.images[:80], split.boxes[:80], strict=True):
            ink = image.numpy() < 255
            covered = np.zeros_like(ink)
            for x1, y1, x2, y2 in boxes.int().tolist():
                ys, xs = np.nonzero(ink[y1:y2, x1:x2])
                assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (0, 0, y2 - y1, x2 - x1)
                covered[y1:y2, x1:x2] = True
            assert not (ink & ~covered).any()  # no ink outside the boxes
            inter = torch.zeros(())
            for k in range(len(boxes)):
                for m in range(k):
                    a, b = boxes[k], boxes[m]
                    w = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
                    h = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
                    inter = inter + w * h
            assert inter.item() == 0


def test_clutter_background_is_not_plain(small: CanvasDataset) -> None:
    image = small.train.images[0].numpy()
    boxes = small.train.boxes[0].int().tolist()
    outside = np.ones_like(image, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        outside[y1:y2, x1:x2] = False
    assert image[outside].std() > 3  # gradient, noise and strokes, not a flat page


def test_lvis_dict_lists_every_absent_category(small: CanvasDataset) -> None:
    gt = small.lvis("test")
    assert len(gt["images"]) == 60 and len(gt["categories"]) == 30
    by_image: dict[int, set[int]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], set()).add(ann["category_id"])
        w, h = ann["bbox"][2:]
        assert ann["area"] == pytest.approx(w * h)
    for image, labels in zip(gt["images"], small.test.labels, strict=True):
        present = {int(c) + 1 for c in labels}
        assert by_image[image["id"]] == present
        assert set(image["neg_category_ids"]) == set(range(1, 31)) - present
        assert image["not_exhaustive_category_ids"] == []
        assert (image["width"], image["height"]) == (128, 128)
    first = gt["annotations"][0]
    x1, y1, x2, y2 = small.test.boxes[0][0].tolist()
    assert first["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    for cat in gt["categories"]:
        j = cat["id"] - 1
        assert cat["image_count"] == int(small.train_image_counts[j])
        assert cat["frequency"] == lvis_group(cat["image_count"])
        assert cat["name"] == small.class_names[j]
    train_gt = small.lvis("train")
    assert len(train_gt["annotations"]) == int(small.train_image_counts.sum())


def test_bad_arguments(omniglot: Omniglot, small: CanvasDataset) -> None:
    with pytest.raises(ValueError, match="disjoint"):
        build_canvases(omniglot, train_drawings=range(16), test_drawings=range(15, 20))
    with pytest.raises(ValueError, match="num_train=100"):
        build_canvases(omniglot, num_classes=30, num_train=100, n_max=101)
    with pytest.raises(ValueError, match="split"):
        small.lvis("val")  # type: ignore[arg-type]
