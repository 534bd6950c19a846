"""Table 1, row "R-50 concat (FPN-cat)": Cascade Mask R-CNN, ResNet-50, COCO 2017, 12 epochs.

Paper: 40.9 box AP / 35.8 mask AP at 12.8 FPS (sum-up: 41.2 / 35.9 at 13.0).
"""
from .cascade_mask_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "concat"  # P_i = Conv1x1([F_i, Up(P_{i+1})])

train.output_dir = "./output/COCO/cascade_mask_rcnn_R_50_concat_1x"
