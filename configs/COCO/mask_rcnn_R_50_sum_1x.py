"""Table 3, row "Sum-up, COCO": Mask R-CNN, ResNet-50, COCO 2017, 12 epochs.

Paper: 38.0 box AP / 34.4 mask AP at 16.1 FPS. The other Table 3 COCO rows import this recipe.
"""
from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_afpn import model
from ..common.optim import AdamW as optimizer
from ..common.schedule_1x import lr_multiplier, train

model.backbone.aggregation = "sum"

# 12 ep = 175908 iters * 8 images/iter / 117266 images/ep (resolved at start-up)
train.images_per_epoch = 117266
train.output_dir = "./output/COCO/mask_rcnn_R_50_sum_1x"
