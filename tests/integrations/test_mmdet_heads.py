"""mmdetection 3's own heads trained and scored with the losses of eqlosses.integrations.mmdet.

The heads are mmdet's classes built from config dicts through mmdet's ``MODELS``
registry. ``mmcv-lite`` has no compiled ops and ``import mmdet.models`` imports
``mmcv.ops``: conftest.py installs a test-only import hook (``mmcv_ops_stand_in``) that
serves ``mmcv.ops`` with placeholders and a torch NMS, so that the heads' real loss and
prediction code runs on a CPU.

Every value is checked against the library's functional forms called on the very tensors
the head passed to its loss (recorded with a forward pre-hook), with the factors of a
reference :class:`eqlosses.GradientStatistics` that is updated once per step by hand.
A training iteration of mmengine's loop is simulated as its ``RuntimeInfoHook`` does it:
``MessageHub`` gets the iteration number before the step.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mmdet")

import torch
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox2roi
from mmengine.config import ConfigDict
from mmengine.logging import MessageHub
from mmengine.structures import InstanceData
from torch import Tensor, nn

import eqlosses
from eqlosses import GradientStatistics
from eqlosses import functional as F
from eqlosses.functional import LossOutput
from eqlosses.integrations import mmdet as eqmm

C = 5
IMAGE = 64
STRIDES = (8, 16, 32)
FEATURES = 8
IMAGE_COUNTS = [900, 40, 3, 300, 2]
NUM_IMAGES = 1000
THRESHOLD = 0.05


@pytest.fixture(autouse=True)
def message_hub() -> MessageHub:
    """A fresh MessageHub per test: the current instance is the latest created."""
    return MessageHub.get_instance(f"test-{uuid.uuid4().hex}")


# --- two-stage: Shared2FCBBoxHead ---------------------------------------------------------

RCNN_TRAIN = ConfigDict(
    assigner=dict(
        type="MaxIoUAssigner",
        pos_iou_thr=0.5,
        neg_iou_thr=0.5,
        min_pos_iou=0.5,
        match_low_quality=True,
        ignore_iof_thr=-1,
    ),
    sampler=dict(type="RandomSampler", num=48, pos_fraction=0.25, add_gt_as_proposals=True),
    pos_weight=-1,
)


def _bbox_head(loss_cls: dict[str, Any]) -> nn.Module:
    return MODELS.build(
        dict(
            type="Shared2FCBBoxHead",
            in_channels=4,
            fc_out_channels=16,
            roi_feat_size=2,
            num_classes=C,
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder",
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2],
            ),
            reg_class_agnostic=False,
            loss_cls=loss_cls,
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        )
    )


def _gt_instances(generator: torch.Generator, count: int = 4) -> InstanceData:
    corner = torch.rand(count, 2, generator=generator) * (IMAGE - 24)
    size = torch.rand(count, 2, generator=generator) * 16 + 8
    return InstanceData(
        bboxes=torch.cat([corner, corner + size], dim=1),
        labels=torch.randint(0, C, (count,), generator=generator),
    )


def _sampling_results(seed: int) -> list[Any]:
    """Two images: proposals jittered around the boxes and random ones, assigned and
    sampled by mmdet's MaxIoUAssigner and RandomSampler."""
    generator = torch.Generator().manual_seed(seed)
    assigner = TASK_UTILS.build(RCNN_TRAIN.assigner)
    sampler = TASK_UTILS.build(RCNN_TRAIN.sampler)
    results = []
    for _ in range(2):
        gt = _gt_instances(generator)
        near = gt.bboxes.repeat(4, 1) + torch.randn(16, 4, generator=generator) * 3
        corner = torch.rand(24, 2, generator=generator) * (IMAGE - 16)
        far = torch.cat([corner, corner + 12], dim=1)
        proposals = InstanceData(priors=torch.cat([near, far]).clamp(0, IMAGE))
        assigned = assigner.assign(proposals, gt)
        results.append(sampler.sample(assigned, proposals, gt))
    return results


