"""Long-tailed object detection: a one-stage and a two-stage detector, LVIS evaluation.

The canvases (:mod:`eqlosses_lab.data.canvases`) are the same for every seed; a seed fixes the
initialisation, the data order and every random draw of the losses. Both detectors train
on frozen, cached EfficientNet-Lite0 maps: the dense heads on strides 16 and 32, the RoI
head on RoIAlign features of strides 8, 16 and 32.

* One-stage: :class:`~eqlosses_lab.models.detectors.DenseHead` (FCOS-like), ``C`` sigmoid
  logits per location, GIoU box loss; focal loss (baseline), EFL, the quality focal loss
  (``qfl``: EQFL with ``s = 0``, the control for EQFL), EQFL and Sigmoid-EQL. Every
  classification loss is divided by the same normaliser, the number of positive
  locations of the step.
* Two-stage: a class-agnostic :class:`DenseHead` proposal network is trained once per data
  set, its proposals (and the RoIAlign features of every proposal) are cached, and only
  the :class:`~eqlosses_lab.models.detectors.RoIHead` is trained per loss, on RoIs sampled
  afresh every epoch.

The loss of each name, with its column layout and test-time scores, comes from
:mod:`eqlosses_lab.registry` (``one-stage`` and ``two-stage``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import eqlosses
from eqlosses import StatisticsLoss

from .. import report
from ..models.boxes import (
    box_iou,
    clip_boxes,
    decode_deltas,
    decode_ltrb,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    encode_deltas,
    roi_align,
)
from ..models.detectors import (
    BACKBONE_CHANNELS,
    DENSE_STRIDES,
    STRIDES,
    DenseHead,
    RoIHead,
    best_overlaps,
    dense_detections,
    fcos_targets,
    level_points,
    roi_detections,
    sample_rois,
)
from ..registry import ONE_STAGE, SIGMOID_PRIOR, TWO_STAGE, DenseLoss, LossContext
from .progress import EpochHook, epoch_iterator
from .runner import Record, TaskOutputs
from .settings import (
    CANVAS_PRESETS,
    CENTER_RADIUS,
    DETECTION_CONFIG,
    DetectionConfig,
    Detector,
    TwoStageConfig,
)

METRICS = ("AP", "AP50", "AP75", "APr", "APc", "APf")
GROUPS = ("r", "c", "f")


@dataclass
class DetectionData:
    """Canvases with their cached backbone maps, boxes, split and LVIS ground truth.

    ``features[l]`` is ``(N, C_l, H_l, W_l)`` float16 over all canvases; ``train`` and
    ``test`` index them. Labels are class indices in ``[0, C)``; ``category_ids[c]`` is
    class ``c``'s LVIS id and ``image_ids[n]`` canvas ``n``'s.
    """

    features: list[Tensor]
    boxes: list[Tensor]
    labels: list[Tensor]
    train: Tensor
    test: Tensor
    image_ids: list[int]
    category_ids: list[int]
    class_names: list[str]
    image_counts: list[int]
    groups: list[str]
    gt: dict[str, Any]
    image_size: tuple[int, int]
    images: Any
    key: str
    _points: list[Tensor] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def points(self) -> list[Tensor]:
        """Location centres of the dense levels."""
        if not self._points:
            maps = self.dense_features
            self._points = level_points([(f.shape[-2], f.shape[-1]) for f in maps], DENSE_STRIDES)
        return self._points

    @property
    def dense_features(self) -> list[Tensor]:
        return [f for f, s in zip(self.features, STRIDES, strict=True) if s in DENSE_STRIDES]

    def maps(self, index: Tensor) -> list[Tensor]:
        """The dense levels' maps of canvases ``index``, float32."""
        return [f[index].float() for f in self.dense_features]


# ------------------------------------------------------------------------- helpers


