"""Fine-tuning MSSA from detectron2's Mask R-CNN R-50 FPN 1x (recipe: mask_rcnn_R_50_sum_from_fpn.py).

``start_as_fpn=True`` zeroes each MSSA block's DW-MLP last linear (``fc2``), so ``MS-Att(R_i) = R_i``
and ``P_i = F_i + Up(P_{i+1})``: the model starts as the FPN it loads (detectron2's checkpoint has
no ``fpn_aggregation`` keys, so the zeros survive the load). The MSSA blocks train at the full lr,
everything loaded at a tenth of it.

``Up`` is nearest here, FPN's, not the paper's bilinear: only then is the start exactly the
checkpoint's detector (same detections before the first step, ``tests/test_convert.py``), so
fine-tuning starts from the checkpoint's accuracy, not from a perturbed model. With bilinear ``Up`` the
start sums a bilinear upsampling FPN's weights were never trained on: on the small random
detector of ``tests/test_convert.py`` the pyramid then differs by up to 31% of its largest value
on p2 (p5, p6 unchanged) and 95 of 158 detections lose their match (the numbers in
docs/DESIGN.md, "Converters and ``start_as_fpn``"); configs/README.md reports a trained shapes-zoo checkpoint at
13.61 box AP with nearest, 13.57 with bilinear. For the paper's operator, add
``model.backbone.upsample_mode=bilinear`` (then the start is close to FPN, not equal).
"""
from .mask_rcnn_R_50_sum_from_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"
model.backbone.start_as_fpn = True
model.backbone.upsample_mode = "nearest"  # the exact FPN start; the paper's is "bilinear" (see above)
train.output_dir = "./output/COCO/finetune/mask_rcnn_R_50_mssa_from_fpn"
