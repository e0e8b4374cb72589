"""mmengine's own Runner trains a small detector whose ATSSHead uses EqualizedFocalLoss.

The model is a convolution and mmdet's ATSSHead (three FPN levels, so three loss calls
per iteration); data are synthetic boxes. ``import mmdet.models`` needs ``mmcv.ops``,
which ``mmcv-lite`` lacks: conftest.py serves it with a test-only stand-in (placeholders
and a torch NMS). Three runs of 4 iterations:

* with ``CommitStatisticsHook``: one statistics update per iteration; checkpoints at
  iterations 2 and 4 (mmengine's CheckpointHook);
* resumed by mmengine from the iteration-2 checkpoint: the same statistics and
  parameters at iteration 4, bit for bit;
* without the hook: each iteration's step is committed by the next iteration's first
  call (mmengine's MessageHub gives the iteration), the last one by hand; the same
  statistics again.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mmdet")

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from eqlosses.integrations import mmdet as eqmm

C = 5
IMAGE = 64
STRIDES = (8, 16, 32)
ITERATIONS = 4
HEAD = dict(
    type="ATSSHead",
    num_classes=C,
    in_channels=8,
    stacked_convs=1,
    feat_channels=8,
    norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
    anchor_generator=dict(
        type="AnchorGenerator",
        ratios=[1.0],
        octave_base_scale=4,
        scales_per_octave=1,
        strides=list(STRIDES),
    ),
    bbox_coder=dict(
        type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]
    ),
    loss_cls=dict(type="EqualizedFocalLoss", use_sigmoid=True, num_classes=C),
    loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
    loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    train_cfg=dict(
        assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False
    ),
)


class TinyDetector(BaseModel):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bbox_head = MODELS.build(HEAD)

    def forward(
        self, inputs: list[Tensor], data_samples: list[Any] | None = None, mode: str = "loss"
    ) -> dict[str, Any]:
        features = self.stem(torch.stack(inputs))
        levels = [nn.functional.avg_pool2d(features, stride) for stride in STRIDES]
        return self.bbox_head.loss(levels, data_samples)


class Boxes(Dataset[dict[str, Any]]):
    def __len__(self) -> int:
        return 2 * ITERATIONS

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(index)
        sample = DetDataSample(metainfo=dict(img_shape=(IMAGE, IMAGE), pad_shape=(IMAGE, IMAGE)))
        corner = torch.rand(3, 2, generator=generator) * (IMAGE - 40)
        size = torch.rand(3, 2, generator=generator) * 24 + 12
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([corner, corner + size], dim=1),
            labels=torch.randint(0, C, (3,), generator=generator),
        )
        return dict(inputs=torch.rand(3, IMAGE, IMAGE, generator=generator), data_samples=sample)


def _collate(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [item[key] for item in batch] for key in ("inputs", "data_samples")}


def _train(work_dir: Path, *, hook: bool, resume_from: Path | None = None) -> nn.Module:
    torch.manual_seed(0)
    runner = Runner(
        model=TinyDetector(),
        work_dir=str(work_dir),
        experiment_name=f"eqlosses-{uuid.uuid4().hex}",
        train_dataloader=DataLoader(Boxes(), batch_size=2, collate_fn=_collate),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=ITERATIONS),
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False), logger=None
        ),
        custom_hooks=[dict(type="CommitStatisticsHook")] if hook else [],
        default_scope="mmdet",
        load_from=None if resume_from is None else str(resume_from),
        resume=resume_from is not None,
        log_level="WARNING",
    )
    runner.train()
    model: nn.Module = runner.model
    return model


def _statistics(model: nn.Module) -> dict[str, Tensor]:
    return dict(model.bbox_head.loss_cls.criterion.statistics.named_buffers())


def test_runner_steps_checkpoints_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooked = _train(tmp_path / "hooked", hook=True)
    loss_cls = hooked.bbox_head.loss_cls
    assert isinstance(loss_cls, eqmm.EqualizedFocalLoss)
    assert int(loss_cls.criterion.statistics.num_updates) == ITERATIONS
    assert loss_cls.pending_calls == 0

    # mmengine 0.10 saves its message hub's history in the checkpoint, which torch's
    # default weights-only loading refuses; the checkpoint is this test's own
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    resumed = _train(
        tmp_path / "resumed", hook=True, resume_from=tmp_path / "hooked" / "iter_2.pth"
    )
    for name, value in _statistics(hooked).items():
        assert torch.equal(_statistics(resumed)[name], value), name
    for ours, theirs in zip(hooked.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(ours, theirs)

    lazy = _train(tmp_path / "lazy", hook=False)
    lazy_loss = lazy.bbox_head.loss_cls
    assert int(lazy_loss.criterion.statistics.num_updates) == ITERATIONS - 1
    assert lazy_loss.pending_calls == len(STRIDES)
    lazy_loss.commit_statistics()
    for name, value in _statistics(hooked).items():
        assert torch.equal(_statistics(lazy)[name], value), name
