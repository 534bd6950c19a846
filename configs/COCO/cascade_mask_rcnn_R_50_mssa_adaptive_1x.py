"""Table 5, row "MSSA adaptive": the keys/values of MS-Att come from one adaptive average pool to 7x7 on every level.

Paper: 43.1 box AP / 38.2 mask AP at 14.1 FPS (multi-scale, the Table 1 row cascade_mask_rcnn_R_50_mssa_1x.py: 43.4 / 38.6 at 11.9 FPS).
"""
from .cascade_mask_rcnn_R_50_mssa_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.pooling = "adaptive"
model.backbone.adaptive_pool_size = 7

train.output_dir = "./output/COCO/cascade_mask_rcnn_R_50_mssa_adaptive_1x"
