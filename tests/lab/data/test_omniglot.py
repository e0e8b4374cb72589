"""Omniglot zip loading on tiny hand-built archives, the LT split, and the real zips if present."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eqlosses_lab.data.omniglot import (
    OMNIGLOT_ZIPS,
    Omniglot,
    load_omniglot,
    omniglot_lt_split,
)
from eqlosses_lab.errors import DatasetNotFoundError


def _png(ink_row: int, size: int = 105) -> bytes:
    # One-bit image like Omniglot's: True (white) background, one black row of ink.
    pixels = np.ones((size, size), dtype=bool)
    pixels[ink_row, :] = False
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_zip(path: Path, top: str, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"{top}{name}", data)


def _tiny_dataset(folder: Path, conflict: bool = False) -> None:
    shared = {
        "Beta/character01/0010_02.png": _png(5),
        "Beta/character01/0010_01.png": _png(4),
    }
    _write_zip(
        folder / OMNIGLOT_ZIPS[0],
        "images_background_small1/",
        {**shared, "Alpha/character02/0002_01.png": _png(7)},
    )
    second = {"Alpha/character01/0001_01.png": _png(1), "Alpha/character01/0001_02.png": _png(2)}
    # The same character again, as Greek and Latin are in both real archives.
    second.update(shared)
    if conflict:
        second["Beta/character01/0010_02.png"] = _png(6)
    _write_zip(folder / OMNIGLOT_ZIPS[1], "images_background_small2/", second)


def test_tiny_archives(tmp_path: Path) -> None:
    _tiny_dataset(tmp_path)
    data = load_omniglot(tmp_path)
    assert data.class_names == ("Alpha/character01", "Alpha/character02", "Beta/character01")
    # 2 + 1 + 2 images: the duplicated Beta character is loaded once.
    assert data.images.shape == (5, 105, 105)
    assert data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 1, 2, 2]
    assert data.drawings.tolist() == [0, 1, 0, 0, 1]
    # Ink rows per image, in (class, file name) order: 1, 2, 7, 4 (file _01), 5 (file _02).
    for image, row in zip(data.images, [1, 2, 7, 4, 5], strict=True):
        assert set(np.unique(image).tolist()) == {0, 255}
        assert (image[row] == 0).all()
        assert (image == 0).sum() == 105


def test_conflicting_duplicate_is_an_error(tmp_path: Path) -> None:
    _tiny_dataset(tmp_path, conflict=True)
    with pytest.raises(ValueError, match="Beta/character01"):
        load_omniglot(tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    _write_zip(tmp_path / "a.zip", "", {"A/character01/x.png": _png(0, size=28)})
    with pytest.raises(ValueError, match="105x105"):
        load_omniglot(tmp_path, zip_names=["a.zip"])


def test_missing_archive_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert OMNIGLOT_ZIPS[0] in message
    assert str(tmp_path) in message


def test_lt_split_on_labels() -> None:
    labels = np.repeat(np.arange(4), 20)
    split = omniglot_lt_split(labels, test_per_class=5, n_max=15, imbalance_ratio=15, seed=0)
    # 15 * 15 ** (-j / 3): 15, 6.08 -> 6, 2.47 -> 2, 1.
    assert np.bincount(labels[split.train], minlength=4).tolist() == [15, 6, 2, 1]
    assert np.bincount(labels[split.test], minlength=4).tolist() == [5, 5, 5, 5]
    assert np.intersect1d(split.train, split.test).size == 0
    again = omniglot_lt_split(labels, seed=0)
    np.testing.assert_array_equal(again.train, split.train)
    np.testing.assert_array_equal(again.test, split.test)
    other = omniglot_lt_split(labels, seed=1)
    assert not np.array_equal(other.test, split.test)


def test_lt_split_needs_enough_drawings() -> None:
    with pytest.raises(ValueError, match="class 0"):
        omniglot_lt_split(np.repeat(np.arange(3), 10))


@pytest.fixture(scope="module")
def real_omniglot(omniglot_dir: Path) -> Omniglot:
    return load_omniglot(omniglot_dir)


def test_real_omniglot(real_omniglot: Omniglot) -> None:
    data = real_omniglot
    # 136 + 156 characters listed, minus Greek (24) and Latin (26) present in both archives.
    assert len(data.class_names) == 242
    assert data.images.shape == (4840, 105, 105)
    assert np.bincount(data.labels).tolist() == [20] * 242
    for c in (0, 100, 241):
        assert sorted(data.drawings[data.labels == c].tolist()) == list(range(20))
    assert data.class_names[0] == "Balinese/character01"
    assert sum(name.startswith("Greek/") for name in data.class_names) == 24
    assert sum(name.startswith("Latin/") for name in data.class_names) == 26
    ink = (data.images == 0).mean()
    assert 0.02 < ink < 0.2  # strokes on a white page


def test_real_omniglot_lt_split(real_omniglot: Omniglot) -> None:
    labels = real_omniglot.labels
    split = omniglot_lt_split(labels, seed=0)
    train_counts = np.bincount(labels[split.train], minlength=242)
    assert split.test.size == 5 * 242
    assert train_counts[0] == 15 and train_counts[-1] == 1
    # Sum of floor(15 * 15 ** (-j / 241)) over j = 0..241.
    assert split.train.size == 1140
    assert np.intersect1d(split.train, split.test).size == 0
    np.testing.assert_array_equal(omniglot_lt_split(labels, seed=0).train, split.train)
