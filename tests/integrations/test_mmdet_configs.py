"""The mmdetection configs under configs/mmdet load and their heads build.

Each config is read by ``mmengine.Config.fromfile`` (which imports its
``custom_imports``); its heads are built from the config's model dict by mmdet's
``MODELS`` registry, without weights or data. The full detectors are not built: their
RoI extractors need ``mmcv.ops.RoIAlign``, which ``mmcv-lite`` lacks (conftest.py serves
``mmcv.ops`` with a test-only stand-in of placeholders so that ``mmdet.models`` imports).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mmdet")

from mmdet.registry import HOOKS, MODELS
from mmengine.config import Config, ConfigDict

from eqlosses.integrations import mmdet as eqmm

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "mmdet"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))
LVIS_V1_CLASSES = 1203

# the classification loss of each config, and the channels its head predicts per anchor
EXPECTED: dict[str, tuple[str, int]] = {
    "mask-rcnn_r50_fpn_1x_lvis-v1": ("CrossEntropyLoss", LVIS_V1_CLASSES + 1),
    "mask-rcnn_r50_fpn_sigmoid-eql_1x_lvis-v1": ("SigmoidEQL", LVIS_V1_CLASSES + 1),
    "mask-rcnn_r50_fpn_eql_1x_lvis-v1": ("EQL", LVIS_V1_CLASSES),
    "atss_r50_fpn_efl_rfs_2x_lvis-v1": ("EqualizedFocalLoss", LVIS_V1_CLASSES),
}


def test_every_config_is_checked() -> None:
    assert sorted(path.stem for path in CONFIGS) == sorted(EXPECTED)


def _lvis_annotations(path: Path) -> str:
    """An LVIS-format file with LVIS v1's number of categories, for EQL's counts."""
    categories = [
        {"id": index + 1, "name": f"c{index}", "image_count": 1 + index % 300}
        for index in range(LVIS_V1_CLASSES)
    ]
    path.write_text(json.dumps({"categories": categories, "images": [{"id": 0}] * 100_000}))
    return str(path)


def _head_configs(model: ConfigDict) -> dict[str, dict[str, Any]]:
    if model.type == "MaskRCNN":
        return {
            "rpn_head": dict(
                model.rpn_head, train_cfg=model.train_cfg.rpn, test_cfg=model.test_cfg.rpn
            ),
            "bbox_head": model.roi_head.bbox_head,
            "mask_head": model.roi_head.mask_head,
        }
    return {"bbox_head": dict(model.bbox_head, train_cfg=model.train_cfg, test_cfg=model.test_cfg)}


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_config_loads_and_its_heads_build(path: Path, tmp_path: Path) -> None:
    config = Config.fromfile(str(path))
    loss_type, channels = EXPECTED[path.stem]
    heads = _head_configs(config.model)
    loss_cfg = heads["bbox_head"]["loss_cls"]
    assert loss_cfg["type"] == loss_type
    if loss_type == "EQL":
        assert loss_cfg["ann_file"] == "data/lvis_v1/annotations/lvis_v1_train.json"
        loss_cfg["ann_file"] = _lvis_annotations(tmp_path / "lvis_v1_train.json")

    built = {name: MODELS.build(cfg) for name, cfg in heads.items()}
    bbox_head = built["bbox_head"]
    assert type(bbox_head.loss_cls).__name__ == loss_type
    assert bbox_head.num_classes == LVIS_V1_CLASSES
    if config.model.type == "MaskRCNN":
        assert bbox_head.fc_cls.out_features == channels
        assert built["mask_head"].num_classes == LVIS_V1_CLASSES
    else:
        assert bbox_head.atss_cls.out_channels == bbox_head.num_base_priors * channels

    if isinstance(bbox_head.loss_cls, eqmm.MMDetStatisticsLoss):
        assert "eqlosses.integrations.mmdet" in config.custom_imports["imports"]
        hooks = [HOOKS.build(hook) for hook in config.custom_hooks]
        assert any(isinstance(hook, eqmm.CommitStatisticsHook) for hook in hooks)
    if loss_type == "EQL":
        # rare: in fewer than 0.0011 of the 100 000 images
        expected = [(1 + index % 300) / 100_000 < 0.0011 for index in range(LVIS_V1_CLASSES)]
        assert 0 < sum(expected) < LVIS_V1_CLASSES
        assert bbox_head.loss_cls.criterion.rare.tolist() == expected
