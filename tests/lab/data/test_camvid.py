"""CamVid loading: sizes, label range and the ignore label, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import SHARED_DATA

from eqlosses_lab.data.camvid import CAMVID_CLASSES, CAMVID_IGNORE_INDEX, load_camvid
from eqlosses_lab.errors import DatasetNotFoundError
from eqlosses_lab.metrics.segmentation import pixel_counts, rare_classes

CAMVID_DIR = SHARED_DATA / "camvid-240x180"


@pytest.fixture(scope="module")
def camvid_dir() -> Path:
    if not CAMVID_DIR.is_dir():
        pytest.skip(f"{CAMVID_DIR} is not present")
    return CAMVID_DIR


def test_split_sizes_follow_segnet(camvid_dir: Path) -> None:
    for split, size in (("train", 367), ("val", 101), ("test", 233)):
        lines = (camvid_dir / f"{split}.txt").read_text().split("\n")
        assert len([line for line in lines if line.strip()]) == size


def test_images_and_labels(camvid_dir: Path) -> None:
    test = load_camvid(camvid_dir, "test", limit=4)
    assert test.images.shape == (4, 180, 240, 3) and test.images.dtype == np.uint8
    assert test.labels.shape == (4, 180, 240) and test.labels.dtype == np.int64
    assert test.labels.min() >= 0 and test.labels.max() <= CAMVID_IGNORE_INDEX
    assert len(CAMVID_CLASSES) == CAMVID_IGNORE_INDEX == 11
    first = Path((camvid_dir / "test.txt").read_text().split()[0]).stem
    assert test.names[0] == first
    with Image.open(camvid_dir / "testannot" / f"{first}.png") as png:
        assert np.array_equal(test.labels[0], np.asarray(png))


def _fake_camvid(root: Path, label_value: int, size: tuple[int, int] = (240, 180)) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    label = np.zeros((size[1], size[0]), dtype=np.uint8)
    label[:10, :] = label_value
    Image.fromarray(image).save(root / "train" / "a.png")
    Image.fromarray(label).save(root / "trainannot" / "a.png")
    (root / "train.txt").write_text("train/a.png trainannot/a.png\n")
    return root


def test_ignore_label_is_kept_as_eleven(tmp_path: Path) -> None:
    data = load_camvid(_fake_camvid(tmp_path, CAMVID_IGNORE_INDEX), "train")
    assert (data.labels[0, :10] == 11).all() and (data.labels[0, 10:] == 0).all()


def test_label_past_the_ignore_label_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected labels 0-11, got 12"):
        load_camvid(_fake_camvid(tmp_path, 12), "train")


def test_wrong_image_size_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected 240x180 pixels, got 120x90"):
        load_camvid(_fake_camvid(tmp_path, 0, size=(120, 90)), "train")


def test_missing_folder_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="--data-dir or set EQLOSSES_CAMVID_DIR"):
        load_camvid(tmp_path, "train")
    root = _fake_camvid(tmp_path / "c", 0)
    (root / "trainannot" / "a.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"a\.png is missing"):
        load_camvid(root, "train")
    with pytest.raises(ValueError, match="split: expected one of train, val, test"):
        load_camvid(root, "training")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        load_camvid(root, "train", limit=0)


def test_training_pixels_are_long_tailed_with_five_rare_classes(camvid_dir: Path) -> None:
    labels = load_camvid(camvid_dir, "train").labels
    counts = np.bincount(labels.ravel(), minlength=12)[:11]
    share = counts / counts.sum()
    assert share[3] == pytest.approx(0.331, abs=5e-4)  # road
    assert share[10] == pytest.approx(0.003, abs=5e-4)  # bicyclist
    rare = rare_classes(pixel_counts(torch.as_tensor(labels), 11, CAMVID_IGNORE_INDEX))
    assert [CAMVID_CLASSES[c] for c in rare] == [
        "Pole",
        "SignSymbol",
        "Fence",
        "Pedestrian",
        "Bicyclist",
    ]
