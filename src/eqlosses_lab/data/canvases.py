"""Omniglot-Det: a long-tailed detection data set of real handwritten glyphs on cluttered canvases.

Each canvas is a grey ``size x size`` image holding a few Omniglot characters (one class per
character) at varied scales and positions, dark ink over a cluttered background (a brightness
gradient, strokes that are not characters, pixel noise).  Every glyph is labelled with the tight
box of its rendered ink, and every canvas is labelled exhaustively.

Long tail.  Categories are grouped as in LVIS by the number of *training images* containing
them: rare 1-10, common 11-100, frequent > 100.  The target counts are log-spaced inside each
band (rare 10 -> 1, common 100 -> 11, frequent ``n_max`` -> 101), so the share of each group is
set directly (default 30 / 40 / 30 %, close to LVIS v1's 28 / 38 / 34).  A single exponential
``n_max · rho^(-j/(C-1))`` cannot do that at a reasonable size: with 242 classes its frequent
band needs ``n_max`` in the thousands.  A class appears at most once per canvas, and canvases
are filled so that class ``j`` is in *exactly* its target number of training canvases.  Class
index ``j`` is the frequency rank (0 is the most frequent), as in
:mod:`eqlosses_lab.data.longtail`; which character gets which rank is drawn from the seed.

Test canvases are balanced (every class in the same number of test canvases) so per-class AP
is measured on equal footing, and they use drawings (drawers) the training canvases never use:
by default drawings 0-14 for training and 15-19 for test.

:meth:`CanvasDataset.lvis` writes a split as an LVIS annotation dict, with every category
absent from an image in its ``neg_category_ids`` (exhaustive labels: a detection of an absent
category is a false positive, not ignored) and frequencies from the training counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw

from eqlosses_lab.data.omniglot import DRAWINGS_PER_CLASS, Omniglot

RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100
# A glyph pixel is ink when at least this share of it is covered after resizing: below one
# half so that thin strokes of a downscaled glyph stay connected.
_INK_COVERAGE = 0.3
_MAX_LAYOUT_TRIES = 20
_MAX_GLYPH_TRIES = 60

IntArray = npt.NDArray[np.int64]


def frequency_group(image_count: int) -> Literal["r", "c", "f"]:
    """LVIS frequency group of a category from the number of training images containing it.

    ``'r'`` for 1-10 images (0 also counts as rare), ``'c'`` for 11-100, ``'f'`` for more.
    """
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    if image_count <= COMMON_MAX_IMAGES:
        return "c"
    return "f"


def banded_longtail_counts(
    num_classes: int, n_max: int = 140, group_fractions: tuple[float, float] = (0.3, 0.4)
) -> list[int]:
    """Target training-image counts per class, log-spaced inside each LVIS band.

    The first ``C - n_rare - n_common`` classes are frequent, log-spaced from ``n_max`` down to
    101; then ``n_common = round(C · group_fractions[1])`` classes from 100 down to 11; the
    last ``n_rare = round(C · group_fractions[0])`` from 10 down to 1.  Within a band of ``m``
    classes from ``hi`` to ``lo``, class ``i`` gets ``floor(hi · (lo/hi)^(i/(m-1)))``.

    Args:
        num_classes: ``C``.
        n_max: Count of the most frequent class (> 100 when there are frequent classes).
        group_fractions: Shares of rare and common classes; frequent gets the rest.

    Returns:
        Non-increasing counts, one per class.

    Example::

        >>> banded_longtail_counts(6, n_max=200, group_fractions=(1 / 3, 1 / 3))
        [200, 101, 100, 11, 10, 1]
    """
    rare_share, common_share = group_fractions
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if rare_share < 0 or common_share < 0 or rare_share + common_share > 1:
        raise ValueError(
            f"group_fractions must be two non-negative shares summing to <= 1, got "
            f"{group_fractions}"
        )
    n_rare = round(num_classes * rare_share)
    n_common = round(num_classes * common_share)
    n_frequent = num_classes - n_rare - n_common
    if n_frequent > 0 and n_max <= COMMON_MAX_IMAGES:
        raise ValueError(f"n_max must be > {COMMON_MAX_IMAGES} for frequent classes, got {n_max}")
    return (
        _log_spaced(n_max, COMMON_MAX_IMAGES + 1, n_frequent)
        + _log_spaced(COMMON_MAX_IMAGES, RARE_MAX_IMAGES + 1, n_common)
        + _log_spaced(RARE_MAX_IMAGES, 1, n_rare)
    )


def _log_spaced(hi: int, lo: int, m: int) -> list[int]:
    if m == 1:
        return [hi]
    # The 1e-9 keeps floor(lo) at lo where the power lands a hair below it.
    return [math.floor(hi * (lo / hi) ** (i / (m - 1)) + 1e-9) for i in range(m)]


@dataclass(frozen=True)
class CanvasSplit:
    """One split of canvases.

    Attributes:
        images: ``uint8`` ``(N, H, W)`` grey canvases (dark ink on a lighter background).
        boxes: Per canvas, ``float32`` ``(k, 4)`` tight ink boxes ``(x1, y1, x2, y2)`` in pixel
            edges (a box from column ``a`` to column ``b`` inclusive has ``x1 = a, x2 = b + 1``).
        labels: Per canvas, ``int64`` ``(k,)`` class indices in ``0 .. C-1``, all distinct.
        drawings: Per canvas, ``int64`` ``(k,)`` Omniglot drawing index (0-19) of each glyph.
    """

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    drawings: list[torch.Tensor]

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class CanvasDataset:
    """Omniglot-Det: training and test canvases and the class facts they were built from.

    Attributes:
        train: Long-tailed training canvases.
        test: Balanced test canvases (other drawings of the same characters).
        class_names: ``"Alphabet/characterNN"`` per class index.
        train_image_counts: ``int64`` ``(C,)`` training canvases containing each class.
        frequency: ``'r'`` / ``'c'`` / ``'f'`` per class, from ``train_image_counts``.
    """

    train: CanvasSplit
    test: CanvasSplit
    class_names: tuple[str, ...]
    train_image_counts: torch.Tensor
    frequency: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lvis(self, split: Literal["train", "test"]) -> dict[str, Any]:
        """The split as an LVIS-format annotation dict (ids 1-based, boxes ``[x, y, w, h]``).

        Images list every category they do not contain in ``neg_category_ids`` (the canvases
        are exhaustively labelled) and none in ``not_exhaustive_category_ids``.  Categories
        carry the *training* ``image_count``, ``instance_count`` and ``frequency`` for both
        splits, as LVIS does for its validation set.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        data = self.train if split == "train" else self.test
        _, height, width = data.images.shape
        all_ids = set(range(1, self.num_classes + 1))
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for index, (boxes, labels) in enumerate(zip(data.boxes, data.labels, strict=True)):
            image_id = index + 1
            present = {int(label) + 1 for label in labels}
            images.append(
                {
                    "id": image_id,
                    "width": int(width),
                    "height": int(height),
                    "neg_category_ids": sorted(all_ids - present),
                    "not_exhaustive_category_ids": [],
                }
            )
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                    }
                )
        # One glyph per class per canvas, so instance and image counts coincide.
        counts = self.train_image_counts.tolist()
        categories = [
            {
                "id": j + 1,
                "name": name,
                "frequency": self.frequency[j],
                "image_count": counts[j],
                "instance_count": counts[j],
            }
            for j, name in enumerate(self.class_names)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}