def _two_stage_reference(name: str) -> Callable[[Tensor, Tensor, Tensor], LossOutput]:
    """The library call for each loss, on a freshly initialised state (sum over rows)."""
    if name == "SigmoidEQL":
        pos_weight, neg_weight = F.sigmoid_eql_factors(torch.full((C,), 100.0))
        return lambda z, y, w: F.sigmoid_eql(
            z, y, pos_weight, neg_weight, objectness=True, weight=w, reduction="sum"
        )
    if name == "EQL":
        rare = torch.tensor(IMAGE_COUNTS) / NUM_IMAGES < THRESHOLD
        return lambda z, y, w: F.eql_sigmoid(z, y, rare, weight=w, reduction="sum")
    adjustment = F.softmax_eql_adjustment(torch.zeros(C + 1))
    return lambda z, y, w: F.softmax_eql(z, y, adjustment, weight=w, reduction="sum")


TWO_STAGE = {
    "SigmoidEQL": (dict(type="SigmoidEQL", num_classes=C), C + 1),
    "EQL": (
        dict(
            type="EQL",
            num_classes=C,
            threshold=THRESHOLD,
            image_counts=IMAGE_COUNTS,
            num_images=NUM_IMAGES,
        ),
        C,
    ),
    "SoftmaxEQL": (dict(type="SoftmaxEQL", num_classes=C), C + 1),
}


def _percent(correct: Tensor) -> float:
    return 100.0 * float(correct.float().mean()) if correct.numel() else 0.0


@pytest.mark.parametrize("name", sorted(TWO_STAGE))
def test_bbox_head_loss_accuracy_and_statistics_equal_the_library(name: str) -> None:
    loss_cfg, channels = TWO_STAGE[name]
    torch.manual_seed(0)
    head = _bbox_head(loss_cfg)
    assert isinstance(head.loss_cls, getattr(eqmm, name))
    assert head.fc_cls.out_features == channels

    results = _sampling_results(seed=1)
    rois = bbox2roi([result.priors for result in results])
    cls_score, bbox_pred = head(torch.randn(len(rois), 4, 2, 2))
    out = head.loss_and_target(cls_score, bbox_pred, rois, results, RCNN_TRAIN)
    losses = out["loss_bbox"]
    labels, label_weights = out["bbox_targets"][:2]
    assert bool((labels == C).any()) and bool((labels < C).any())

    logits = cls_score.detach().clone().requires_grad_(True)
    expected = _two_stage_reference(name)(logits, labels, label_weights)
    # mmdet's avg_factor is the number of rows with a positive weight
    avg_factor = float((label_weights > 0).sum())
    expected_loss = expected.loss / avg_factor
    torch.testing.assert_close(losses["loss_cls"], expected_loss, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(losses["loss_cls"], cls_score, retain_graph=True)
    (expected_grad,) = torch.autograd.grad(expected_loss, logits)
    torch.testing.assert_close(grad, expected_grad)

    foreground = labels < C
    if name == "SigmoidEQL":
        is_background = torch.sigmoid(logits[:, -1]) > 0.5
        assert float(losses["acc_objectness"]) == pytest.approx(
            _percent(is_background == ~foreground)
        )
    if name == "SoftmaxEQL":  # mmdet's own accuracy over the C + 1 classes
        assert float(losses["acc"]) == pytest.approx(_percent(logits.argmax(1) == labels))
    else:
        top = logits[foreground, :C].argmax(1)
        assert float(losses["acc_classes"]) == pytest.approx(_percent(top == labels[foreground]))

    # one update with the call's increments; Softmax-EQL's are over the avg_factor
    statistics = head.loss_cls.criterion.statistics
    reference = GradientStatistics(statistics.num_classes, statistics.initial_ratio)
    reference.update(
        expected.pos_increment,
        expected.neg_increment,
        avg_factor if name == "SoftmaxEQL" else None,
        num_samples=expected.num_samples,
        loss=expected.loss,
    )
    assert head.loss_cls.pending_calls == 1
    assert int(statistics.num_updates) == 0
    assert bool(head.loss_cls.commit_statistics())
    assert torch.equal(statistics.pos_grad, reference.pos_grad)
    assert torch.equal(statistics.neg_grad, reference.neg_grad)
    assert int(statistics.num_updates) == 1


def test_bbox_head_scores_sigmoid_eql_with_its_objectness() -> None:
    """predict_by_feat scores σ(z_c)(1 - σ(z_bg)), not mmdet's default softmax."""
    torch.manual_seed(0)
    head = _bbox_head(dict(type="SigmoidEQL", num_classes=C)).eval()
    rois = bbox2roi([result.priors for result in _sampling_results(seed=2)[:1]])
    with torch.no_grad():
        cls_score, bbox_pred = head(torch.randn(len(rois), 4, 2, 2))
    prob = torch.sigmoid(cls_score)
    class_scores = prob[:, :C] * (1.0 - prob[:, C:])
    meta = dict(img_shape=(IMAGE, IMAGE), scale_factor=(1.0, 1.0))

    (raw,) = head.predict_by_feat((rois,), (cls_score,), (bbox_pred,), [meta])
    torch.testing.assert_close(raw.scores, torch.cat([class_scores, prob[:, C:]], dim=1))

    # NMS that suppresses nothing (IoU > 1 never holds): every (RoI, class) score comes out
    test_cfg = ConfigDict(score_thr=0.0, nms=dict(type="nms", iou_threshold=1.0), max_per_img=0)
    (detections,) = head.predict_by_feat(
        (rois,), (cls_score,), (bbox_pred,), [meta], rcnn_test_cfg=test_cfg
    )
    assert detections.scores.numel() == class_scores.numel()
    torch.testing.assert_close(
        detections.scores.sort(descending=True).values,
        class_scores.flatten().sort(descending=True).values,
    )


# --- dense heads: one call per FPN level ------------------------------------------------

GROUP_NORM = dict(type="GN", num_groups=4, requires_grad=True)
ANCHORS = dict(
    type="AnchorGenerator",
    ratios=[1.0],
    octave_base_scale=4,
    scales_per_octave=1,
    strides=list(STRIDES),
)
DELTAS = dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2])
ATSS_TRAIN = dict(
    assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False
)
EFL = dict(type="EqualizedFocalLoss", use_sigmoid=True, num_classes=C)
CENTERNESS = dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
COMMON = dict(num_classes=C, in_channels=FEATURES, stacked_convs=1, feat_channels=FEATURES)


