"""Table 6, row "MSSA, Swin-T": Cascade Mask R-CNN, Swin-T bottom-up, MSSA, COCO, 12 epochs.

Paper: 48.8 box AP / 42.3 mask AP at 9.8 FPS (sum-up: 48.0 / 41.5).
"""
from .cascade_mask_rcnn_swin_T_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"

train.output_dir = "./output/COCO/cascade_mask_rcnn_swin_T_mssa_1x"
