"""Panoptic FPN R-50, COCO 2017, 12 epochs, MSSA on every pyramid level (the recipe of panoptic_fpn_R_50_sum_1x.py).

Not in the paper (docs/DESIGN.md, "Beyond the paper's two detectors").
"""
from .panoptic_fpn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"

train.output_dir = "./output/COCO/panoptic_fpn_R_50_mssa_1x"
