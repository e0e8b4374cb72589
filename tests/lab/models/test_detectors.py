"""The detector heads, FCOS assignment, RoI sampling and post-processing, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from eqlosses_lab.models.detectors import (
    DenseHead,
    RoIHead,
    best_overlaps,
    dense_detections,
    fcos_targets,
    level_points,
    roi_detections,
    sample_rois,
)


def test_level_points_are_cell_centres():
    first, second = level_points([(2, 3), (1, 1)], [4, 16])
    assert first.tolist() == [[2, 2], [6, 2], [10, 2], [2, 6], [6, 6], [10, 6]]
    assert second.tolist() == [[8, 8]]


def test_fcos_assignment_by_hand():
    # one 4x4 level of stride 8 (centres 4, 12, 20, 28) and one 2x2 level of stride 16
    points = level_points([(4, 4), (2, 2)], [8, 16])
    ranges = [(0.0, 12.0), (12.0, math.inf)]
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
    labels, target = fcos_targets(points, [8, 16], boxes, torch.tensor([1, 0]), 2,
                                  scale_ranges=ranges, center_radius=1.5)  # fmt: skip
    fine, coarse = labels[:16].reshape(4, 4), labels[16:].reshape(2, 2)
    # small box: centre (8, 8), reach of its inside points 12 -> all four on the fine level;
    # the big box reaches more than 12 from every fine point, so it is not assigned there
    assert fine.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]]
    # big box: centre (16, 16), radius 24 on the coarse level: all four coarse points
    # (8, 8) also lies in the small box, but its reach from there is 8 < 12: only the big
    assert coarse.tolist() == [[0, 0], [0, 0]]
    assert torch.equal(target[0], boxes[0]) and torch.equal(target[16], boxes[1])
    assert torch.equal(target[2], torch.zeros(4))


def test_fcos_centre_sampling_and_smallest_box_wins():
    points = level_points([(8, 8)], [8])  # centres 4, 12, ..., 60
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 48.0, 48.0]])
    labels, _ = fcos_targets(points, [8], boxes, torch.tensor([0, 1]), 2,
                             scale_ranges=[(0.0, math.inf)], center_radius=1.0)  # fmt: skip
    grid = labels.reshape(8, 8)
    # both boxes centre at (32, 32); radius 8: points 28 and 36 on each axis
    assert (grid[3:5, 3:5] == 1).all()  # the smaller box wins the shared points
    assert int((grid != 2).sum()) == 4
    empty, empty_boxes = fcos_targets(points, [8], torch.zeros(0, 4), torch.zeros(0), 2,
                                      scale_ranges=[(0.0, 64.0)])  # fmt: skip
    assert (empty == 2).all() and empty_boxes.shape == (64, 4)


def test_dense_head_shapes_and_prior():
    torch.manual_seed(0)
    head = DenseHead(num_classes=3, in_channels=(4, 6, 8), width=16)
    maps = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)]
    with torch.no_grad():
        logits, distances = head(maps)
    assert [tuple(x.shape) for x in logits] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    assert [tuple(x.shape) for x in distances] == [(2, 4, 8, 8), (2, 4, 4, 4), (2, 4, 2, 2)]
    # the class bias starts every probability near the prior
    probability = torch.sigmoid(torch.cat([x.flatten() for x in logits]))
    assert abs(float(probability.mean()) - 0.01) < 0.005
    assert all(bool((d > 0).all()) for d in distances)
    with pytest.raises(ValueError, match=r"^maps:"):
        head(maps[:2])
    with pytest.raises(ValueError, match=r"^num_classes:"):
        DenseHead(0)


def test_roi_head_shapes():
    head = RoIHead(in_features=12, num_columns=5, hidden=8)
    logits, deltas = head(torch.randn(7, 12))
    assert logits.shape == (7, 5) and deltas.shape == (7, 4)
    with pytest.raises(ValueError, match=r"^num_columns:"):
        RoIHead(4, 0)
    assert torch.equal(head.classifier.bias, torch.zeros(5))
    prior = RoIHead(in_features=12, num_columns=5, hidden=8, prior_prob=0.01)
    torch.testing.assert_close(torch.sigmoid(prior.classifier.bias), torch.full((5,), 0.01))
    with pytest.raises(ValueError, match=r"^prior_prob:"):
        RoIHead(4, 3, prior_prob=1.0)


def test_sample_rois_respects_the_foreground_share():
    ious = torch.tensor([0.9, 0.8, 0.75, 0.6, 0.1, 0.2, 0.0, 0.3, 0.4, 0.45])
    for seed in range(5):
        picked = sample_rois(ious, 8, 0.25, 0.5, torch.Generator().manual_seed(seed))
        assert len(picked) == 8 and len(set(picked.tolist())) == 8
        assert int((ious[picked] >= 0.5).sum()) == 2
    # too few background RoIs: fewer samples, never repeats
    few = sample_rois(ious[:5], 8, 0.25, 0.5, torch.Generator().manual_seed(0))
    assert len(few) == 3 and 4 in few.tolist() and int((ious[few] >= 0.5).sum()) == 2


def test_best_overlaps():
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    iou, label, box = best_overlaps(rois, boxes, torch.tensor([4, 2]), 6)
    assert iou.tolist() == [0.5, 1.0] and label.tolist() == [4, 2]
    assert torch.equal(box, boxes)
    iou, label, box = best_overlaps(rois, torch.zeros(0, 4), torch.zeros(0), 6)
    assert iou.tolist() == [0.0, 0.0] and label.tolist() == [6, 6]


def test_dense_detections_decode_and_suppress():
    points = level_points([(2, 2)], [8])  # centres (4, 4), (12, 4), (4, 12), (12, 12)
    scores = torch.zeros(4, 2)
    scores[0, 1] = 0.9  # a box around (4, 4)
    scores[1, 1] = 0.8  # the same box, from (12, 4): suppressed
    scores[3, 0] = 0.7  # another class: kept
    scores[2, 0] = 0.01  # under the threshold
    distances = torch.tensor(
        [[0.5, 0.5, 1.0, 1.0], [1.5, 0.5, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]]
    )
    boxes, score, labels = dense_detections(
        [scores], [distances], points, [8], (16, 16), score_threshold=0.05, nms_iou=0.6
    )
    assert labels.tolist() == [1, 0]
    assert score.tolist() == pytest.approx([0.9, 0.7])
    assert boxes.tolist() == [[0.0, 0.0, 12.0, 12.0], [8.0, 8.0, 16.0, 16.0]]


def test_roi_detections_threshold_and_limit():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [1, 1, 10, 10.0]])
    scores = torch.tensor([[0.9, 0.0005], [0.2, 0.6], [0.8, 0.3]])
    kept_boxes, kept_scores, labels = roi_detections(scores, boxes, nms_iou=0.5)
    # (roi 2, class 0) overlaps (roi 0, class 0) with IoU 0.81: suppressed; 0.0005 < 0.001
    assert kept_scores.tolist() == pytest.approx([0.9, 0.6, 0.3, 0.2])
    assert labels.tolist() == [0, 1, 1, 0]
    assert torch.equal(kept_boxes[0], boxes[0])
    _, top, _ = roi_detections(scores, boxes, max_detections=2)
    assert top.tolist() == pytest.approx([0.9, 0.6])
