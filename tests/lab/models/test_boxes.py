"""Box ops against hand-computed cases and plain per-element references written here."""

from __future__ import annotations

import math

import pytest
import torch

from eqlosses_lab.models.boxes import (
    DEFAULT_SCALE_CLAMP,
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    decode_deltas,
    decode_ltrb,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    encode_deltas,
    encode_ltrb,
    generalized_box_iou,
    nms,
    roi_align,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_area_and_iou_hand_values() -> None:
    a = t([[0, 0, 2, 2], [0, 0, 1, 1]])
    b = t([[1, 0, 3, 2], [2, 2, 3, 3], [0, 0, 2, 2]])
    assert box_area(a).tolist() == [4.0, 1.0]
    # [0,0,2,2] vs [1,0,3,2]: overlap 1x2 = 2, union 4 + 4 - 2 = 6.
    # [0,0,2,2] vs [2,2,3,3]: touching corners, no overlap.
    # [0,0,1,1] vs [0,0,2,2]: inside, 1 / 4.
    expected = t([[2 / 6, 0.0, 1.0], [0.0, 0.0, 0.25]])
    torch.testing.assert_close(box_iou(a, b), expected)
    torch.testing.assert_close(elementwise_box_iou(a, b[[0, 2]]), t([[2 / 6, 0.25]])[0])


def test_generalized_iou_hand_values() -> None:
    a = t([[0, 0, 1, 1], [0, 0, 2, 2]])
    b = t([[2, 0, 3, 1], [1, 0, 3, 2]])
    # Disjoint unit squares 1 apart: IoU 0, hull 3x1 = 3, union 2 -> -(3 - 2) / 3.
    # [0,0,2,2] vs [1,0,3,2]: IoU 1/3, hull 3x2 = 6, union 6 -> 1/3.
    torch.testing.assert_close(
        elementwise_generalized_box_iou(a, b), torch.tensor([-1 / 3, 1 / 3], dtype=torch.float64)
    )
    pairwise = generalized_box_iou(a, b)
    assert pairwise.shape == (2, 2)
    torch.testing.assert_close(pairwise.diagonal(), torch.tensor([-1 / 3, 1 / 3]).double())
    # [0,0,1,1] vs [1,0,3,2]: touching, IoU 0, hull 3x2 = 6, union 1 + 4 = 5.
    assert pairwise[0, 1].item() == pytest.approx(-1 / 6)


def test_encode_ltrb_hand_value_and_round_trip() -> None:
    points = t([[5, 6]])
    boxes = t([[2, 3, 10, 14]])
    # distances (5-2, 6-3, 10-5, 14-6) = (3, 3, 5, 8), over stride 2
    torch.testing.assert_close(encode_ltrb(points, boxes, 2), t([[1.5, 1.5, 2.5, 4.0]]))
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=gen, dtype=torch.float64) * 100
    wh = torch.rand(20, 4, generator=gen, dtype=torch.float64) * 50
    rand_boxes = torch.cat((xy - wh[:, :2], xy + wh[:, 2:]), dim=1)
    strides = torch.tensor([8.0, 16.0] * 10, dtype=torch.float64)
    round_trip = decode_ltrb(xy, encode_ltrb(xy, rand_boxes, strides), strides)
    torch.testing.assert_close(round_trip, rand_boxes)


