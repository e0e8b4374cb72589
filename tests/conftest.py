"""Shared test fixtures: where the project's read-only data sets live, and a tiny
Fashion-MNIST-like set for end-to-end runs of the lab's commands."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from shared_data import SHARED_DATA


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    folder = SHARED_DATA / "omniglot-small"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return folder


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    folder = SHARED_DATA / "camvid-240x180"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return folder


def _write_idx(path: Path, shape: tuple[int, ...], values: bytes) -> None:
    header = bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    path.write_bytes(header + values)


@pytest.fixture(scope="session")
def tiny_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST's four IDX files for 10 classes of distinguishable synthetic 28x28
    images: 60 per class to train, 10 to test; class c lights up row band c."""
    np = pytest.importorskip("numpy")
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 60), ("t10k", 10)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(labels.size, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 7, 4:24] = 230
        _write_idx(
            folder / f"{prefix}-images-idx3-ubyte", images.shape, images.astype("u1").tobytes()
        )
        _write_idx(
            folder / f"{prefix}-labels-idx1-ubyte", labels.shape, labels.astype("u1").tobytes()
        )
    return folder
