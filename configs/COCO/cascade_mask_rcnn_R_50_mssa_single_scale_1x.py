"""Table 5, row "MSSA single-scale": the keys/values of MS-Att come from one average pool of stride r_i = (16, 8, 4, 2) for p2..p5.

Paper: 43.2 box AP / 38.1 mask AP at 13.0 FPS (multi-scale, the Table 1 row cascade_mask_rcnn_R_50_mssa_1x.py: 43.4 / 38.6 at 11.9 FPS).
"""
from .cascade_mask_rcnn_R_50_mssa_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.pooling = "single_scale"

train.output_dir = "./output/COCO/cascade_mask_rcnn_R_50_mssa_single_scale_1x"
