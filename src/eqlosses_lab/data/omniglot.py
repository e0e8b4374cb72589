"""Omniglot (the two "background small" subsets) read straight from their zip files.

Each zip holds ``[TOP/]ALPHABET/characterNN/NNNN_DD.png``: 105x105 one-bit PNGs, 20 drawings
(one per drawer ``DD``) of every character.  Images are decoded from the archives in memory;
nothing is extracted to disk.

The two archives overlap: ``images_background_small1.zip`` (5 alphabets, 136 characters) and
``images_background_small2.zip`` (5 alphabets, 156 characters) both contain Greek (24
characters) and Latin (26), byte for byte the same files.  Counting them twice would create
50 pairs of classes with identical images, which no classifier can separate, so a character
present in both archives is loaded once: 292 listed characters, **242 distinct classes**,
4,840 images.  A character whose copies differ is an error rather than a silent choice.

Omniglot-LT (:func:`omniglot_lt_split`) keeps 5 drawings per class as a balanced test set and
an exponential long-tail of the other 15 for training (``n_max = 15``, ``rho = 15``): head
class 0 trains on 15 drawings, the tail class on 1.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from eqlosses_lab.data.longtail import longtail_counts
from eqlosses_lab.locations import OMNIGLOT

OMNIGLOT_ZIPS: tuple[str, ...] = (
    "images_background_small1.zip",
    "images_background_small2.zip",
)
IMAGE_SIZE = 105
DRAWINGS_PER_CLASS = 20


@dataclass(frozen=True)
class Omniglot:
    """All loaded Omniglot images.

    Attributes:
        images: ``uint8`` array ``(N, 105, 105)``, as drawn: **0 is ink, 255 background**
            (the PNGs' own polarity, kept so images look like the originals).
        labels: ``int64`` class index ``(N,)``; classes are sorted by (alphabet, character).
        drawings: ``int64`` drawing index ``(N,)`` in ``0..19``, the rank of the file name
            within its character folder (so drawer ``_01`` is drawing 0).
        class_names: ``"Alphabet/characterNN"`` for every class index.
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    drawings: npt.NDArray[np.int64]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class OmniglotSplit:
    """Indices into :class:`Omniglot` arrays: long-tailed training set, balanced test set."""

    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]


def _decode_png(data: bytes, where: str) -> npt.NDArray[np.uint8]:
    with Image.open(io.BytesIO(data)) as img:
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{where}: expected {IMAGE_SIZE}x{IMAGE_SIZE}, got {img.size}")
        # convert("L") maps one-bit pixels to 0/255 and also accepts grey PNGs unchanged.
        return np.asarray(img.convert("L"), dtype=np.uint8)


def load_omniglot(
    data_dir: str | Path,
    zip_names: Sequence[str] = OMNIGLOT_ZIPS,
) -> Omniglot:
    """Load every drawing of every character from the Omniglot zip files.

    Args:
        data_dir: Folder holding the zips (see :mod:`eqlosses_lab.locations`).
        zip_names: Archives to read; characters present in several are loaded once.

    Raises:
        DatasetNotFoundError: if the folder or an archive is missing.
        ValueError: on a malformed archive, an image of the wrong size, or a character whose
            copies in two archives differ.
    """
    root = Path(data_dir)
    # class name -> sorted [(file name, archive path, member name, crc)]
    members: dict[str, list[tuple[str, Path, str, int]]] = {}
    for zip_name in zip_names:
        path = root / zip_name
        if not path.is_file():
            raise OMNIGLOT.missing(root, f"no {zip_name}")
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path}: not a valid zip file ({exc})") from exc
        with archive:
            found: dict[str, list[tuple[str, Path, str, int]]] = {}
            for info in archive.infolist():
                if info.is_dir() or not info.filename.lower().endswith(".png"):
                    continue
                parts = info.filename.split("/")
                if len(parts) < 3:
                    raise ValueError(
                        f"{path}: {info.filename} is not inside ALPHABET/CHARACTER/ folders"
                    )
                alphabet, character, file_name = parts[-3:]
                found.setdefault(f"{alphabet}/{character}", []).append(
                    (file_name, path, info.filename, info.CRC)
                )
        for name, files in found.items():
            files.sort()
            if name not in members:
                members[name] = files
                continue
            # Same character in two archives: accept only an exact duplicate (same file
            # names and CRC-32s), since merging would otherwise double-count or mix drawers.
            previous = [(f, crc) for f, _, _, crc in members[name]]
            if previous != [(f, crc) for f, _, _, crc in files]:
                raise ValueError(
                    f"{name} appears in {members[name][0][1].name} and {path.name} "
                    "with different drawings"
                )
    if not members:
        raise ValueError(f"no PNG found in {', '.join(zip_names)} under {root}")

    class_names = tuple(sorted(members))
    total = sum(len(files) for files in members.values())
    images = np.empty((total, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    drawings = np.empty(total, dtype=np.int64)
    # Group reads by archive so each zip is opened once.
    by_archive: dict[Path, list[tuple[int, str]]] = {}
    row = 0
    for label, name in enumerate(class_names):
        for drawing, (_, archive_path, member, _) in enumerate(members[name]):
            by_archive.setdefault(archive_path, []).append((row, member))
            labels[row] = label
            drawings[row] = drawing
            row += 1
    for archive_path, rows in by_archive.items():
        with zipfile.ZipFile(archive_path) as archive:
            for r, member in rows:
                images[r] = _decode_png(archive.read(member), f"{archive_path.name}:{member}")
    return Omniglot(images=images, labels=labels, drawings=drawings, class_names=class_names)


def omniglot_lt_split(
    labels: npt.ArrayLike,
    test_per_class: int = 5,
    n_max: int = 15,
    imbalance_ratio: float = 15.0,
    seed: int = 0,
) -> OmniglotSplit:
    """The Omniglot-LT split: balanced test drawings, long-tailed training drawings.

    For every class ``j`` a seeded random ``test_per_class`` of its drawings form the test
    set; ``n_j`` (from :func:`~eqlosses_lab.data.longtail.longtail_counts` with ``n_max`` and
    ``imbalance_ratio``) of the remaining drawings, also drawn at random, form the training
    set.  The rest is unused, so train and test never share a drawing.

    Args:
        labels: Class index of every image (e.g. ``Omniglot.labels``).
        test_per_class: Test drawings per class.
        n_max: Training drawings of the head class 0.
        imbalance_ratio: ``n_0 / n_{C-1}`` of the training set.
        seed: Seed of both draws.

    Raises:
        ValueError: if a class has fewer than ``test_per_class + n_j`` images.
    """
    if test_per_class < 0:
        raise ValueError(f"test_per_class must be >= 0, got {test_per_class}")
    y = np.asarray(labels).astype(np.int64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError("labels must be a non-empty one-dimensional array")
    num_classes = int(y.max()) + 1
    counts = longtail_counts(n_max, num_classes, imbalance_ratio)
    rng = np.random.default_rng(seed)
    train: list[npt.NDArray[np.int64]] = []
    test: list[npt.NDArray[np.int64]] = []
    for j in range(num_classes):
        members = np.flatnonzero(y == j)
        need = test_per_class + counts[j]
        if members.size < need:
            raise ValueError(
                f"class {j} has {members.size} images, needs {test_per_class} test + "
                f"{counts[j]} training"
            )
        shuffled = rng.permutation(members)
        test.append(shuffled[:test_per_class])
        train.append(shuffled[test_per_class:need])
    return OmniglotSplit(
        train=np.sort(np.concatenate(train)).astype(np.int64),
        test=np.sort(np.concatenate(test)).astype(np.int64),
    )
