"""Table 1, row "R-50 MSSA": Cascade Mask R-CNN, ResNet-50, COCO 2017, 12 epochs.

Paper: 43.3 box AP / 38.3 mask AP at 11.9 FPS (sum-up: 41.2 / 35.9 at 13.0).
"""
from .cascade_mask_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"  # P_i = MS-Att(F_i + Up(P_{i+1}))

train.output_dir = "./output/COCO/cascade_mask_rcnn_R_50_mssa_1x"