def build_canvases(
    omniglot: Omniglot,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    num_train: int = 2500,
    num_test: int = 500,
    test_images_per_class: int = 10,
    size: int = 256,
    n_max: int = 140,
    group_fractions: tuple[float, float] = (0.3, 0.4),
    glyphs_per_canvas: tuple[int, int] = (3, 8),
    glyph_size: tuple[int, int] = (24, 88),
    max_overlap: float = 0.15,
    clutter: bool = True,
    train_drawings: Sequence[int] = tuple(range(15)),
    test_drawings: Sequence[int] = tuple(range(15, 20)),
) -> CanvasDataset:
    """Build the seeded long-tailed detection canvases from loaded Omniglot characters.

    Args:
        omniglot: The characters (:func:`~eqlosses_lab.data.omniglot.load_omniglot`).
        seed: Seed of every random choice; the same arguments give identical canvases.
        num_classes: Characters to use (a seeded choice); all of them by default (242).
        num_train: Training canvases.  The glyphs of all classes
            (``sum(banded_longtail_counts(...))``) are spread over them, so their mean per
            canvas must lie within ``glyphs_per_canvas``.
        num_test: Test canvases, holding ``num_classes · test_images_per_class`` glyphs.
        test_images_per_class: Test canvases containing each class (balanced test set).
        size: Canvas height and width in pixels.
        n_max, group_fractions: Long-tail profile (:func:`banded_longtail_counts`).
        glyphs_per_canvas: Fewest and most glyphs on one canvas.
        glyph_size: Range of a glyph's longer side in pixels (log-uniform draw).
        max_overlap: Largest share of a glyph's box another glyph's box may cover.
        clutter: Draw the cluttered background (gradient, distractor strokes, noise); without
            it the background is plain white and ink is the only non-white pixel.
        train_drawings, test_drawings: Disjoint Omniglot drawing indices used by each split.

    Raises:
        ValueError: on inconsistent sizes or overlapping drawing sets.
    """
    _check_args(size, glyphs_per_canvas, glyph_size, max_overlap, train_drawings, test_drawings)
    rng = np.random.default_rng(seed)
    total_classes = len(omniglot.class_names)
    num_classes = total_classes if num_classes is None else num_classes
    if not 1 <= num_classes <= total_classes:
        raise ValueError(f"num_classes must be in [1, {total_classes}], got {num_classes}")

    # Rank j (0 = most frequent) -> Omniglot class, seeded.
    characters = rng.permutation(total_classes)[:num_classes]
    train_counts = np.asarray(
        banded_longtail_counts(num_classes, n_max, group_fractions), dtype=np.int64
    )
    if train_counts.max() > num_train:
        raise ValueError(
            f"num_train={num_train} is below n_max={n_max}: a class cannot be in more "
            "canvases than there are"
        )
    test_counts = np.full(num_classes, test_images_per_class, dtype=np.int64)
    if test_images_per_class > num_test:
        raise ValueError(
            f"test_images_per_class={test_images_per_class} exceeds num_test={num_test}"
        )

    source = _GlyphSource(omniglot)
    renderer = _Renderer(size, glyph_size, max_overlap, clutter)
    splits = []
    for counts, num_canvases, drawings, name in (
        (train_counts, num_train, train_drawings, "num_train"),
        (test_counts, num_test, test_drawings, "num_test"),
    ):
        per_canvas = _glyph_numbers(int(counts.sum()), num_canvases, glyphs_per_canvas, rng, name)
        members = _assign_classes(counts, per_canvas, rng)
        splits.append(_render_split(members, characters, drawings, source, renderer, rng))

    return CanvasDataset(
        train=splits[0],
        test=splits[1],
        class_names=tuple(omniglot.class_names[c] for c in characters),
        train_image_counts=torch.from_numpy(train_counts),
        frequency=tuple(frequency_group(int(n)) for n in train_counts),
    )