def test_encode_deltas_hand_value_and_round_trip() -> None:
    proposals = t([[0, 0, 10, 10]])
    gt = t([[2, 1, 22, 11]])
    # centres (5,5) -> (12,6), sizes (10,10) -> (20,10)
    expected = t([[10 * 7 / 10, 10 * 1 / 10, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(encode_deltas(proposals, gt), expected)
    gen = torch.Generator().manual_seed(1)
    corner = torch.rand(30, 2, generator=gen, dtype=torch.float64) * 200
    size = torch.rand(30, 2, generator=gen, dtype=torch.float64) * 80 + 1
    a = torch.cat((corner, corner + size), dim=1)
    b = a + torch.randn(30, 4, generator=gen, dtype=torch.float64).clamp(-0.4, 0.4)
    torch.testing.assert_close(decode_deltas(a, encode_deltas(a, b)), b)


def test_decode_deltas_clamps_log_size() -> None:
    proposals = t([[0, 0, 10, 10]])
    out = decode_deltas(proposals, t([[0, 0, 1e4, 0]]), weights=(1, 1, 1, 1))
    width = math.exp(DEFAULT_SCALE_CLAMP) * 10
    torch.testing.assert_close(out, t([[5 - width / 2, 0, 5 + width / 2, 10]]))
    assert torch.isfinite(out).all()


def test_clip_boxes() -> None:
    out = clip_boxes(t([[-5, 2, 40, 50], [3, -1, 7, 9]]), height=30, width=20)
    assert out.tolist() == [[0, 2, 20, 30], [3, 0, 7, 9]]


def four_boxes() -> tuple[torch.Tensor, torch.Tensor]:
    boxes = t(
        [
            [0, 0, 10, 10],  # A, 0.9
            [1, 0, 11, 10],  # B, 0.8: IoU with A = 90 / 110 = 0.818
            [20, 20, 30, 30],  # C, 0.7: far from everything
            [0, 5, 10, 10],  # D, 0.6: IoU with A = 50 / 100 = 0.5, with B 45 / 105
        ]
    )
    return boxes, torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)


def test_nms_four_boxes() -> None:
    boxes, scores = four_boxes()
    # 0.5: A suppresses B (0.818), not D (0.5 is not greater than 0.5).
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    # 0.45: D is suppressed by A too.
    assert nms(boxes, scores, 0.45).tolist() == [0, 2]
    assert nms(boxes, scores, 0.9).tolist() == [0, 1, 2, 3]
    # Order follows score, not index: B kept first now suppresses A (0.818); D vs B is
    # 45 / 105 = 0.43, so D stays.
    assert nms(boxes, torch.tensor([0.1, 0.8, 0.7, 0.6]).double(), 0.5).tolist() == [1, 2, 3]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_batched_nms_keeps_other_labels() -> None:
    boxes, scores = four_boxes()
    labels = torch.tensor([0, 1, 0, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2, 3]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]), 0.5).tolist() == [0, 2, 3]


def greedy_nms_reference(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    def iou(i: int, j: int) -> float:
        ax1, ay1, ax2, ay2 = boxes[i].tolist()
        bx1, by1, bx2, by2 = boxes[j].tolist()
        iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
        ih = max(0.0, min(ay2, by2) - max(ay1, by1))
        inter = iw * ih
        return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)

    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda k: -float(scores[k])):
        if all(iou(i, k) <= thr for k in kept):
            kept.append(i)
    return kept


def test_nms_matches_plain_greedy_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    corner = torch.rand(60, 2, generator=gen, dtype=torch.float64) * 50
    boxes = torch.cat((corner, corner + 5 + torch.rand(60, 2, generator=gen) * 20), dim=1)
    scores = torch.rand(60, generator=gen, dtype=torch.float64)
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, thr).tolist() == greedy_nms_reference(boxes, scores, thr)


def test_roi_align_linear_ramp_bin_averages() -> None:
    # On f = a + b x + c y (x, y feature-cell indices) bilinear interpolation is exact inside
    # the map, and the samples of a bin are symmetric about its centre, so each output is f
    # at the bin centre.
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    features = torch.stack((xs, 2 * ys + 3))[None].double()  # (1, 2, 8, 8)
    # Stride 2: image box (4, 2, 12, 10) -> feature (4/2 - 0.5, ...) = (1.5, 0.5, 5.5, 4.5);
    # 2x2 bins of size 2, centres x = 2.5, 4.5 and y = 1.5, 3.5.
    rois = t([[0, 4, 2, 12, 10]])
    out = roi_align(features, rois, output_size=2, spatial_scale=0.5, sampling_ratio=2)
    expected = t([[2.5, 4.5], [2.5, 4.5], [2 * 1.5 + 3, 2 * 1.5 + 3], [2 * 3.5 + 3] * 2])
    torch.testing.assert_close(out, expected.reshape(1, 2, 2, 2))


