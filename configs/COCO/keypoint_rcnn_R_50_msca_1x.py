"""Keypoint R-CNN R-50, COCO 2017, 12 epochs, MSCA on every pyramid level (the recipe of keypoint_rcnn_R_50_sum_1x.py).

Not in the paper (docs/DESIGN.md, "Beyond the paper's two detectors").
"""
from .keypoint_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "msca"

train.output_dir = "./output/COCO/keypoint_rcnn_R_50_msca_1x"