def _check_args(
    size: int,
    glyphs_per_canvas: tuple[int, int],
    glyph_size: tuple[int, int],
    max_overlap: float,
    train_drawings: Sequence[int],
    test_drawings: Sequence[int],
) -> None:
    lo, hi = glyphs_per_canvas
    if not 1 <= lo <= hi:
        raise ValueError(f"glyphs_per_canvas must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")
    small, large = glyph_size
    if not 4 <= small <= large <= size:
        raise ValueError(
            f"glyph_size must be (lo, hi) with 4 <= lo <= hi <= size={size}, got {glyph_size}"
        )
    if not 0 <= max_overlap <= 1:
        raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap}")
    for name, drawings in (("train_drawings", train_drawings), ("test_drawings", test_drawings)):
        if not drawings or not all(0 <= d < DRAWINGS_PER_CLASS for d in drawings):
            raise ValueError(
                f"{name} must be a non-empty set of drawing indices in 0..{DRAWINGS_PER_CLASS - 1},"
                f" got {list(drawings)}"
            )
    shared = sorted(set(train_drawings) & set(test_drawings))
    if shared:
        raise ValueError(f"train_drawings and test_drawings must be disjoint, both hold {shared}")


def _glyph_numbers(
    total: int, num_canvases: int, bounds: tuple[int, int], rng: np.random.Generator, name: str
) -> IntArray:
    """Glyphs per canvas: uniform in ``bounds``, then nudged one at a time to sum to ``total``."""
    lo, hi = bounds
    if not lo * num_canvases <= total <= hi * num_canvases:
        raise ValueError(
            f"{name}={num_canvases} canvases cannot hold {total} glyphs with "
            f"{lo}-{hi} per canvas; use between {math.ceil(total / hi)} and {total // lo}"
        )
    counts = rng.integers(lo, hi + 1, size=num_canvases)
    while (excess := int(counts.sum()) - total) != 0:
        movable = np.flatnonzero(counts > lo) if excess > 0 else np.flatnonzero(counts < hi)
        picked = rng.choice(movable, size=min(abs(excess), movable.size), replace=False)
        counts[picked] -= int(np.sign(excess))
    return counts.astype(np.int64)


