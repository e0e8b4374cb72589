"""Fashion-MNIST IDX parsing on hand-written files, and the real Debian package if present."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from eqlosses_lab.data.fashion_mnist import (
    load_fashion_mnist,
    read_idx,
)
from eqlosses_lab.errors import DatasetNotFoundError
from eqlosses_lab.locations import FASHION_MNIST


def _idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def _write_split(folder: Path, prefix: str, gz: bool, labels: list[int]) -> None:
    n = len(labels)
    # Image i is filled with the value 10 * i + 1, except pixel (i, 27) which is 255.
    images = bytearray()
    for i in range(n):
        img = bytearray([10 * i + 1] * 784)
        img[i * 28 + 27] = 255
        images += img
    files = {
        f"{prefix}-images-idx3-ubyte": _idx_bytes(0x08, (n, 28, 28), bytes(images)),
        f"{prefix}-labels-idx1-ubyte": _idx_bytes(0x08, (n,), bytes(labels)),
    }
    for name, data in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_load_hand_written_split(tmp_path: Path, gz: bool) -> None:
    _write_split(tmp_path, "t10k", gz, [9, 0, 3])
    data = load_fashion_mnist("test", data_dir=tmp_path)
    assert data.images.dtype == np.uint8
    assert data.images.shape == (3, 28, 28)
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [9, 0, 3]
    assert data.images[2, 0, 0] == 21
    assert data.images[2, 2, 27] == 255
    assert data.images[1, 1, 27] == 255
    assert data.images[1, 0, 27] == 11
    assert data.class_names[9] == "Ankle boot"
    assert len(data.class_names) == 10


def test_read_idx_big_endian_ints(tmp_path: Path) -> None:
    path = tmp_path / "ints.idx"
    path.write_bytes(_idx_bytes(0x0C, (2, 2), struct.pack(">4i", 1, -2, 65536, 7)))
    arr = read_idx(path)
    assert arr.dtype == np.int32
    assert arr.tolist() == [[1, -2], [65536, 7]]


def test_read_idx_detects_gzip_by_content(tmp_path: Path) -> None:
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (3,), b"\x01\x02\x03")))
    assert read_idx(path).tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_idx_bytes(0x08, (4,), b"\x01\x02\x03"), "truncated"),
        (_idx_bytes(0x08, (2,), b"\x01\x02\x03"), "truncated"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (_idx_bytes(0x42, (1,), b"\x00"), "data type"),
        (b"\x00\x00\x08\x03\x00\x00", "header"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_idx(path)


def test_label_image_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", False, [1, 2])
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(0x08, (3,), b"\x01\x02\x03"))
    with pytest.raises(ValueError, match="labels do not match"):
        load_fashion_mnist("train", data_dir=tmp_path)


def test_missing_directory_message(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("train", data_dir=missing)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message
    assert str(missing) in message
    assert "train-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message


def test_missing_labels_file_is_named(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", True, [1])
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="train-labels-idx1-ubyte"):
        load_fashion_mnist("train", data_dir=tmp_path)


@pytest.mark.skipif(
    not (FASHION_MNIST.require(None) / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist() -> None:
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28)
    assert test.images.shape == (10000, 28, 28)
    # The data set is balanced: 6,000 training and 1,000 test images per class.
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # First labels as published with the data set (ankle boot, T-shirt, T-shirt, dress, ...).
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]