def _flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per-level ``(N, K, H, W)`` maps -> ``(N, P, K)`` with locations in level order."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def _optimizer(
    params: Sequence[nn.Parameter], config: DetectionConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    warmup = max(1, min(config.warmup_steps, total_steps // 4))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _group_means(values: Sequence[float], groups: Sequence[str]) -> dict[str, float]:
    means = {}
    for group in GROUPS:
        members = [v for v, g in zip(values, groups, strict=True) if g == group]
        means[group] = sum(members) / len(members) if members else float("nan")
    return means


def _lvis_detections(
    data: DetectionData, canvas: int, boxes: Tensor, scores: Tensor, labels: Tensor
) -> list[dict[str, Any]]:
    out = []
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        x1, y1, x2, y2 = box
        out.append(
            {
                "image_id": data.image_ids[canvas],
                "category_id": data.category_ids[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
            }
        )
    return out


def _examples(
    canvas: int, boxes: Tensor, scores: Tensor, labels: Tensor, keep: int = 15
) -> dict[str, Any]:
    """The best few detections of one test canvas, for the picture of the report."""
    return {
        "canvas": canvas,
        "boxes": [[round(v, 1) for v in b] for b in boxes[:keep].tolist()],
        "scores": [round(s, 4) for s in scores[:keep].tolist()],
        "labels": labels[:keep].tolist(),
    }


def _record(
    data: DetectionData,
    loss_name: str,
    seed: int,
    detections: list[dict[str, Any]],
    examples: list[dict[str, Any]],
    history: list[list[float]],
    started: float,
    epoch_seconds: list[float],
) -> dict[str, Any]:
    from ..metrics.detection import evaluate_lvis

    result: dict[str, Any] = dict(evaluate_lvis(data.gt, detections))
    per_category = result["per_category"]
    per_class = [per_category.get(cid, float("nan")) for cid in data.category_ids]
    return {
        "loss": loss_name,
        "seed": seed,
        "metrics": {name: result[name] for name in METRICS},
        "per_class": per_class,
        "class_sizes": data.image_counts,
        "groups": data.groups,
        "grad_ratio_history": history or None,
        "grad_ratio_groups": [_group_means(g, data.groups) for g in history] or None,
        "examples": examples,
        "num_detections": len(detections),
        "epoch_seconds": epoch_seconds,
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------- one-stage


@dataclass
class DenseTargets:
    """FCOS targets of the training canvases: labels ``(N, P)`` and boxes ``(N, P, 4)``."""

    labels: Tensor
    boxes: Tensor


def dense_targets(
    data: DetectionData,
    canvases: Tensor,
    *,
    class_agnostic: bool = False,
    center_radius: float = CENTER_RADIUS,
) -> DenseTargets:
    """FCOS targets of ``canvases``; ``class_agnostic``: one class, for proposals."""
    labels, boxes = [], []
    for n in canvases.tolist():
        classes = torch.zeros_like(data.labels[n]) if class_agnostic else data.labels[n]
        num_classes = 1 if class_agnostic else data.num_classes
        lab, box = fcos_targets(
            data.points,
            DENSE_STRIDES,
            data.boxes[n],
            classes,
            num_classes,
            center_radius=center_radius,
        )
        labels.append(lab)
        boxes.append(box)
    return DenseTargets(torch.stack(labels), torch.stack(boxes))


def _dense_step(
    model: DenseHead,
    dense: DenseLoss,
    maps: list[Tensor],
    labels: Tensor,
    target_boxes: Tensor,
    points: Tensor,
    strides: Tensor,
) -> tuple[Tensor, Tensor]:
    """(classification loss, box loss) of one batch, both over the positive locations."""
    logits_maps, distance_maps = model(maps)
    logits = _flatten_levels(logits_maps)  # (B, P, C)
    distances = _flatten_levels(distance_maps)  # (B, P, 4)
    num_classes = logits.shape[-1]
    positive = labels < num_classes
    num_pos = positive.sum().clamp_min(1).to(logits.dtype)
    location = torch.nonzero(positive)[:, 1]
    predicted = decode_ltrb(points[location], distances[positive], strides[location])
    goal = target_boxes[positive]
    box_loss = (1.0 - elementwise_generalized_box_iou(predicted, goal)).sum() / num_pos
    quality = None
    if dense.takes_quality:
        quality = torch.zeros(labels.shape, dtype=logits.dtype)
        quality[positive] = elementwise_box_iou(predicted.detach(), goal).clamp_min(0.0)
    return dense.loss(logits, labels, quality, num_pos), box_loss


def _dense_predict(
    model: DenseHead,
    score_fn: Callable[[Tensor], Tensor],
    data: DetectionData,
    canvases: Tensor,
    batch_size: int,
    **options: Any,
) -> list[tuple[int, Tensor, Tensor, Tensor]]:
    """Detections ``(canvas, boxes, scores, labels)`` of each canvas."""
    model.eval()
    out = []
    with torch.no_grad():
        for batch in torch.split(canvases, batch_size):
            logits_maps, distance_maps = model(data.maps(batch))
            for i, canvas in enumerate(batch.tolist()):
                scores = [score_fn(m[i].flatten(1).t()) for m in logits_maps]
                dists = [m[i].flatten(1).t() for m in distance_maps]
                boxes, score, labels = dense_detections(
                    scores, dists, data.points, DENSE_STRIDES, data.image_size, **options
                )
                out.append((canvas, boxes, score, labels))
    return out


def _location_strides(data: DetectionData) -> Tensor:
    return torch.cat(
        [
            torch.full((p.shape[0],), float(s))
            for p, s in zip(data.points, DENSE_STRIDES, strict=True)
        ]
    )


def train_dense(
    data: DetectionData,
    targets: DenseTargets,
    class_counts: Sequence[int],
    loss_name: str,
    seed: int,
    config: DetectionConfig,
    *,
    on_epoch: EpochHook | None = None,
    progress: bool = False,
) -> tuple[DenseHead, DenseLoss, list[list[float]], list[float]]:
    """Train a dense head for ``len(class_counts)`` classes on the training canvases;
    returns it, its loss, the per-epoch ``g`` history (statistics losses) and the seconds
    of each epoch."""
    torch.manual_seed(seed)
    model = DenseHead(len(class_counts))
    dense = ONE_STAGE.build(loss_name, LossContext(class_counts, seed=seed))
    loss_fn = dense.module
    num_train = data.train.numel()
    steps = config.epochs * -(-num_train // config.batch_size)
    optimizer, scheduler = _optimizer(list(model.parameters()), config, steps)
    order_generator = torch.Generator().manual_seed(seed)
    points = torch.cat(data.points)
    strides = _location_strides(data)
    history: list[list[float]] = []
    epoch_seconds: list[float] = []
    epochs = epoch_iterator(config.epochs, f"{loss_name} seed {seed}", progress)
    for epoch in epochs:
        started = time.perf_counter()
        model.train()
        loss_fn.train()
        total, steps_done = 0.0, 0
        order = torch.randperm(num_train, generator=order_generator)
        for batch in torch.split(order, config.batch_size):
            cls_loss, box_loss = _dense_step(
                model,
                dense,
                data.maps(data.train[batch]),
                targets.labels[batch],
                targets.boxes[batch],
                points,
                strides,
            )
            loss = cls_loss + box_loss
            optimizer.zero_grad(set_to_none=False)
            torch.autograd.backward(loss)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            steps_done += 1
        if isinstance(loss_fn, StatisticsLoss):
            history.append([float(g) for g in loss_fn.grad_ratio])
        epoch_seconds.append(time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(epoch, total / max(steps_done, 1), loss_fn)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{total / max(steps_done, 1):.3f}")
    return model, dense, history, epoch_seconds


def run_one_stage(
    data: DetectionData,
    loss_name: str,
    seed: int,
    config: DetectionConfig,
    targets: DenseTargets,
    *,
    on_epoch: EpochHook | None = None,
    progress: bool = False,
    num_examples: int = 4,
) -> dict[str, Any]:
    """Train and evaluate one one-stage detector; returns the run's record."""
    started = time.perf_counter()
    model, dense, history, epoch_seconds = train_dense(
        data,
        targets,
        data.image_counts,
        loss_name,
        seed,
        config,
        on_epoch=on_epoch,
        progress=progress,
    )
    results = _dense_predict(model, dense.scores, data, data.test, config.batch_size)
    detections: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for canvas, boxes, scores, labels in results:
        detections += _lvis_detections(data, canvas, boxes, scores, labels)
        if len(examples) < num_examples:
            examples.append(_examples(canvas, boxes, scores, labels))
    return _record(data, loss_name, seed, detections, examples, history, started, epoch_seconds)


# ---------------------------------------------------------------------- two-stage


@dataclass
class RoICache:
    """Every canvas's RoIs and their pooled features, computed once per data set.

    ``rois`` is ``(T, 4)`` and ``features`` ``(T, D)`` float16 over all canvases;
    canvas ``n`` owns rows ``offsets[n]:offsets[n + 1]`` (its proposals, then, for a
    training canvas, its ground-truth boxes). ``recall`` is the share of test boxes that
    some proposal overlaps with IoU >= 0.5.
    """

    rois: Tensor
    features: Tensor
    offsets: Tensor
    recall: float

    def rows(self, canvas: int) -> slice:
        return slice(int(self.offsets[canvas]), int(self.offsets[canvas + 1]))


def _pool(data: DetectionData, canvas: int, rois: Tensor, pool_sizes: Sequence[int]) -> Tensor:
    """RoIAlign of ``rois`` on every level of one canvas, flattened and concatenated."""
    indexed = torch.cat([torch.zeros(rois.shape[0], 1), rois], dim=1)
    pooled = [
        roi_align(f[canvas : canvas + 1].float(), indexed, size, 1.0 / stride).flatten(1)
        for f, size, stride in zip(data.features, pool_sizes, STRIDES, strict=True)
    ]
    return torch.cat(pooled, dim=1)


def build_roi_cache(
    data: DetectionData,
    two_stage: TwoStageConfig,
    proposal_config: DetectionConfig,
    cache_dir: Any,
    *,
    progress: bool = False,
) -> RoICache:
    """Train the class-agnostic proposal network (seed 0), propose on every canvas and
    pool the RoI features; all of it cached under ``cache_dir``."""
    from ..data.features import cached_features

    key = f"{data.key}|proposals|{two_stage}|{proposal_config}"

    def propose() -> Tensor:
        targets = dense_targets(data, data.train, class_agnostic=True)
        # one class, "object", on every training canvas
        model, _, _, _ = train_dense(
            data, targets, [data.train.numel()], "focal", 0, proposal_config, progress=progress
        )
        everything = torch.arange(len(data.boxes))
        results = _dense_predict(
            model,
            torch.sigmoid,
            data,
            everything,
            proposal_config.batch_size,
            score_threshold=0.0,
            candidates_per_level=300,
            nms_iou=two_stage.proposal_nms,
            max_detections=two_stage.proposals_per_image,
        )
        rows = [
            torch.cat([torch.full((len(boxes), 1), float(canvas)), boxes], dim=1)
            for canvas, boxes, _, _ in results
        ]
        return torch.cat(rows)

    proposals = cached_features(cache_dir, key, propose)
    train = set(data.train.tolist())
    per_canvas: list[Tensor] = []
    for canvas in range(len(data.boxes)):
        mine = proposals[proposals[:, 0] == canvas, 1:]
        if canvas in train:
            # as in Faster R-CNN training, the ground truth joins the proposals
            mine = torch.cat([mine, data.boxes[canvas].float()])
        per_canvas.append(mine)
    counts = torch.tensor([0] + [len(r) for r in per_canvas])
    offsets = counts.cumsum(0)
    rois = torch.cat(per_canvas)

    def pool_all() -> Tensor:
        pooled = [
            _pool(data, canvas, per_canvas[canvas], two_stage.pool_sizes).half()
            for canvas in range(len(per_canvas))
        ]
        return torch.cat(pooled)

    features = cached_features(cache_dir, f"{key}|roi-features", pool_all)
    hit, total = 0, 0
    for canvas in data.test.tolist():
        gt = data.boxes[canvas]
        if gt.shape[0] == 0:
            continue
        proposed = per_canvas[canvas]
        if proposed.shape[0] > 0:
            hit += int((box_iou(gt.float(), proposed).max(dim=1).values >= 0.5).sum())
        total += gt.shape[0]
    return RoICache(rois, features, offsets, hit / max(total, 1))


@dataclass
class RoITargets:
    """Per cached RoI: best IoU, class label (``C`` below the foreground IoU) and box
    deltas; and the standardisation of the RoI features (training RoIs' statistics)."""

    iou: Tensor
    labels: Tensor
    deltas: Tensor
    mean: Tensor
    std: Tensor


def roi_targets(data: DetectionData, cache: RoICache, two_stage: TwoStageConfig) -> RoITargets:
    total = cache.rois.shape[0]
    iou = torch.zeros(total)
    labels = torch.full((total,), data.num_classes, dtype=torch.long)
    deltas = torch.zeros(total, 4)
    for canvas in range(len(data.boxes)):
        rows = cache.rows(canvas)
        rois = cache.rois[rows]
        best_iou, best_label, best_box = best_overlaps(
            rois, data.boxes[canvas].float(), data.labels[canvas], data.num_classes
        )
        foreground = best_iou >= two_stage.foreground_iou
        iou[rows] = best_iou
        labels[rows] = torch.where(foreground, best_label, data.num_classes)
        deltas[rows] = torch.where(foreground[:, None], encode_deltas(rois, best_box), 0.0)
    train_rows = torch.cat([torch.arange(total)[cache.rows(n)] for n in data.train.tolist()])
    train_features = cache.features[train_rows].float()
    mean = train_features.mean(0)
    std = train_features.std(0).clamp_min(1e-3)
    return RoITargets(iou, labels, deltas, mean, std)


def run_two_stage(
    data: DetectionData,
    loss_name: str,
    seed: int,
    config: DetectionConfig,
    two_stage: TwoStageConfig,
    cache: RoICache,
    targets: RoITargets,
    *,
    on_epoch: EpochHook | None = None,
    progress: bool = False,
    num_examples: int = 4,
) -> dict[str, Any]:
    """Train and evaluate the RoI head with one loss; returns the run's record."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    spec = TWO_STAGE.build(
        loss_name,
        LossContext(
            data.image_counts,
            seed=seed,
            groups=data.groups,
            num_images=data.train.numel(),
            sampled_classes=two_stage.federated_classes(data.num_classes),
        ),
    )
    head = RoIHead(cache.features.shape[1], spec.columns, prior_prob=spec.prior_prob)
    train = data.train.tolist()
    steps = config.epochs * -(-len(train) // config.batch_size)
    optimizer, scheduler = _optimizer(list(head.parameters()), config, steps)
    generator = torch.Generator().manual_seed(seed)
    history: list[list[float]] = []
    epoch_seconds: list[float] = []

    def features(rows: Tensor) -> Tensor:
        return (cache.features[rows].float() - targets.mean) / targets.std

    epochs = epoch_iterator(config.epochs, f"{loss_name} seed {seed}", progress)
    for epoch in epochs:
        epoch_started = time.perf_counter()
        head.train()
        spec.module.train()
        total, steps_done = 0.0, 0
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order), config.batch_size):
            picked = []
            for position in order[start : start + config.batch_size]:
                rows = cache.rows(train[position])
                chosen = sample_rois(
                    targets.iou[rows],
                    two_stage.rois_per_image,
                    two_stage.foreground_fraction,
                    two_stage.foreground_iou,
                    generator,
                )
                picked.append(chosen + rows.start)
            rows_t = torch.cat(picked)
            logits, deltas = head(features(rows_t))
            labels = targets.labels[rows_t]
            foreground = labels < data.num_classes
            box_loss = (deltas[foreground] - targets.deltas[rows_t][foreground]).abs().sum()
            loss = spec.loss(logits, labels) + box_loss / max(rows_t.numel(), 1)
            optimizer.zero_grad(set_to_none=False)
            torch.autograd.backward(loss)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            steps_done += 1
        if isinstance(spec.module, StatisticsLoss):
            history.append([float(g) for g in spec.module.grad_ratio])
        epoch_seconds.append(time.perf_counter() - epoch_started)
        if on_epoch is not None:
            on_epoch(epoch, total / max(steps_done, 1), spec.module)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{total / max(steps_done, 1):.3f}")

    head.eval()
    spec.module.eval()
    detections: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    with torch.no_grad():
        for canvas in data.test.tolist():
            rows = cache.rows(canvas)
            rois = cache.rois[rows]
            if rois.shape[0] == 0:
                continue
            logits, deltas = head(features(torch.arange(rows.start, rows.stop)))
            boxes = clip_boxes(decode_deltas(rois, deltas), *data.image_size)
            kept_boxes, scores, classes = roi_detections(spec.scores(logits), boxes)
            detections += _lvis_detections(data, canvas, kept_boxes, scores, classes)
            if len(examples) < num_examples:
                examples.append(_examples(canvas, kept_boxes, scores, classes))
    return _record(data, loss_name, seed, detections, examples, history, started, epoch_seconds)


# ------------------------------------------------------------------------- data


# The canvases are the same for every seed of a comparison.
DATA_SEED = 0


def _backbone_maps(images: Tensor, batch_size: int = 32) -> Tensor:
    """EfficientNet-Lite0 maps at strides 8, 16, 32 of grey canvases, flattened per canvas
    and concatenated, float16 ``(N, D)``."""
    from ..models.efficientnet_lite import load_pretrained_efficientnet_lite0, preprocess

    net = load_pretrained_efficientnet_lite0()
    chunks = []
    with torch.no_grad():
        for batch in torch.split(images, batch_size):
            x = preprocess(batch).to(memory_format=torch.channels_last)
            maps = net.forward_features(x)
            chunks.append(torch.cat([maps[s].flatten(1) for s in STRIDES], dim=1).half())
    return torch.cat(chunks)


def load_detection_data(
    omniglot_dir: Path,
    cache_dir: Path,
    *,
    preset: str = "full",
    num_train: int | None = None,
    num_test: int | None = None,
) -> DetectionData:
    """Build the canvases (seed :data:`DATA_SEED`) and their backbone maps (cached)."""
    from ..data.canvases import build_canvases
    from ..data.features import cached_features
    from ..data.omniglot import load_omniglot

    options = dict(CANVAS_PRESETS[preset])
    if num_train is not None:
        options["num_train"] = num_train
    if num_test is not None:
        options["num_test"] = num_test
    canvases = build_canvases(load_omniglot(omniglot_dir), seed=DATA_SEED, **options)
    images = torch.cat([canvases.train.images, canvases.test.images])
    archives = sorted(p.name for p in Path(omniglot_dir).glob("*.zip"))
    key = f"omniglot-det|{archives}|seed={DATA_SEED}|{sorted(options.items())}|lite0|8,16,32"
    packed = cached_features(cache_dir, key, lambda: _backbone_maps(images))
    height, width = images.shape[-2:]
    features, start = [], 0
    for channels, stride in zip(BACKBONE_CHANNELS, STRIDES, strict=True):
        h, w = -(-height // stride), -(-width // stride)
        size = channels * h * w
        features.append(packed[:, start : start + size].reshape(-1, channels, h, w))
        start += size
    num_train_canvases = len(canvases.train)
    gt = canvases.lvis("test")
    return DetectionData(
        features=features,
        boxes=[*canvases.train.boxes, *canvases.test.boxes],
        labels=[*canvases.train.labels, *canvases.test.labels],
        train=torch.arange(num_train_canvases),
        test=torch.arange(num_train_canvases, images.shape[0]),
        image_ids=[0] * num_train_canvases + [image["id"] for image in gt["images"]],
        category_ids=[c["id"] for c in gt["categories"]],
        class_names=list(canvases.class_names),
        image_counts=[int(n) for n in canvases.train_image_counts],
        groups=list(canvases.frequency),
        gt=gt,
        image_size=(int(height), int(width)),
        images=images,
        key=key,
    )


# ---------------------------------------------------------------------- comparison


def _grad_ratio_table(runs: Sequence[Record], losses: Sequence[str]) -> str:
    """Mean over seeds of the last epoch's group-mean ``g`` (r / c / f), per loss."""
    lines = ["| loss | g rare | g common | g frequent |", "|---|---|---|---|"]
    for loss in losses:
        mine = [
            r["grad_ratio_groups"][-1] for r in runs if r["loss"] == loss and r["grad_ratio_groups"]
        ]
        if not mine:
            continue
        cells = [f"{sum(m[g] for m in mine) / len(mine):.3g}" for g in GROUPS]
        lines.append(f"| `{loss}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


@dataclass
class _Prepared:
    """The canvases and what a detector trains on: FCOS targets (one-stage) or the RoI
    cache and its targets (two-stage), with facts for the results."""

    data: DetectionData
    run: Callable[[str, int], Record]
    details: dict[str, Any]


class DetectionTask:
    """``eqlosses compare --task detection`` for one detector (see
    :class:`~eqlosses_lab.tasks.runner.Task`)."""

    name = "detection"
    metrics = METRICS

    def __init__(
        self,
        detector: Detector,
        data_dir: Path,
        config: DetectionConfig,
        *,
        canvas_preset: str,
        canvas_counts: tuple[int, int] | None,
        center_radius: float,
        threads: int,
        cache_dir: Path,
        progress: bool = True,
    ) -> None:
        self.detector = detector
        self.data_dir = data_dir
        self.config = config
        self.canvas_preset = canvas_preset
        self.canvas_counts = canvas_counts
        self.center_radius = center_radius
        self.two_stage = TwoStageConfig()
        self.threads = threads
        self.cache_dir = cache_dir
        self.progress = progress
        self.baseline = (ONE_STAGE if detector == "one-stage" else TWO_STAGE).baseline
        self._prepared: _Prepared | None = None

    def settings(self) -> dict[str, Any]:
        by_detector: dict[str, Any] = (
            {"center_radius": self.center_radius}
            if self.detector == "one-stage"
            else {"two_stage": asdict(self.two_stage)}
        )
        return {
            "task": self.name,
            "detector": self.detector,
            "data_dir": str(self.data_dir.resolve()),
            "canvas_preset": self.canvas_preset,
            "canvas_counts": None if self.canvas_counts is None else list(self.canvas_counts),
            **asdict(self.config),
            **by_detector,
            "threads": self.threads,
            "world_size": 1,
            "torch_version": torch.__version__,
            "eqlosses_version": eqlosses.__version__,
        }

    def _prepare(self) -> _Prepared:
        if self._prepared is not None:
            return self._prepared
        num_train, num_test = self.canvas_counts or (None, None)
        data = load_detection_data(
            self.data_dir,
            self.cache_dir,
            preset=self.canvas_preset,
            num_train=num_train,
            num_test=num_test,
        )
        details: dict[str, Any] = {
            "canvases": {
                "preset": self.canvas_preset,
                "seed": DATA_SEED,
                "num_train": int(data.train.numel()),
                "num_test": int(data.test.numel()),
                "num_classes": data.num_classes,
                "groups": {g: data.groups.count(g) for g in GROUPS},
            }
        }
        config, progress = self.config, self.progress
        if self.detector == "one-stage":
            targets = dense_targets(data, data.train, center_radius=self.center_radius)
            positives = int((targets.labels < data.num_classes).sum())
            details["positive_location_share"] = positives / targets.labels.numel()

            def run(loss: str, seed: int) -> Record:
                return run_one_stage(data, loss, seed, config, targets, progress=progress)

        else:
            two_stage = self.two_stage
            # the proposal stage trains like the one-stage head, for its own epochs
            proposal_config = replace(
                DETECTION_CONFIG["one-stage"], epochs=two_stage.proposal_epochs
            )
            cache = build_roi_cache(
                data, two_stage, proposal_config, self.cache_dir, progress=progress
            )
            roi = roi_targets(data, cache, two_stage)
            details.update(
                {
                    "proposal_recall_at_0.5": cache.recall,
                    "rois": int(cache.rois.shape[0]),
                    "roi_feature_dim": int(cache.features.shape[1]),
                    "roi_sigmoid_prior": SIGMOID_PRIOR,
                }
            )
            print(f"proposals: recall {cache.recall:.3f} at IoU 0.5", flush=True)

            def run(loss: str, seed: int) -> Record:
                return run_two_stage(
                    data, loss, seed, config, two_stage, cache, roi, progress=progress
                )

        self._prepared = _Prepared(data, run, details)
        return self._prepared

    def prepare(self, seed: int) -> None:
        self._prepare()

    def train(self, loss: str, seed: int, record_path: Path) -> Record:
        return self._prepare().run(loss, seed)

    def reuse(self, record: Record, record_path: Path) -> Record:
        return record

    def describe(self, record: Record) -> str:
        m = record["metrics"]
        return f"AP {m['AP']:.3f} APr {m['APr']:.3f} APc {m['APc']:.3f} APf {m['APf']:.3f}"

    def write_outputs(
        self, out: Path, runs: Sequence[Record], losses: Sequence[str], seeds: Sequence[int]
    ) -> TaskOutputs:
        prepared = self._prepare()
        data = prepared.data
        report.plot_per_class(
            runs,
            losses,
            out / "per_class_ap.png",
            ylabel="test AP",
            xlabel="training images of the class",
        )
        files = ["per_class_ap.png"]
        if report.plot_grad_ratio(
            runs, out / "grad_ratio.png", size_label="training images of the class"
        ):
            files.append("grad_ratio.png")
        summary = report.summarise(runs, losses, self.metrics)
        best = max(summary, key=lambda loss: summary[loss]["AP"]["mean"])
        shown = list(dict.fromkeys([self.baseline, best]))
        panels = {
            loss: r["examples"] for loss in shown for r in runs
            if r["loss"] == loss and r["seed"] == seeds[0]
        }  # fmt: skip
        if panels:
            canvases = [e["canvas"] for e in next(iter(panels.values()))]
            report.plot_detections(
                [data.images[c].numpy() for c in canvases],
                [(data.boxes[c].tolist(), data.labels[c].tolist()) for c in canvases],
                panels,
                out / "detections.png",
            )
            files.append("detections.png")
        return TaskOutputs(
            details=prepared.details, files=files, notes=_grad_ratio_table(runs, losses)
        )
