# Equalized Focal Loss on a one-stage detector: ATSS, ResNet-50 FPN, LVIS v1, 24 epochs,
# repeat-factor sampling (threshold 0.001), multi-scale training (shorter side 640-800).
# Set up after the EFL paper's improved ATSS-style baseline: two anchors per location
# (scales 6 and 8), ATSS assignment of the 18 closest anchors per level, a classifier
# bias prior of 0.001, gradient clipping at 35, one warm-up epoch. mmdet's ATSSHead
# predicts centerness where that baseline predicts IoU.
_base_ = ["./_base_/lvis-v1_instance.py", "./_base_/runtime.py"]

custom_imports = dict(imports=["eqlosses.integrations.mmdet"], allow_failed_imports=False)
# one statistics update per iteration (the head calls its loss once per FPN level),
# committed before checkpoints are written
custom_hooks = [dict(type="CommitStatisticsHook")]

num_classes = 1203

model = dict(
    type="ATSS",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    backbone=dict(
        type="ResNet",
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=True,
        style="pytorch",
        init_cfg=dict(type="Pretrained", checkpoint="torchvision://resnet50"),
    ),
    neck=dict(
        type="FPN",
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        add_extra_convs="on_output",
        num_outs=5,
    ),
    bbox_head=dict(
        type="ATSSHead",
        num_classes=num_classes,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        anchor_generator=dict(
            type="AnchorGenerator", ratios=[1.0], scales=[6, 8], strides=[8, 16, 32, 64, 128]
        ),
        bbox_coder=dict(
            type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]
        ),
        # use_sigmoid=True makes the head predict num_classes channels, no background
        loss_cls=dict(
            type="EqualizedFocalLoss",
            use_sigmoid=True,
            num_classes=num_classes,
            gamma_b=2.0,
            scale=8.0,
            alpha=0.25,
            loss_weight=1.0,
        ),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        init_cfg=dict(
            type="Normal",
            layer="Conv2d",
            std=0.01,
            override=dict(type="Normal", name="atss_cls", std=0.01, bias_prob=0.001),
        ),
    ),
    train_cfg=dict(
        assigner=dict(type="ATSSAssigner", topk=18), allowed_border=-1, pos_weight=-1, debug=False
    ),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.0001,
        nms=dict(type="nms", iou_threshold=0.5),
        max_per_img=300,
    ),
)

# boxes only, and the training images repeated by their rarest category's frequency
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="RandomChoiceResize",
        scales=[(1333, 640), (1333, 672), (1333, 704), (1333, 736), (1333, 768), (1333, 800)],
        keep_ratio=True,
    ),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type="ClassBalancedDataset",
        oversample_thr=1e-3,
        dataset=dict(
            type="LVISV1Dataset",
            data_root="data/lvis_v1/",
            ann_file="annotations/lvis_v1_train.json",
            data_prefix=dict(img=""),
            filter_cfg=dict(filter_empty_gt=True, min_size=32),
            pipeline=train_pipeline,
        ),
    )
)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric="bbox")
test_evaluator = val_evaluator

train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=24, val_interval=24)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(
        type="LinearLR",
        start_factor=0.001,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True,
    ),
    dict(type="MultiStepLR", begin=0, end=24, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2),
)
