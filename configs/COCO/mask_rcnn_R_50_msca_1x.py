"""Table 3, row "MSCA, COCO": Mask R-CNN, ResNet-50, COCO 2017, 12 epochs.

Paper: 38.5 box AP / 35.3 mask AP at 14.8 FPS (sum-up: 38.0 / 34.4 at 16.1 FPS).
"""
from .mask_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "msca"

train.output_dir = "./output/COCO/mask_rcnn_R_50_msca_1x"
