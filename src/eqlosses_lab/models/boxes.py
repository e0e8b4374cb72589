"""Box operations for the detection comparison, in plain torch (torchvision does not import here).

Conventions: a box is ``(x1, y1, x2, y2)`` in image pixels, float, with ``x2 >= x1`` and
``y2 >= y1``; a set of boxes is a ``(K, 4)`` tensor.  Pixel ``(i, j)`` covers the square
``[j, j+1) x [i, i+1)``, so its centre is at ``(j + 0.5, i + 0.5)`` (the "aligned" convention
of RoIAlign).

Contents:

- areas and IoU: :func:`box_area`, :func:`box_iou`, :func:`generalized_box_iou` (pairwise),
  :func:`elementwise_box_iou`, :func:`elementwise_generalized_box_iou` (row by row, for
  IoU/GIoU losses and quality targets);
- regression targets: :func:`encode_ltrb` / :func:`decode_ltrb` (FCOS distances from a point
  to the four sides, over the stride) and :func:`encode_deltas` / :func:`decode_deltas`
  (Faster R-CNN centre offsets and log size ratios);
- :func:`clip_boxes`, :func:`nms`, :func:`batched_nms`, :func:`roi_align`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Largest log size ratio decode_deltas lets through: exp(4.135) = 62.5 = 1000 / 16, the
# Faster R-CNN bound that keeps one wild regression from producing an infinite box.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _check_boxes(boxes: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (K, 4), got {tuple(boxes.shape)}")


def _check_same_rows(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of rows, "
            f"got {a.shape[0]} and {b.shape[0]}"
        )


def box_area(boxes: Tensor) -> Tensor:
    """Area ``(x2 - x1) * (y2 - y1)`` of every box.

    Shape: ``(K, 4) -> (K,)``.
    """
    _check_boxes(boxes, "boxes")
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pairwise_inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection over union.

    ``IoU(A, B) = |A ∩ B| / |A ∪ B|``; a pair of empty boxes (union 0) gets IoU 0.

    Shape: ``a (Ka, 4)``, ``b (Kb, 4)`` -> ``(Ka, Kb)``.

    Example::

        >>> box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]]))
        tensor([[0.3333]])
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    inter, union = _pairwise_inter_union(a, b)
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019).

    ``GIoU = IoU - |H \\ (A ∪ B)| / |H|`` with ``H`` the smallest box enclosing ``A`` and
    ``B``; it lies in ``(-1, 1]`` and is negative for disjoint boxes.

    Shape: ``a (Ka, 4)``, ``b (Kb, 4)`` -> ``(Ka, Kb)``.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    inter, union = _pairwise_inter_union(a, b)
    tiny = torch.finfo(union.dtype).tiny
    iou = inter / union.clamp(min=tiny)
    hull_wh = torch.maximum(a[:, None, 2:], b[None, :, 2:]) - torch.minimum(
        a[:, None, :2], b[None, :, :2]
    )
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=tiny)


def _elementwise_inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter, box_area(a) + box_area(b) - inter


def elementwise_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row ``k`` of ``a`` with row ``k`` of ``b`` (for IoU losses and quality targets).

    Shape: ``a (K, 4)``, ``b (K, 4)`` -> ``(K,)``.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    _check_same_rows(a, b, "a", "b")
    inter, union = _elementwise_inter_union(a, b)
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def elementwise_generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of row ``k`` of ``a`` with row ``k`` of ``b``; a GIoU loss is ``1 - GIoU``.

    Shape: ``a (K, 4)``, ``b (K, 4)`` -> ``(K,)``.
    """
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    _check_same_rows(a, b, "a", "b")
    inter, union = _elementwise_inter_union(a, b)
    tiny = torch.finfo(union.dtype).tiny
    hull_wh = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    return inter / union.clamp(min=tiny) - (hull - union) / hull.clamp(min=tiny)


def _check_points(points: Tensor, rows: Tensor, name: str) -> None:
    if points.dim() != 2 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (P, 2), got {tuple(points.shape)}")
    _check_boxes(rows, name)
    _check_same_rows(points, rows, "points", name)


def encode_ltrb(points: Tensor, boxes: Tensor, stride: float | Tensor) -> Tensor:
    """FCOS regression targets: distances from each point to the sides of its box, over stride.

    ``(l, t, r, b) = (x - x1, y - y1, x2 - x, y2 - y) / stride``.  A point inside its box has
    four positive distances.

    Args:
        points: ``(P, 2)`` point coordinates ``(x, y)`` in pixels.
        boxes: ``(P, 4)`` the box assigned to each point.
        stride: Feature stride of each point's level: a number or a ``(P,)`` tensor.

    Shape: ``-> (P, 4)``.
    """
    _check_points(points, boxes, "boxes")
    x, y = points[:, 0], points[:, 1]
    distances = torch.stack(
        (x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y), dim=1
    )
    return distances / _stride_column(stride)


