"""Table 1, row "R-50 sum-up (FPN)": Cascade Mask R-CNN, ResNet-50, COCO 2017, 12 epochs.

Paper: 41.2 box AP / 35.9 mask AP (mmdetection's baseline; detectron2's own is 42.1 / 36.4).
The other Table 1 rows import this recipe and change the aggregation operator only.
"""
from ..common.data.coco import dataloader
from ..common.models.cascade_mask_rcnn_afpn import model
from ..common.optim import AdamW as optimizer
from ..common.schedule_1x import lr_multiplier, train

model.backbone.aggregation = "sum"  # P_i = F_i + Up(P_{i+1}): detectron2's FPN exactly

# 12 ep = 175908 iters * 8 images/iter / 117266 images/ep (resolved at start-up)
train.images_per_epoch = 117266
train.output_dir = "./output/COCO/cascade_mask_rcnn_R_50_sum_1x"
