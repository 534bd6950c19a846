"""Fine-tuning MSCA from a trained sum-up shapes model (recipe: mask_rcnn_R_18_sum_from_sum.py).

MSCA cannot start as the sum (``afa_d2.modeling.aggregation.MSCA_CANNOT_START_AS_SUM``): every shared
weight loads, the MSCA blocks start at their fresh initialisation with the paper's bilinear ``Up``.
"""
from .mask_rcnn_R_18_sum_from_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "msca"
train.output_dir = "./output/shapes/finetune/mask_rcnn_R_18_msca_from_sum"
