"""Fine-tuning concat (FPN-cat) from a trained sum-up shapes model (recipe: mask_rcnn_R_18_sum_from_sum.py).

``start_as_fpn=True`` sets each 1x1 fuse conv to ``[I | I]``, bias 0: the model starts as the sum-up
model it loads (concat's ``Up`` is nearest, FPN's).
"""
from .mask_rcnn_R_18_sum_from_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "concat"
model.backbone.start_as_fpn = True
train.output_dir = "./output/shapes/finetune/mask_rcnn_R_18_concat_from_sum"
