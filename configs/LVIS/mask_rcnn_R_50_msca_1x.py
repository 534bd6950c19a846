"""Table 3, row "MSCA, LVIS": Mask R-CNN, ResNet-50, LVIS v1, 12 epochs.

Paper: 24.4 box AP / 24.4 mask AP at 12.3 FPS (sum-up: 22.5 / 21.7 at 14.0 FPS).
"""
from .mask_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "msca"

train.output_dir = "./output/LVIS/mask_rcnn_R_50_msca_1x"
