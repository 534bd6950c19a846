"""Table 3, row "MSSA, COCO": Mask R-CNN, ResNet-50, COCO 2017, 12 epochs.

Paper: 38.7 box AP / 35.5 mask AP at 14.8 FPS (sum-up: 38.0 / 34.4 at 16.1 FPS).
"""
from .mask_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"

train.output_dir = "./output/COCO/mask_rcnn_R_50_mssa_1x"
