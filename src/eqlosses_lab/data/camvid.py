"""CamVid road scenes (SegNet's 11-class preparation), halved to 240x180.

The folder holds ``train/``, ``val/``, ``test/`` RGB PNGs, the label PNGs beside them in
``trainannot/`` ... and one list per split (``train.txt``: lines ``train/X.png
trainannot/X.png``): 367 / 101 / 233 images. Labels are 0-10 in SegNet's class order and
11 for unlabelled pixels, which every loss and metric ignores.

Per-pixel class frequencies are naturally long-tailed (road about a third of the training
pixels, bicyclist a fraction of a percent). Brostow et al., "Segmentation and Recognition
Using Structure from Motion Point Clouds", ECCV 2008; research use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from eqlosses_lab.locations import CAMVID

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_IGNORE_INDEX = 11
CAMVID_HEIGHT = 180
CAMVID_WIDTH = 240
# SegNet's colour of each class, unlabelled (black) last: for pictures only.
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
    (0, 0, 0),
)

CamVidSplitName = Literal["train", "val", "test"]
CAMVID_SPLITS: tuple[CamVidSplitName, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class CamVid:
    """One split of CamVid.

    Attributes:
        images: ``uint8`` RGB ``(N, 180, 240, 3)``.
        labels: ``int64`` ``(N, 180, 240)``, classes 0-10 and 11 = unlabelled.
        names: the file stem of each image.
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    names: tuple[str, ...]


def _read_png(path: Path, mode: str) -> npt.NDArray[np.uint8]:
    with Image.open(path) as img:
        if img.size != (CAMVID_WIDTH, CAMVID_HEIGHT):
            raise ValueError(
                f"{path}: expected {CAMVID_WIDTH}x{CAMVID_HEIGHT} pixels, got "
                f"{img.size[0]}x{img.size[1]}"
            )
        return np.asarray(img.convert(mode), dtype=np.uint8)


def load_camvid(root: str | Path, split: CamVidSplitName, limit: int | None = None) -> CamVid:
    """Read one split of the 240x180 CamVid folder.

    Args:
        root: folder holding ``train.txt``, ``train/``, ``trainannot/`` ... (see
            :mod:`eqlosses_lab.locations`).
        split: ``'train'``, ``'val'`` or ``'test'``.
        limit: read only the first ``limit`` images of the split's list (tests).

    Raises:
        DatasetNotFoundError: if the list or a listed file is missing.
        ValueError: on a bad ``split`` / ``limit``, an image of another size or a label
            outside 0-11.

    Example:
        >>> test = load_camvid("data/camvid-240x180", "test")  # doctest: +SKIP
        >>> test.images.shape, test.labels.shape  # doctest: +SKIP
        ((233, 180, 240, 3), (233, 180, 240))
    """
    if split not in CAMVID_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(CAMVID_SPLITS)}, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive number of images or None, got {limit}")
    root = Path(root)
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise CAMVID.missing(root, f"no {listing.name}")
    pairs = [line.split() for line in listing.read_text().splitlines() if line.strip()]
    if not pairs:
        raise CAMVID.missing(root, f"{listing.name} lists no image")
    if limit is not None:
        pairs = pairs[:limit]
    images, labels, names = [], [], []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"{listing}: expected 'image label' on each line, got {pair}")
        image_path, label_path = root / pair[0], root / pair[1]
        for path in (image_path, label_path):
            if not path.is_file():
                raise CAMVID.missing(root, f"{path} is missing")
        images.append(_read_png(image_path, "RGB"))
        label = _read_png(label_path, "L")
        if int(label.max()) > CAMVID_IGNORE_INDEX:
            raise ValueError(
                f"{label_path}: expected labels 0-{CAMVID_IGNORE_INDEX}, got {int(label.max())}"
            )
        labels.append(label)
        names.append(Path(pair[0]).stem)
    return CamVid(np.stack(images), np.stack(labels).astype(np.int64), tuple(names))
