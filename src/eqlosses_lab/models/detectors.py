"""Small detectors on frozen multi-scale features: a dense (one-stage) head and an RoI head.

Both train on cached EfficientNet-Lite0 feature maps, so a loss comparison costs seconds
per epoch on a CPU:

* :class:`DenseHead` is an FCOS-like head on the stride-16 and stride-32 maps (the glyphs
  of the canvases are 23-88 px; a stride-8 level would cost four times the locations): a
  tiny top-down FPN, one shared conv tower and per-location ``C`` sigmoid class logits plus
  ``(l, t, r, b)`` distances (in strides).
  With ``num_classes=1`` it is the class-agnostic proposal network of the two-stage
  detector (CenterNet2 likewise proposes with a one-stage detector).
* :class:`RoIHead` is the second stage: an MLP on RoIAlign features that gives the class
  logits (as many columns as the loss wants: ``C`` or ``C + 1``) and class-agnostic box
  deltas.

Targets: :func:`fcos_targets` assigns locations to boxes (centre sampling and a size
range per level); :func:`sample_rois` picks the RoIs of a step. Inference:
:func:`dense_detections` and :func:`roi_detections` turn scores and boxes into at most
``max_detections`` boxes per image after class-wise NMS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import batched_nms, box_iou, clip_boxes, decode_ltrb

# Strides of the EfficientNet-Lite0 maps the RoI head pools from, and their channels.
STRIDES: tuple[int, ...] = (8, 16, 32)
BACKBONE_CHANNELS: tuple[int, ...] = (40, 112, 320)
# The dense head's levels (a subset of the above).
DENSE_STRIDES: tuple[int, ...] = (16, 32)
DENSE_CHANNELS: tuple[int, ...] = (112, 320)
# Largest side distance (pixels) each dense level is responsible for, FCOS-style: a
# location is assigned to a box only on the level whose range holds max(l, t, r, b).
SCALE_RANGES: tuple[tuple[float, float], ...] = ((0.0, 32.0), (32.0, math.inf))
# Exponent inputs of the distance branch are clamped here (e^8 strides is beyond any canvas).
MAX_LOG_DISTANCE = 8.0

__all__ = [
    "BACKBONE_CHANNELS",
    "DENSE_CHANNELS",
    "DENSE_STRIDES",
    "SCALE_RANGES",
    "STRIDES",
    "DenseHead",
    "RoIHead",
    "best_overlaps",
    "dense_detections",
    "fcos_targets",
    "level_points",
    "roi_detections",
    "sample_rois",
]


def _check_levels(name: str, per_level: Sequence[object], expected: int) -> None:
    if len(per_level) != expected:
        raise ValueError(f"{name}: expected {expected} feature levels, got {len(per_level)}")


def _init_layer(layer: nn.Conv2d | nn.Linear, std: float, bias: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.constant_(layer.bias, bias)


class DenseHead(nn.Module):
    """FCOS-like dense head: tiny FPN, shared tower, class logits and box distances.

    Each level's backbone map goes through a 1x1 lateral conv to ``width`` channels;
    coarser levels are upsampled and added (top-down), then one shared tower of
    ``tower_depth`` 3x3 conv + GroupNorm + ReLU layers feeds a 1x1 class conv (``C``
    logits, bias set so every ``σ`` starts at ``prior_prob``) and a 1x1 distance conv
    (``exp`` of a per-level scaled output: distances in strides, always positive).

    Args:
        num_classes: ``C`` sigmoid logits per location (1 for a proposal network).
        in_channels: channels of the input maps, finest first.
        width: channels of the FPN and tower.
        tower_depth: 3x3 conv layers in the shared tower.
        prior_prob: initial foreground probability (0.01 as in RetinaNet/FCOS).

    Shape:
        - input: ``L`` maps ``(N, in_channels[l], H_l, W_l)``, finest first.
        - output: ``(logits, distances)``, each a list of ``L`` maps ``(N, C, H_l, W_l)``
          and ``(N, 4, H_l, W_l)``.

    Example:
        >>> head = DenseHead(num_classes=5, in_channels=(8, 16), width=16)
        >>> logits, dist = head([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)])
        >>> [tuple(x.shape) for x in logits], tuple(dist[1].shape)
        ([(2, 5, 8, 8), (2, 5, 4, 4)], (2, 4, 4, 4))
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int] = DENSE_CHANNELS,
        width: int = 64,
        tower_depth: int = 1,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob: expected a number in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.num_levels = len(in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        tower: list[nn.Module] = []
        for _ in range(tower_depth):
            tower += [nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.ReLU()]
        self.tower = nn.Sequential(*tower)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.regressor = nn.Conv2d(width, 4, 1)
        self.scales = nn.Parameter(torch.ones(self.num_levels))
        _init_layer(self.classifier, 0.01, -math.log((1 - prior_prob) / prior_prob))
        _init_layer(self.regressor, 0.01, 0.0)

    def forward(self, maps: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        _check_levels("maps", maps, self.num_levels)
        laterals = [conv(x) for conv, x in zip(self.lateral, maps, strict=True)]
        # top-down: coarse context added to the finer levels
        for level in range(self.num_levels - 2, -1, -1):
            coarse = F.interpolate(laterals[level + 1], size=laterals[level].shape[-2:])
            laterals[level] = laterals[level] + coarse
        logits, distances = [], []
        for level, x in enumerate(laterals):
            x = self.tower(x)
            logits.append(self.classifier(x))
            raw = self.regressor(x) * self.scales[level]
            distances.append(torch.exp(raw.clamp(max=MAX_LOG_DISTANCE)))
        return logits, distances


class RoIHead(nn.Module):
    """Second-stage head: two fully connected layers, class logits and box deltas.

    Args:
        in_features: length of a flattened RoI feature.
        num_columns: class logits per RoI (``C``, or ``C + 1`` with a background column).
        hidden: width of the two hidden layers.
        prior_prob: if given, every class bias starts at ``-log((1 - p) / p)`` (so every
            ``σ`` starts near ``p``, as a dense head's); otherwise at 0.

    Shape:
        - input: ``(R, in_features)``.
        - output: ``(logits (R, num_columns), deltas (R, 4))``, class-agnostic deltas in
          the Faster R-CNN coding (:func:`~eqlosses_lab.models.boxes.encode_deltas`).

    Example:
        >>> head = RoIHead(in_features=32, num_columns=6)
        >>> logits, deltas = head(torch.randn(10, 32))
        >>> tuple(logits.shape), tuple(deltas.shape)
        ((10, 6), (10, 4))
    """

    def __init__(
        self,
        in_features: int,
        num_columns: int,
        hidden: int = 256,
        prior_prob: float | None = None,
    ) -> None:
        super().__init__()
        if num_columns < 1:
            raise ValueError(f"num_columns: expected a positive integer, got {num_columns}")
        if prior_prob is not None and not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob: expected a number in (0, 1), got {prior_prob}")
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.classifier = nn.Linear(hidden, num_columns)
        self.regressor = nn.Linear(hidden, 4)
        bias = 0.0 if prior_prob is None else -math.log((1 - prior_prob) / prior_prob)
        _init_layer(self.classifier, 0.01, bias)
        _init_layer(self.regressor, 0.001, 0.0)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        x = self.body(features)
        return self.classifier(x), self.regressor(x)


# ------------------------------------------------------------------------- targets


def level_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int]) -> list[Tensor]:
    """Pixel centres ``(x, y)`` of every location of each level, row-major.

    Cell ``(i, j)`` of a stride-``s`` map is centred at ``((j + 0.5) s, (i + 0.5) s)``, the
    convention of :func:`~eqlosses_lab.models.boxes.roi_align`.

    Example:
        >>> level_points([(1, 2)], [8])[0]
        tensor([[ 4.,  4.],
                [12.,  4.]])
    """
    points = []
    for (height, width), stride in zip(sizes, strides, strict=True):
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1))
    return points