def _assign_classes(
    class_counts: IntArray, per_canvas: IntArray, rng: np.random.Generator
) -> list[list[int]]:
    """Put class ``j`` on exactly ``class_counts[j]`` distinct canvases, filling each canvas.

    Classes are visited in a random order and each goes to the canvases with the most free
    places left (random among ties).  For a bipartite degree sequence this greedy choice never
    blocks a completion that exists (the exchange argument behind the Gale-Ryser theorem).
    """
    free = per_canvas.copy()
    members: list[list[int]] = [[] for _ in range(per_canvas.size)]
    for j in rng.permutation(class_counts.size):
        n = int(class_counts[j])
        # Random fractions below 1 only break ties between equal free counts.
        chosen = np.argsort(-(free + rng.random(free.size)), kind="stable")[:n]
        if n and free[chosen].min() <= 0:
            raise ValueError("no canvas layout puts every class on its target number of canvases")
        free[chosen] -= 1
        for canvas in chosen.tolist():
            members[canvas].append(int(j))
    return members


class _GlyphSource:
    """Omniglot drawings as boolean ink masks cropped to their ink, looked up by class/drawing."""

    def __init__(self, omniglot: Omniglot) -> None:
        self.images = omniglot.images
        self.row = np.full((len(omniglot.class_names), DRAWINGS_PER_CLASS), -1, dtype=np.int64)
        self.row[omniglot.labels, omniglot.drawings] = np.arange(omniglot.labels.size)
        self._crops: dict[int, npt.NDArray[np.bool_]] = {}

    def crop(self, character: int, drawing: int) -> npt.NDArray[np.bool_]:
        row = int(self.row[character, drawing])
        if row < 0:
            raise ValueError(f"character {character} has no drawing {drawing}")
        if row not in self._crops:
            ink = self.images[row] < 128
            ys, xs = np.nonzero(ink)
            if ys.size == 0:
                raise ValueError(f"Omniglot image {row} holds no ink")
            self._crops[row] = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        return self._crops[row]


