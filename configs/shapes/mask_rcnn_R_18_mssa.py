"""Small-scale Mask R-CNN on ``shapes`` with mssa aggregation (the recipe of mask_rcnn_R_18_sum.py)."""
from .mask_rcnn_R_18_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"

train.output_dir = "./output/shapes/mask_rcnn_R_18_mssa"