def decode_ltrb(points: Tensor, distances: Tensor, stride: float | Tensor) -> Tensor:
    """Inverse of :func:`encode_ltrb`: boxes from points and stride-normalised distances.

    ``(x1, y1, x2, y2) = (x - l·s, y - t·s, x + r·s, y + b·s)``.

    Shape: ``points (P, 2)``, ``distances (P, 4)`` -> ``(P, 4)``.
    """
    _check_points(points, distances, "distances")
    scaled = distances * _stride_column(stride)
    x, y = points[:, 0], points[:, 1]
    return torch.stack(
        (x - scaled[:, 0], y - scaled[:, 1], x + scaled[:, 2], y + scaled[:, 3]), dim=1
    )


def _stride_column(stride: float | Tensor) -> Tensor | float:
    if isinstance(stride, Tensor):
        if stride.dim() > 1:
            raise ValueError(f"stride must be a number or a (P,) tensor, got {tuple(stride.shape)}")
        return stride.reshape(-1, 1) if stride.dim() == 1 else stride
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    return float(stride)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_deltas(
    proposals: Tensor,
    gt: Tensor,
    weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
) -> Tensor:
    """Faster R-CNN regression targets of ``gt`` relative to ``proposals``.

    With centres ``(x, y)`` and sizes ``(w, h)`` and weights ``(wx, wy, ww, wh)``::

        dx = wx (x_gt - x_p) / w_p     dy = wy (y_gt - y_p) / h_p
        dw = ww log(w_gt / w_p)        dh = wh log(h_gt / h_p)

    Proposals and ground truths must have positive width and height.

    Shape: ``proposals (K, 4)``, ``gt (K, 4)`` -> ``(K, 4)``.
    """
    _check_boxes(proposals, "proposals")
    _check_boxes(gt, "gt")
    _check_same_rows(proposals, gt, "proposals", "gt")
    px, py, pw, ph = _centre_size(proposals)
    gx, gy, gw, gh = _centre_size(gt)
    wx, wy, ww, wh = weights
    return torch.stack(
        (
            wx * (gx - px) / pw,
            wy * (gy - py) / ph,
            ww * torch.log(gw / pw),
            wh * torch.log(gh / ph),
        ),
        dim=1,
    )