class _Renderer:
    def __init__(
        self, size: int, glyph_size: tuple[int, int], max_overlap: float, clutter: bool
    ) -> None:
        self.size = size
        self.glyph_size = glyph_size
        self.max_overlap = max_overlap
        self.clutter = clutter

    def background(self, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        if not self.clutter:
            return np.full((self.size, self.size), 255.0, dtype=np.float32)
        # Linear brightness gradient in a random direction between two light levels.
        angle = rng.uniform(0, 2 * math.pi)
        ramp = np.linspace(-0.5, 0.5, self.size, dtype=np.float32)
        direction = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
        low, high = np.sort(rng.uniform(110, 255, size=2))
        canvas = Image.fromarray(
            (low + (high - low) * (direction + 0.5)).clip(0, 255).astype(np.uint8)
        )
        draw = ImageDraw.Draw(canvas)
        # Distractors: straight strokes and ellipse arcs, as dark as ink at times, so that
        # darkness alone does not find characters.
        for _ in range(int(rng.integers(3, 10))):
            x0, y0, x1, y1 = rng.uniform(-0.1, 1.1, size=4) * self.size
            shade = int(rng.integers(20, 200))
            width = int(rng.integers(1, 4))
            if rng.random() < 0.5:
                draw.line([(x0, y0), (x1, y1)], fill=shade, width=width)
            else:
                box = [min(x0, x1), min(y0, y1), max(x0, x1) + 4, max(y0, y1) + 4]
                start = float(rng.uniform(0, 360))
                draw.arc(box, start, start + float(rng.uniform(60, 300)), fill=shade, width=width)
        return np.asarray(canvas, dtype=np.float32)

    def glyph_mask(
        self, crop: npt.NDArray[np.bool_], out_w: int, out_h: int
    ) -> tuple[npt.NDArray[np.bool_], int, int]:
        """The crop resized to ``out_w x out_h``, cut to its ink; with the cut's top-left."""
        coverage = np.asarray(
            Image.fromarray(crop.astype(np.uint8) * 255).resize(
                (out_w, out_h), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        # The max() guard keeps at least one pixel of a glyph shrunk below a stroke's width.
        mask = coverage >= min(_INK_COVERAGE * 255, float(coverage.max()))
        ys, xs = np.nonzero(mask)
        top, left = int(ys.min()), int(xs.min())
        return mask[top : ys.max() + 1, left : xs.max() + 1], top, left

    def layout(
        self, crops: list[npt.NDArray[np.bool_]], rng: np.random.Generator
    ) -> list[tuple[int, int, npt.NDArray[np.bool_]]]:
        """Masks and top-left corners of all glyphs, or an error if they never fit."""
        for _ in range(_MAX_LAYOUT_TRIES):
            placed: list[tuple[int, int, npt.NDArray[np.bool_]]] = []
            for crop in crops:
                spot = self._place(crop, placed, rng)
                if spot is None:
                    break
                placed.append(spot)
            else:
                return placed
        raise ValueError(
            f"could not place {len(crops)} glyphs on a {self.size}px canvas with "
            f"max_overlap={self.max_overlap}; lower glyph_size or glyphs_per_canvas"
        )

    def _place(
        self,
        crop: npt.NDArray[np.bool_],
        placed: list[tuple[int, int, npt.NDArray[np.bool_]]],
        rng: np.random.Generator,
    ) -> tuple[int, int, npt.NDArray[np.bool_]] | None:
        small, large = self.glyph_size
        height, width = crop.shape
        for attempt in range(_MAX_GLYPH_TRIES):
            # Log-uniform size; later attempts shrink the range's top so crowded canvases fit.
            top = max(small, large * 0.97**attempt)
            scale = math.exp(rng.uniform(math.log(small), math.log(top))) / max(height, width)
            w, h = max(1, round(width * scale)), max(1, round(height * scale))
            y = int(rng.integers(0, self.size - h + 1))
            x = int(rng.integers(0, self.size - w + 1))
            # Checked on the resized crop's frame, which holds the final ink box: conservative,
            # and it spares resizing glyphs that do not fit.
            if all(
                self._overlap_ok((x, y, w, h), (px, py, m.shape[1], m.shape[0]))
                for px, py, m in placed
            ):
                mask, dy, dx = self.glyph_mask(crop, w, h)
                return x + dx, y + dy, mask
        return None

    def _overlap_ok(self, a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
        ax, ay, aw, ah = a
        bx, by, bw, bh = b
        iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
        ih = max(0, min(ay + ah, by + bh) - max(ay, by))
        return iw * ih <= self.max_overlap * min(aw * ah, bw * bh)

    def render(
        self, placed: list[tuple[int, int, npt.NDArray[np.bool_]]], rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        canvas = self.background(rng)
        boxes = np.empty((len(placed), 4), dtype=np.float32)
        for k, (x, y, mask) in enumerate(placed):
            h, w = mask.shape
            ink = rng.uniform(0, 60) if self.clutter else 0.0
            canvas[y : y + h, x : x + w][mask] = ink
            boxes[k] = (x, y, x + w, y + h)
        if self.clutter:
            canvas += 6.0 * rng.standard_normal(canvas.shape, dtype=np.float32)
        return canvas.round().clip(0, 255).astype(np.uint8), boxes


def _render_split(
    members: list[list[int]],
    characters: IntArray,
    drawings: Sequence[int],
    source: _GlyphSource,
    renderer: _Renderer,
    rng: np.random.Generator,
) -> CanvasSplit:
    drawing_choices = np.asarray(sorted(set(drawings)), dtype=np.int64)
    images = np.empty((len(members), renderer.size, renderer.size), dtype=np.uint8)
    boxes, labels, used = [], [], []
    for index, classes in enumerate(members):
        order = rng.permutation(len(classes))
        canvas_labels = np.asarray(classes, dtype=np.int64)[order]
        canvas_drawings = rng.choice(drawing_choices, size=canvas_labels.size)
        crops = [
            source.crop(int(characters[j]), int(d))
            for j, d in zip(canvas_labels, canvas_drawings, strict=True)
        ]
        images[index], canvas_boxes = renderer.render(renderer.layout(crops, rng), rng)
        boxes.append(torch.from_numpy(canvas_boxes))
        labels.append(torch.from_numpy(canvas_labels))
        used.append(torch.from_numpy(canvas_drawings.astype(np.int64)))
    return CanvasSplit(images=torch.from_numpy(images), boxes=boxes, labels=labels, drawings=used)