def fcos_targets(
    points: Sequence[Tensor],
    strides: Sequence[int],
    boxes: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    scale_ranges: Sequence[tuple[float, float]] = SCALE_RANGES,
    center_radius: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """FCOS assignment of one image's locations to its boxes.

    A location is a positive of a box when it lies inside the box, within
    ``center_radius`` strides of the box centre (centre sampling), and its largest side
    distance falls in its level's ``scale_ranges``; several candidate boxes go to the
    smallest. Every other location is background (label ``C``).

    Args:
        points: per level ``(P_l, 2)`` location centres (:func:`level_points`).
        strides: per level stride.
        boxes: ``(K, 4)`` ground-truth boxes ``(x1, y1, x2, y2)``.
        labels: ``(K,)`` their classes in ``[0, C)``.
        num_classes: ``C``.

    Returns:
        ``(labels (P,), boxes (P, 4))`` over all levels concatenated; background rows
        carry label ``C`` and a zero box.

    Example:
        >>> pts = level_points([(4, 4)], [8])
        >>> lab, _ = fcos_targets(pts, [8], torch.tensor([[0.0, 0.0, 16.0, 16.0]]),
        ...                       torch.tensor([2]), 3, scale_ranges=[(0.0, 64.0)])
        >>> lab.reshape(4, 4)
        tensor([[2, 2, 3, 3],
                [2, 2, 3, 3],
                [3, 3, 3, 3],
                [3, 3, 3, 3]])
    """
    _check_levels("strides", strides, len(points))
    _check_levels("scale_ranges", scale_ranges, len(points))
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes: expected shape (K, 4), got {tuple(boxes.shape)}")
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels: expected shape ({boxes.shape[0]},), got {tuple(labels.shape)}")
    all_points = torch.cat(list(points))
    total = all_points.shape[0]
    if boxes.shape[0] == 0:
        return torch.full((total,), num_classes, dtype=torch.long), torch.zeros(total, 4)
    sizes = [p.shape[0] for p in points]
    stride = torch.cat([torch.full((n,), float(s)) for n, s in zip(sizes, strides, strict=True)])
    low = torch.cat([torch.full((n,), r[0]) for n, r in zip(sizes, scale_ranges, strict=True)])
    high = torch.cat([torch.full((n,), r[1]) for n, r in zip(sizes, scale_ranges, strict=True)])
    boxes = boxes.float()
    x, y = all_points[:, 0:1], all_points[:, 1:2]  # (P, 1) against (1, K)
    left, top = x - boxes[:, 0], y - boxes[:, 1]
    right, bottom = boxes[:, 2] - x, boxes[:, 3] - y
    sides = torch.stack((left, top, right, bottom), dim=2)  # (P, K, 4)
    inside = sides.min(dim=2).values > 0
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    radius = center_radius * stride[:, None]
    near_centre = ((x - cx).abs() < radius) & ((y - cy).abs() < radius)
    reach = sides.max(dim=2).values
    in_range = (reach >= low[:, None]) & (reach <= high[:, None])
    candidate = inside & near_centre & in_range
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cost = torch.where(candidate, area[None, :].expand_as(candidate), torch.tensor(math.inf))
    best_cost, best = cost.min(dim=1)
    positive = torch.isfinite(best_cost)
    target_labels = torch.where(positive, labels.long()[best], num_classes)
    target_boxes = torch.where(positive[:, None], boxes[best], torch.zeros(()))
    return target_labels, target_boxes


def sample_rois(
    ious: Tensor,
    num_samples: int,
    foreground_fraction: float,
    foreground_iou: float,
    generator: torch.Generator,
) -> Tensor:
    """Indices of the RoIs of one image for a training step (Faster R-CNN sampling).

    Foreground RoIs (IoU with their best box ``>= foreground_iou``) are drawn up to
    ``round(num_samples · foreground_fraction)``, the rest from the background, all
    without replacement.

    Shape: ``ious (R,)`` -> ``(M,)`` int64, ``M <= num_samples``.

    Example:
        >>> ious = torch.tensor([0.9, 0.1, 0.7, 0.2, 0.0])
        >>> picked = sample_rois(ious, 3, 0.5, 0.5, torch.Generator().manual_seed(0))
        >>> int((ious[picked] >= 0.5).sum()), len(picked)
        (2, 3)
    """
    foreground = torch.nonzero(ious >= foreground_iou).flatten()
    background = torch.nonzero(ious < foreground_iou).flatten()
    num_fg = min(foreground.numel(), round(num_samples * foreground_fraction))
    num_bg = min(background.numel(), num_samples - num_fg)
    fg = foreground[torch.randperm(foreground.numel(), generator=generator)[:num_fg]]
    bg = background[torch.randperm(background.numel(), generator=generator)[:num_bg]]
    return torch.cat((fg, bg))


# ----------------------------------------------------------------------- inference


def dense_detections(
    scores: Sequence[Tensor],
    distances: Sequence[Tensor],
    points: Sequence[Tensor],
    strides: Sequence[int],
    image_size: tuple[int, int],
    *,
    score_threshold: float = 0.05,
    candidates_per_level: int = 300,
    nms_iou: float = 0.6,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections from a dense head: threshold, top-k, decode, class-wise NMS.

    Args:
        scores: per level ``(P_l, C)`` class scores (the loss's test-time scores).
        distances: per level ``(P_l, 4)`` distances in strides.
        points, strides: as :func:`fcos_targets`.
        image_size: ``(height, width)`` to clip the boxes to.

    Returns:
        ``(boxes (M, 4), scores (M,), labels (M,))`` by decreasing score, ``M <=
        max_detections``.
    """
    all_boxes, all_scores, all_labels = [], [], []
    for level_scores, dist, pts, stride in zip(scores, distances, points, strides, strict=True):
        flat = level_scores.reshape(-1)
        keep = torch.nonzero(flat > score_threshold).flatten()
        if keep.numel() > candidates_per_level:
            keep = keep[flat[keep].topk(candidates_per_level).indices]
        location = keep // level_scores.shape[1]
        all_labels.append(keep % level_scores.shape[1])
        all_scores.append(flat[keep])
        all_boxes.append(decode_ltrb(pts[location], dist[location], float(stride)))
    boxes = clip_boxes(torch.cat(all_boxes), *image_size)
    score = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    kept = batched_nms(boxes, score, labels, nms_iou)[:max_detections]
    return boxes[kept], score[kept], labels[kept]


def roi_detections(
    scores: Tensor,
    boxes: Tensor,
    *,
    score_threshold: float = 0.001,
    max_candidates: int = 500,
    nms_iou: float = 0.5,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections from an RoI head: every (RoI, class) pair above the
    threshold, the best ``max_candidates``, class-wise NMS, at most ``max_detections``
    (LVIS allows 300; a canvas holds at most 8 objects).

    Shape: ``scores (R, C)``, ``boxes (R, 4)`` (class-agnostic, decoded) ->
    ``(boxes (M, 4), scores (M,), labels (M,))``.
    """
    flat = scores.reshape(-1)
    keep = torch.nonzero(flat > score_threshold).flatten()
    if keep.numel() > max_candidates:
        keep = keep[flat[keep].topk(max_candidates).indices]
    roi = keep // scores.shape[1]
    labels = keep % scores.shape[1]
    candidate_boxes = boxes[roi]
    kept = batched_nms(candidate_boxes, flat[keep], labels, nms_iou)[:max_detections]
    return candidate_boxes[kept], flat[keep][kept], labels[kept]


def best_overlaps(
    rois: Tensor, boxes: Tensor, labels: Tensor, num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Each RoI's best-overlapping box: ``(iou (R,), label (R,), box (R, 4))``; label
    ``C`` and a zero box where the image has no box."""
    if boxes.shape[0] == 0:
        r = rois.shape[0]
        return torch.zeros(r), torch.full((r,), num_classes, dtype=torch.long), torch.zeros(r, 4)
    iou, best = box_iou(rois, boxes).max(dim=1)
    return iou, labels.long()[best], boxes[best]
