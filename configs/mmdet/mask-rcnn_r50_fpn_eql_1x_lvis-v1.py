# Equalization loss v1: the baseline Mask R-CNN with the sigmoid EQL in its box head.
# Rare classes are those in fewer than 0.0011 of the training images (LVIS v1); the image
# counts are read from the training annotation file when the model is built.
_base_ = "./mask-rcnn_r50_fpn_1x_lvis-v1.py"

custom_imports = dict(imports=["eqlosses.integrations.mmdet"], allow_failed_imports=False)
custom_hooks = [dict(type="CommitStatisticsHook")]

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type="EQL",
                num_classes=1203,
                threshold=0.0011,
                ann_file="data/lvis_v1/annotations/lvis_v1_train.json",
                loss_weight=1.0,
            )
        )
    )
)
