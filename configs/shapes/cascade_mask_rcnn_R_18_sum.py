"""Small-scale Cascade Mask R-CNN on ``shapes``, sum-up (FPN) aggregation.

detectron2's three-stage cascade box heads on the small model and recipe of
``mask_rcnn_R_18_sum.py`` (same bottom-up, pyramid, RPN, mask head, data, optimizer, schedule).
"""
from detectron2.layers import ShapeSpec

from ..common.models.cascade_mask_rcnn_afpn import model
from .mask_rcnn_R_18_sum import dataloader, lr_multiplier, optimizer, train
from .mask_rcnn_R_18_sum import model as _small

model.backbone = _small.backbone
model.proposal_generator = _small.proposal_generator
for _key in ("num_classes", "batch_size_per_image", "mask_head"):
    model.roi_heads[_key] = _small.roi_heads[_key]
for _pooler in ("box_pooler", "mask_pooler"):
    model.roi_heads[_pooler].sampling_ratio = _small.roi_heads[_pooler].sampling_ratio
for _head, _predictor in zip(model.roi_heads.box_heads, model.roi_heads.box_predictors):
    _head.input_shape = _small.roi_heads.box_head.input_shape
    _head.fc_dims = _small.roi_heads.box_head.fc_dims
    _predictor.input_shape = ShapeSpec(channels=_head.fc_dims[-1])

train.output_dir = "./output/shapes/cascade_mask_rcnn_R_18_sum"
