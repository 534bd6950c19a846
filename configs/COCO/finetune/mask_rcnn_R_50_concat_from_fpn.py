"""Fine-tuning concat (FPN-cat) from detectron2's Mask R-CNN R-50 FPN 1x (recipe: *_sum_from_fpn.py).

``start_as_fpn=True`` sets each 1x1 fuse conv to ``[I | I]``, bias 0: ``Conv1x1([F, Up(P)]) = F + Up(P)``,
exactly the FPN it loads (concat's ``Up`` is nearest, as FPN's; its fuse conv has no norm here,
which the start needs). The fuse convs train at the full lr, everything loaded at a tenth of it.
"""
from .mask_rcnn_R_50_sum_from_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "concat"
model.backbone.start_as_fpn = True
train.output_dir = "./output/COCO/finetune/mask_rcnn_R_50_concat_from_fpn"
