"""Cascade Mask R-CNN with an attention FPN: the model only (docs/DESIGN.md, "The method" and "The recipe").

The Mask R-CNN of ``mask_rcnn_afpn.py`` (same ``AttentionFPN`` backbone, RPN and mask head)
with detectron2's three-stage cascade box heads from ``common/models/cascade_rcnn.py``
(IoU 0.5 / 0.6 / 0.7). FrozenBN + ImageNet init by default, as in the paper; see
``mask_rcnn_afpn.py`` for switching to trainable norms.
"""
from detectron2 import model_zoo

from .mask_rcnn_afpn import model

model.roi_heads = model_zoo.get_config("common/models/cascade_rcnn.py").model.roi_heads

# docs/DESIGN.md, "The recipe": 100 detections per image, for every stage's predictor (the last one is used).
for _predictor in model.roi_heads.box_predictors:
    _predictor.test_topk_per_image = 100