def decode_deltas(
    proposals: Tensor,
    deltas: Tensor,
    weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Inverse of :func:`encode_deltas`; the log size ratios are clamped at ``scale_clamp``.

    Shape: ``proposals (K, 4)``, ``deltas (K, 4)`` -> ``(K, 4)``.
    """
    _check_boxes(proposals, "proposals")
    _check_boxes(deltas, "deltas")
    _check_same_rows(proposals, deltas, "proposals", "deltas")
    px, py, pw, ph = _centre_size(proposals)
    wx, wy, ww, wh = weights
    cx = px + deltas[:, 0] / wx * pw
    cy = py + deltas[:, 1] / wy * ph
    w = pw * torch.exp((deltas[:, 2] / ww).clamp(max=scale_clamp))
    h = ph * torch.exp((deltas[:, 3] / wh).clamp(max=scale_clamp))
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=1)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clamp boxes to the image ``[0, width] x [0, height]``.

    Shape: ``(K, 4) -> (K, 4)``.
    """
    _check_boxes(boxes, "boxes")
    x = boxes[:, 0::2].clamp(min=0, max=width)
    y = boxes[:, 1::2].clamp(min=0, max=height)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Visit boxes by decreasing score; keep a box unless its IoU with an already kept box is
    greater than ``iou_threshold``.  Ties in score keep the lower index first.

    Shape: ``boxes (K, 4)``, ``scores (K,)`` -> ``(M,)`` int64 indices of the kept boxes,
    by decreasing score.
    """
    _check_boxes(boxes, "boxes")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices
    if order.numel() == 0:
        return order
    iou = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep: list[int] = []
    # The greedy pass is inherently sequential; the IoU matrix is computed once up front so
    # each step is a single vectorised row update.
    for rank in range(order.numel()):
        if suppressed[rank]:
            continue
        keep.append(rank)
        suppressed |= iou[rank] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each label separately: boxes of different labels never suppress each other.

    Each label's boxes are shifted by ``label * (max coordinate + 1)`` so boxes of different
    labels cannot overlap, then one :func:`nms` runs on all of them.

    Shape: ``boxes (K, 4)``, ``scores (K,)``, ``labels (K,)`` -> ``(M,)`` kept indices by
    decreasing score.
    """
    _check_boxes(boxes, "boxes")
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels must have shape ({boxes.shape[0]},), got {tuple(labels.shape)}")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    span = boxes.max() - torch.minimum(boxes.min(), boxes.new_zeros(())) + 1
    shifted = boxes + (labels.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """RoIAlign (He et al., 2017) with the half-pixel ("aligned") convention.

    Each RoI ``(b, x1, y1, x2, y2)`` in image pixels is mapped to feature coordinates
    ``x * spatial_scale - 0.5`` (a feature cell's centre sits at integer coordinates), split
    into ``oh x ow`` bins, and each bin gets the average of ``sampling_ratio²`` bilinear
    samples on a regular grid inside it.  Samples outside ``[-1, H] x [-1, W]`` count as 0;
    those between the border and the outermost cell centre take the border value.

    Args:
        features: ``(N, C, H, W)`` feature maps.
        rois: ``(R, 5)``: batch index, then the box in image pixels.
        output_size: ``oh`` and ``ow`` (one number for a square).
        spatial_scale: Feature cells per image pixel (``1 / stride``).
        sampling_ratio: Samples per bin along each axis (>= 1).

    Shape: ``-> (R, C, oh, ow)``.
    """
    if features.dim() != 4:
        raise ValueError(f"features must have shape (N, C, H, W), got {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[-1] != 5:
        raise ValueError(f"rois must have shape (R, 5), got {tuple(rois.shape)}")
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features.new_zeros((0, channels, oh, ow))
    batch_index = rois[:, 0].long()
    if batch_index.min() < 0 or batch_index.max() >= features.shape[0]:
        raise ValueError(f"rois batch indices must lie in [0, {features.shape[0] - 1}]")
    box = rois[:, 1:].to(features.dtype) * spatial_scale - 0.5
    bin_w = (box[:, 2] - box[:, 0]) / ow
    bin_h = (box[:, 3] - box[:, 1]) / oh
    # Sample offsets within the output grid, in bins: bin k, sample s -> k + (s + 0.5) / n.
    steps = (torch.arange(sampling_ratio, dtype=features.dtype) + 0.5) / sampling_ratio
    grid_x = (torch.arange(ow, dtype=features.dtype)[:, None] + steps[None, :]).reshape(-1)
    grid_y = (torch.arange(oh, dtype=features.dtype)[:, None] + steps[None, :]).reshape(-1)
    xs = box[:, 0:1] + grid_x[None, :] * bin_w[:, None]  # (R, ow*n)
    ys = box[:, 1:2] + grid_y[None, :] * bin_h[:, None]  # (R, oh*n)

    x_low, x_high, x_frac, x_valid = _bilinear_axis(xs, width)
    y_low, y_high, y_frac, y_valid = _bilinear_axis(ys, height)
    # fmap: (R, C, H*W); gather the four corners of every (y, x) sample.
    fmap = features[batch_index].reshape(num_rois, channels, height * width)
    sx, sy = xs.shape[1], ys.shape[1]

    def corner(y_idx: Tensor, x_idx: Tensor) -> Tensor:
        flat = (y_idx[:, :, None] * width + x_idx[:, None, :]).reshape(num_rois, 1, sy * sx)
        return fmap.gather(2, flat.expand(num_rois, channels, sy * sx)).reshape(
            num_rois, channels, sy, sx
        )

    wy = y_frac[:, None, :, None]
    wx = x_frac[:, None, None, :]
    samples = (
        corner(y_low, x_low) * (1 - wy) * (1 - wx)
        + corner(y_low, x_high) * (1 - wy) * wx
        + corner(y_high, x_low) * wy * (1 - wx)
        + corner(y_high, x_high) * wy * wx
    )
    valid = (y_valid[:, :, None] & x_valid[:, None, :]).to(features.dtype)
    samples = samples * valid[:, None]
    n = sampling_ratio
    return samples.reshape(num_rois, channels, oh, n, ow, n).mean(dim=(3, 5))


def _bilinear_axis(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Neighbouring cell indices and interpolation weight along one axis.

    Coordinates outside ``[-1, size]`` are invalid (they contribute 0); within that range
    they are clamped to ``[0, size - 1]`` so the border cell's value extends half a cell out.
    """
    valid = (coords >= -1.0) & (coords <= size)
    clamped = coords.clamp(min=0, max=size - 1)
    low = clamped.floor().long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    frac = clamped - low.to(coords.dtype)
    return low, high, frac, valid
