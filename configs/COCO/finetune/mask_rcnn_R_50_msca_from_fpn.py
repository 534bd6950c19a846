"""Fine-tuning MSCA from detectron2's Mask R-CNN R-50 FPN 1x (recipe: mask_rcnn_R_50_sum_from_fpn.py).

MSCA cannot start as FPN's sum: ``P_i = F_i + MS-Att(F_i, Up(P_{i+1}))`` holds ``F_i`` twice (MS-Att's
output contains its query) and sees the deeper level only through attention over its pooled
tokens. Every shared weight still loads; the MSCA blocks start at their fresh (PVTv2)
initialisation and train at the full lr, the rest at a tenth of it. Expect the first iterations'
losses above the FPN checkpoint's, unlike MSSA's exact start.
"""
from .mask_rcnn_R_50_sum_from_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "msca"
train.output_dir = "./output/COCO/finetune/mask_rcnn_R_50_msca_from_fpn"
