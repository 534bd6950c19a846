"""Small-scale Mask R-CNN on ``shapes`` with msca aggregation (the recipe of mask_rcnn_R_18_sum.py).

The model of `python -m afa_d2.demo`.
"""
from .mask_rcnn_R_18_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "msca"

train.output_dir = "./output/shapes/mask_rcnn_R_18_msca"
