"""Fine-tuning MSSA from a trained sum-up shapes model (recipe: mask_rcnn_R_18_sum_from_sum.py).

``start_as_fpn=True`` zeroes each MSSA block's DW-MLP last linear, so the model starts as the sum-up
model it loads, provided ``Up`` is FPN's nearest (the paper's bilinear ``Up`` would perturb the start;
configs/COCO/finetune/mask_rcnn_R_50_mssa_from_fpn.py says by how much).
"""
from .mask_rcnn_R_18_sum_from_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"
model.backbone.start_as_fpn = True
model.backbone.upsample_mode = "nearest"  # the exact start; the paper's is "bilinear"
train.output_dir = "./output/shapes/finetune/mask_rcnn_R_18_mssa_from_sum"