@dataclass(frozen=True)
class DenseCase:
    head: dict[str, Any]
    calls_per_step: int


DENSE = {
    "ATSSHead": DenseCase(
        dict(
            type="ATSSHead",
            **COMMON,
            norm_cfg=GROUP_NORM,
            anchor_generator=ANCHORS,
            bbox_coder=DELTAS,
            loss_cls=EFL,
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            loss_centerness=CENTERNESS,
            train_cfg=ATSS_TRAIN,
        ),
        calls_per_step=len(STRIDES),
    ),
    "RetinaHead": DenseCase(
        dict(
            type="RetinaHead",
            **COMMON,
            anchor_generator=ANCHORS,
            bbox_coder=DELTAS,
            loss_cls=dict(EFL, loss_weight=2.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
            train_cfg=dict(
                assigner=dict(
                    type="MaxIoUAssigner",
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.4,
                    min_pos_iou=0,
                    ignore_iof_thr=-1,
                ),
                sampler=dict(type="PseudoSampler"),
                allowed_border=-1,
                pos_weight=-1,
                debug=False,
            ),
        ),
        calls_per_step=len(STRIDES),
    ),
    "GFLHead": DenseCase(
        dict(
            type="GFLHead",
            **COMMON,
            norm_cfg=GROUP_NORM,
            anchor_generator=ANCHORS,
            loss_cls=dict(type="EqualizedQualityFocalLoss", use_sigmoid=True, num_classes=C),
            loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            train_cfg=ATSS_TRAIN,
        ),
        calls_per_step=len(STRIDES),
    ),
    "FCOSHead": DenseCase(
        dict(
            type="FCOSHead",
            **COMMON,
            strides=list(STRIDES),
            regress_ranges=((-1, 16), (16, 32), (32, 1e8)),
            norm_cfg=GROUP_NORM,
            loss_cls=EFL,
            loss_bbox=dict(type="IoULoss", loss_weight=1.0),
            loss_centerness=CENTERNESS,
        ),
        calls_per_step=1,  # every level flattened into one call, avg_factor a tensor
    ),
}


@dataclass
class Call:
    """One call of the loss: what the head passed and what the loss returned."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    loss: Tensor


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_detached(item) for item in value)
    return value


def _record_calls(loss_cls: nn.Module) -> list[Call]:
    calls: list[Call] = []

    def hook(module: nn.Module, args: Any, kwargs: Any, output: Tensor) -> None:
        kwargs = {key: _detached(value) for key, value in kwargs.items()}
        calls.append(Call(_detached(args), kwargs, output.detach().clone()))

    loss_cls.register_forward_hook(hook, with_kwargs=True)
    return calls


def _reference_output(call: Call, statistics: GradientStatistics) -> LossOutput:
    """The library's functional loss on the call's tensors, with the reference factors."""
    focusing, weighting = F.equalized_focal_factors(statistics.grad_ratio)
    cls_score, target = call.args[:2]
    weight = call.args[2] if len(call.args) > 2 else call.kwargs.get("weight")
    avg_factor = call.kwargs["avg_factor"]
    if isinstance(avg_factor, Tensor):
        normaliser: Tensor | float = avg_factor.clamp_min(1.0)
    else:
        normaliser = max(float(avg_factor), 1.0)
    if isinstance(target, tuple):
        labels, score = target
        return F.equalized_quality_focal_loss(
            cls_score, labels, score, focusing, weighting, avg_factor=normaliser, weight=weight
        )
    return F.equalized_focal_loss(
        cls_score, target, focusing, weighting, avg_factor=normaliser, weight=weight
    )


def _dense_batch(step: int) -> tuple[list[Tensor], list[InstanceData], list[dict[str, Any]]]:
    generator = torch.Generator().manual_seed(100 + step)
    features = [
        torch.randn(2, FEATURES, IMAGE // stride, IMAGE // stride, generator=generator)
        for stride in STRIDES
    ]
    gts = []
    for _ in range(2):
        corner = torch.rand(3, 2, generator=generator) * (IMAGE - 40)
        size = torch.rand(3, 2, generator=generator) * 24 + 12
        gts.append(
            InstanceData(
                bboxes=torch.cat([corner, corner + size], dim=1),
                labels=torch.randint(0, C, (3,), generator=generator),
            )
        )
    metas = [dict(img_shape=(IMAGE, IMAGE), pad_shape=(IMAGE, IMAGE))] * 2
    return features, gts, metas


def _train_steps(
    head: nn.Module, steps: range, message_hub: MessageHub, on_step_end: Callable[[], None]
) -> None:
    """mmengine's train loop in small: the iteration in MessageHub, loss, backward, step."""
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05)
    for step in steps:
        message_hub.update_info("iter", step)
        features, gts, metas = _dense_batch(step)
        losses = head.loss_by_feat(*head(features), gts, metas)
        total = sum(sum(value) if isinstance(value, list) else value for value in losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        on_step_end()


def _count_updates(statistics: GradientStatistics, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    updates: list[int] = []
    update = statistics.update

    def counted(*args: Any, **kwargs: Any) -> Tensor:
        updates.append(int(statistics.num_updates))
        return update(*args, **kwargs)

    monkeypatch.setattr(statistics, "update", counted)
    return updates


STEPS = 3


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_head_updates_its_statistics_once_per_step(
    name: str, message_hub: MessageHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = DENSE[name]
    torch.manual_seed(0)
    head = MODELS.build(case.head)
    loss_cls = head.loss_cls
    assert head.cls_out_channels == C  # use_sigmoid=True read from the config
    statistics = loss_cls.criterion.statistics
    calls = _record_calls(loss_cls)
    updates = _count_updates(statistics, monkeypatch)
    seen: list[tuple[int, int]] = []
    _train_steps(
        head,
        range(STEPS),
        message_hub,
        lambda: seen.append((loss_cls.pending_calls, int(statistics.num_updates))),
    )
    # each step's calls wait in the pending step, which the next step's first call commits
    assert seen == [(case.calls_per_step, step) for step in range(STEPS)]
    loss_cls.commit_statistics()
    assert len(updates) == STEPS and int(statistics.num_updates) == STEPS

    # the same steps through the library: every call of a step with the factors of the
    # statistics before the step, then one update with the step's summed increments
    reference = GradientStatistics(C, initial_ratio=1.0)
    loss_weight = loss_cls.criterion.loss_weight
    for step in range(STEPS):
        step_calls = calls[step * case.calls_per_step : (step + 1) * case.calls_per_step]
        outputs = [_reference_output(call, reference) for call in step_calls]
        for call, output in zip(step_calls, outputs, strict=True):
            torch.testing.assert_close(call.loss, output.loss * loss_weight, rtol=0, atol=0)
        pos = torch.zeros(C, dtype=torch.float64)
        neg = torch.zeros(C, dtype=torch.float64)
        for output in outputs:
            pos = pos + output.pos_increment.double() * loss_weight
            neg = neg + output.neg_increment.double() * loss_weight
        reference.update(
            pos,
            neg,
            outputs[0].normaliser,
            num_samples=sum(output.num_samples for output in outputs),
            loss=sum(output.loss.double() for output in outputs),
        )
    assert torch.equal(statistics.pos_grad, reference.pos_grad)
    assert torch.equal(statistics.neg_grad, reference.neg_grad)
    assert bool((reference.grad_ratio != 1.0).any())  # the statistics moved the factors


def test_one_update_per_step_equals_one_call_on_the_whole_step(message_hub: MessageHub) -> None:
    """The per-level calls of a step add what one library call on all levels adds."""
    torch.manual_seed(0)
    head = MODELS.build(DENSE["ATSSHead"].head)
    calls = _record_calls(head.loss_cls)
    _train_steps(head, range(STEPS), message_hub, lambda: None)
    head.loss_cls.commit_statistics()

    whole = eqlosses.EqualizedFocalLoss(C)
    for step in range(STEPS):
        step_calls = calls[step * len(STRIDES) : (step + 1) * len(STRIDES)]
        whole(
            torch.cat([call.args[0] for call in step_calls]),
            torch.cat([call.args[1] for call in step_calls]),
            torch.cat([call.args[2] for call in step_calls]),
            avg_factor=step_calls[0].kwargs["avg_factor"],
        )
    statistics = head.loss_cls.criterion.statistics
    torch.testing.assert_close(statistics.pos_grad, whole.pos_grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(statistics.neg_grad, whole.neg_grad, rtol=1e-6, atol=0)
    assert int(statistics.num_updates) == int(whole.statistics.num_updates) == STEPS


def test_calls_with_different_normalisers_add_what_separate_updates_would() -> None:
    """Each call's increments are moved to the step's normaliser (the first call's); an
    ``avg_factor`` is the divisor as given (below 1 too), as in the library."""
    generator = torch.Generator().manual_seed(3)
    adapter = eqmm.EqualizedFocalLoss(C, loss_weight=1.5)
    separate = GradientStatistics(C, initial_ratio=1.0)
    focusing, weighting = F.equalized_focal_factors(separate.grad_ratio)
    for rows, factor in ((12, 2.0), (20, 5.0), (7, 0.5)):
        logits = torch.randn(rows, C, generator=generator)
        labels = torch.randint(0, C + 1, (rows,), generator=generator)
        adapter(logits.clone().requires_grad_(True), labels, avg_factor=factor)
        output = F.equalized_focal_loss(logits, labels, focusing, weighting, avg_factor=factor)
        separate.update(
            output.pos_increment * 1.5,
            output.neg_increment * 1.5,
            output.normaliser,
            num_samples=output.num_samples,
            normaliser_floor=0.0,
        )
    adapter.commit_statistics()
    statistics = adapter.criterion.statistics
    torch.testing.assert_close(statistics.pos_grad, separate.pos_grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(statistics.neg_grad, separate.neg_grad, rtol=1e-12, atol=0)
    assert int(statistics.num_updates) == 1 and int(separate.num_updates) == 3


def _state_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def test_checkpoint_mid_step_resumes_exactly(message_hub: MessageHub) -> None:
    """Saved with a step pending, loaded into a fresh head: the rest of the run is the
    uninterrupted run's, bit for bit."""
    torch.manual_seed(0)
    head = MODELS.build(DENSE["ATSSHead"].head)
    _train_steps(head, range(2), message_hub, lambda: None)
    assert head.loss_cls.pending_calls == len(STRIDES)
    assert int(head.loss_cls.criterion.statistics.num_updates) == 1
    saved = _state_bytes(head)
    state = torch.load(io.BytesIO(saved))
    assert "loss_cls._extra_state" in state
    # the pending step is no buffer, so DistributedDataParallel never broadcasts it
    assert not any("_extra_state" in name for name, _ in head.named_buffers())

    torch.manual_seed(1)
    resumed = MODELS.build(DENSE["ATSSHead"].head)
    resumed.load_state_dict(torch.load(io.BytesIO(saved)))
    assert resumed.loss_cls.pending_calls == len(STRIDES)

    for model in (head, resumed):
        _train_steps(model, range(2, 4), message_hub, lambda: None)
        model.loss_cls.commit_statistics()
    for name in ("pos_grad", "neg_grad", "num_updates"):
        assert torch.equal(
            getattr(head.loss_cls.criterion.statistics, name),
            getattr(resumed.loss_cls.criterion.statistics, name),
        )
    assert int(resumed.loss_cls.criterion.statistics.num_updates) == 4
    for ours, theirs in zip(head.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_no_increments_outside_training_steps() -> None:
    criterion = eqmm.EqualizedFocalLoss(C)
    logits, labels = torch.randn(8, C), torch.tensor([0, 5, 5, 2, 5, 1, 5, 5])
    with torch.no_grad():
        criterion(logits, labels)
    criterion.eval()
    criterion(logits.requires_grad_(True), labels)
    frozen = eqmm.EqualizedFocalLoss(C, update_statistics=False)
    frozen(logits, labels)
    assert criterion.pending_calls == frozen.pending_calls == 0
    criterion.train()
    criterion(logits, labels)
    assert criterion.pending_calls == 1


def test_commit_of_an_empty_step_changes_nothing() -> None:
    criterion = eqmm.SigmoidEQL(C)
    assert not bool(criterion.commit_statistics())
    statistics = criterion.criterion.statistics
    assert int(statistics.num_updates) == 0
    assert not bool(statistics.pos_grad.any()) and not bool(statistics.neg_grad.any())


def test_eql_counts_images_from_an_lvis_annotation_file(tmp_path: Path) -> None:
    # ids out of order in the file; the counts follow the ids (mmdet's label order)
    categories = [
        {"id": 10 + index, "name": f"c{index}", "image_count": count}
        for index, count in enumerate(IMAGE_COUNTS)
    ]
    path = tmp_path / "lvis_train.json"
    path.write_text(
        json.dumps(
            {
                "categories": categories[::-1],
                "images": [{"id": i} for i in range(NUM_IMAGES)],
                "annotations": [],
            }
        )
    )
    criterion = eqmm.EQL(C, THRESHOLD, ann_file=str(path))
    expected = [count / NUM_IMAGES < THRESHOLD for count in IMAGE_COUNTS]
    assert criterion.criterion.rare.tolist() == expected


ERRORS: dict[str, tuple[Callable[[], Any], str]] = {
    "efl_use_sigmoid": (lambda: eqmm.EqualizedFocalLoss(C, use_sigmoid=False), "use_sigmoid"),
    "softmax_use_sigmoid": (lambda: eqmm.SoftmaxEQL(C, use_sigmoid=True), "use_sigmoid"),
    "efl_background_column": (
        lambda: eqmm.EqualizedFocalLoss(C)(torch.randn(4, C + 1), torch.zeros(4, dtype=torch.long)),
        "use_sigmoid=True",
    ),
    "reduction_override": (
        lambda: eqmm.SigmoidEQL(C)(
            torch.randn(4, C + 1), torch.zeros(4, dtype=torch.long), reduction_override="avg"
        ),
        "reduction_override",
    ),
    "avg_factor_with_sum": (
        lambda: eqmm.SigmoidEQL(C, reduction="sum")(
            torch.randn(4, C + 1), torch.zeros(4, dtype=torch.long), avg_factor=4.0
        ),
        "avg_factor",
    ),
    "eqfl_target": (
        lambda: eqmm.EqualizedQualityFocalLoss(C)(
            torch.randn(4, C), torch.zeros(4, dtype=torch.long)
        ),
        "target",
    ),
    "head_classes": (lambda: eqmm.SigmoidEQL(C).get_cls_channels(C + 1), "num_classes"),
    "eql_both_sources": (
        lambda: eqmm.EQL(C, THRESHOLD, ann_file="x.json", image_counts=IMAGE_COUNTS),
        "ann_file",
    ),
    "eql_no_source": (lambda: eqmm.EQL(C, THRESHOLD, image_counts=IMAGE_COUNTS), "num_images"),
    "eql_count_length": (
        lambda: eqmm.EQL(C + 1, THRESHOLD, image_counts=IMAGE_COUNTS, num_images=NUM_IMAGES),
        "image_counts",
    ),
    "extra_state_keys": (lambda: eqmm.SigmoidEQL(C).set_extra_state({"calls": 0}), "state_dict"),
    "extra_state_shape": (
        lambda: eqmm.SigmoidEQL(C).set_extra_state(
            dict(eqmm.EqualizedFocalLoss(C + 1).get_extra_state())
        ),
        "state_dict",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_raises_a_value_error_naming_the_argument(case: str) -> None:
    build, message = ERRORS[case]
    with pytest.raises(ValueError, match=message):
        build()


def test_a_raising_call_records_nothing() -> None:
    criterion = eqmm.EqualizedFocalLoss(C)
    with pytest.raises(ValueError):
        criterion(torch.randn(4, C), torch.full((4,), C + 3))
    assert criterion.pending_calls == 0
