"""Fine-tuning MSSA from detectron2's Mask R-CNN R-50 FPN 1x (recipe: mask_rcnn_R_50_sum_from_fpn.py).

``start_as_fpn=True`` zeroes each MSSA block's DW-MLP last linear, so ``MS-Att(R_i) = R_i`` and the
model starts as the FPN it was converted from; ``Up`` is nearest here (FPN's), which makes that
start exact (same detections as the checkpoint before the first step). The paper's bilinear ``Up``
would start from a slightly different pyramid (configs/README.md gives the measured difference);
set ``model.backbone.upsample_mode=bilinear`` for the paper's operator.
"""
from .mask_rcnn_R_50_sum_from_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"
model.backbone.start_as_fpn = True
model.backbone.upsample_mode = "nearest"
train.output_dir = "./output/COCO/finetune/mask_rcnn_R_50_mssa_from_fpn"
