"""Small-scale Cascade Mask R-CNN on ``shapes`` with mssa aggregation (recipe of cascade_mask_rcnn_R_18_sum.py)."""
from .cascade_mask_rcnn_R_18_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"

train.output_dir = "./output/shapes/cascade_mask_rcnn_R_18_mssa"
