"""Fashion-MNIST read from the IDX files of Debian's ``dataset-fashion-mnist`` package.

The package installs ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` in
``/usr/share/datasets/fashion-mnist``.  Uncompressed copies (no ``.gz``) and the
``train-images.idx3-ubyte`` spelling used by some mirrors are accepted as well, so a user can
point ``data_dir`` at any copy of the files.  The IDX parser is written here (rather than
taken from a vision library) because nothing may be downloaded at run time and torchvision
is not a dependency.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from eqlosses_lab.locations import FASHION_MNIST

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names in label order, as documented by the data set's authors."""

# IDX type byte -> big-endian numpy dtype (the format stores every multi-byte value
# most-significant byte first).
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"

_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class FashionMNIST:
    """One split of Fashion-MNIST.

    Attributes:
        images: ``uint8`` array ``(N, 28, 28)``; 0 is background, 255 full intensity.
        labels: ``int64`` array ``(N,)`` of class indices in ``0..9``.
        class_names: The 10 class names, indexed by label.
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...]


def read_idx(path: str | Path) -> npt.NDArray[np.generic]:
    """Parse one IDX file (gzipped or not; detected from its content, not its name).

    The IDX header is two zero bytes, a type byte, the number of dimensions, then one
    big-endian uint32 per dimension; the data follow, row-major.

    Returns:
        An array of the stored shape in native byte order.

    Raises:
        ValueError: if the header is malformed or the data size does not match the header
            (a truncated or corrupt download), naming the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares zero dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        raise ValueError(
            f"{path}: IDX data has {actual} bytes but header shape {shape} needs {expected} "
            "(truncated or corrupt file)"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order so downstream torch.from_numpy accepts it; copy also detaches the
    # array from the (read-only) bytes buffer.
    return data.astype(dtype.newbyteorder("="))


def _find_idx(data_dir: Path, prefix: str, kind: str) -> Path:
    """Locate ``{prefix}-{kind}`` in any of the spellings found in the wild."""
    stems = [f"{prefix}-{kind}", f"{prefix}-{kind.replace('-idx', '.idx')}"]
    for stem in stems:
        for name in (stem + ".gz", stem):
            candidate = data_dir / name
            if candidate.is_file():
                return candidate
    raise FASHION_MNIST.missing(data_dir, f"no {prefix}-{kind}[.gz]")


def load_fashion_mnist(
    split: Literal["train", "test"] = "train",
    data_dir: str | Path | None = None,
) -> FashionMNIST:
    """Load the 60,000-image training or 10,000-image test split of Fashion-MNIST.

    Args:
        split: ``"train"`` or ``"test"`` (the ``t10k`` files).
        data_dir: Folder holding the IDX files; by default the folder named by
            ``EQLOSSES_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist``
            (see :mod:`eqlosses_lab.locations`).

    Raises:
        DatasetNotFoundError: if the folder or one of the two files is missing.
        ValueError: if a file is corrupt or images and labels disagree.
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = FASHION_MNIST.require(data_dir)
    prefix = _PREFIX[split]
    images_path = _find_idx(root, prefix, "images-idx3-ubyte")
    labels_path = _find_idx(root, prefix, "labels-idx1-ubyte")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape} labels do not match {images.shape[0]} images"
        )
    labels64 = labels.astype(np.int64)
    if labels64.size and (labels64.min() < 0 or labels64.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{labels_path}: labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return FashionMNIST(
        images=images.astype(np.uint8, copy=False),
        labels=labels64,
        class_names=FASHION_MNIST_CLASSES,
    )