def test_roi_align_border_and_outside() -> None:
    features = t([[10, 20, 30]]).reshape(1, 1, 1, 3)
    # Whole map at scale 1: feature box (-0.5, -0.5, 2.5, 0.5), one bin, 2x2 samples at
    # x = 0.25, 1.75 (values 12.5, 27.5) and y = -0.25, 0.25 (both clamped to row 0): mean 20.
    out = roi_align(features, t([[0, 0, 0, 3, 1]]), output_size=1, spatial_scale=1.0)
    assert out.item() == pytest.approx(20.0)
    # Entirely left of x = -1: every sample counts as 0.
    assert roi_align(features, t([[0, -6, 0, -4, 1]]), 1, 1.0).item() == 0.0


def roi_align_reference(
    features: torch.Tensor, roi: list[float], oh: int, ow: int, scale: float, n: int
) -> torch.Tensor:
    _, channels, height, width = features.shape
    b, x1, y1, x2, y2 = roi
    x1, y1, x2, y2 = (v * scale - 0.5 for v in (x1, y1, x2, y2))
    fmap = features[int(b)]

    def sample(y: float, x: float) -> torch.Tensor:
        if y < -1 or y > height or x < -1 or x > width:
            return torch.zeros(channels, dtype=features.dtype)
        y, x = min(max(y, 0.0), height - 1), min(max(x, 0.0), width - 1)
        y0, x0 = math.floor(y), math.floor(x)
        y1_, x1_ = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
        fy, fx = y - y0, x - x0
        return (
            fmap[:, y0, x0] * (1 - fy) * (1 - fx)
            + fmap[:, y0, x1_] * (1 - fy) * fx
            + fmap[:, y1_, x0] * fy * (1 - fx)
            + fmap[:, y1_, x1_] * fy * fx
        )

    out = torch.zeros(channels, oh, ow, dtype=features.dtype)
    bh, bw = (y2 - y1) / oh, (x2 - x1) / ow
    for i in range(oh):
        for j in range(ow):
            acc = torch.zeros(channels, dtype=features.dtype)
            for si in range(n):
                for sj in range(n):
                    acc += sample(y1 + (i + (si + 0.5) / n) * bh, x1 + (j + (sj + 0.5) / n) * bw)
            out[:, i, j] = acc / (n * n)
    return out


def test_roi_align_matches_per_sample_loop() -> None:
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64)
    rois = t([[0, 3, 5, 20, 17], [1, -4, -2, 9, 30], [1, 10.3, 2.7, 11.1, 3.2], [0, 0, 0, 28, 24]])
    out = roi_align(features, rois, (3, 2), spatial_scale=0.25, sampling_ratio=2)
    for r in range(rois.shape[0]):
        expected = roi_align_reference(features, rois[r].tolist(), 3, 2, 0.25, 2)
        torch.testing.assert_close(out[r], expected)


def test_roi_align_empty_and_bad_input() -> None:
    features = torch.zeros(1, 4, 5, 5)
    assert roi_align(features, torch.zeros(0, 5), 7, 0.125).shape == (0, 4, 7, 7)
    with pytest.raises(ValueError, match="rois"):
        roi_align(features, torch.zeros(3, 4), 7, 0.125)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(features, torch.tensor([[1.0, 0, 0, 4, 4]]), 7, 0.125)


def test_bad_box_shape_names_argument() -> None:
    with pytest.raises(ValueError, match="boxes must have shape"):
        box_area(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="same number of rows"):
        elementwise_box_iou(torch.zeros(2, 4), torch.zeros(3, 4))
