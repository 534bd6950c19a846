"""Fine-tuning MSCA from detectron2's Mask R-CNN R-50 FPN 1x (recipe: mask_rcnn_R_50_sum_from_fpn.py).

MSCA cannot start as FPN's sum: ``P_i = F_i + MS-Att(F_i, Up(P_{i+1}))`` and MS-Att's output already
holds its query ``F_i``, so with the DW-MLP's last linear at zero ``P_i = 2 F_i`` and the deeper
level is lost entirely (``start_as_fpn=True`` raises ValueError saying so). Every shared weight
still loads; the MSCA blocks start at their fresh (PVTv2) initialisation, with ``Up`` the paper's
bilinear (MSCA's default), and train at the full lr, everything loaded at a tenth of it. Expect
the first iterations' losses above the checkpoint's, unlike MSSA's and concat's exact start.
"""
from .mask_rcnn_R_50_sum_from_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "msca"
train.output_dir = "./output/COCO/finetune/mask_rcnn_R_50_msca_from_fpn"
