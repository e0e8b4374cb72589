# Sigmoid-EQL (EQLv2): the baseline Mask R-CNN with its box head's classification loss
# replaced. The head predicts 1203 + 1 logits (the objectness column last) and scores
# sigmoid(z_c) * (1 - sigmoid(z_bg)) at test time.
_base_ = "./mask-rcnn_r50_fpn_1x_lvis-v1.py"

custom_imports = dict(imports=["eqlosses.integrations.mmdet"], allow_failed_imports=False)
# one statistics update per iteration, committed before checkpoints are written
custom_hooks = [dict(type="CommitStatisticsHook")]

model = dict(
    roi_head=dict(
        bbox_head=dict(
            loss_cls=dict(
                _delete_=True,
                type="SigmoidEQL",
                num_classes=1203,
                gamma=12.0,
                mu=0.8,
                alpha=4.0,
                loss_weight=1.0,
            )
        )
    )
)
