"""Panoptic FPN with an attention FPN: the model only (docs/DESIGN.md, "Beyond the paper's two detectors").

detectron2's own ``common/models/panoptic_fpn.py`` (its Mask R-CNN plus the semantic FPN head on p2..p5,
54 stuff classes, loss weight 0.5) with ``FPN`` replaced by ``AttentionFPN`` on res2..res5 -> p2..p6, the
pyramid of ``mask_rcnn_afpn.py``: the operator on p2..p5, p6 a max-pool of p5. Both heads read the same
pyramid. With ``aggregation="sum"`` this is detectron2's Panoptic FPN exactly (tests/test_detectors.py).
"""
import afa_d2  # noqa: F401  (detectron2 compat patches before detectron2 is used)
from detectron2 import model_zoo

from .mask_rcnn_afpn import model as _mask_rcnn

model = model_zoo.get_config("common/models/panoptic_fpn.py").model

# FPN -> AttentionFPN: the same pyramid as mask_rcnn_afpn.py (one place to change it for the R-CNN family)
model.backbone = _mask_rcnn.backbone

# 100 detections per image, RPN NMS 0.7 (detectron2's defaults, stated as in mask_rcnn_afpn.py).
model.proposal_generator.nms_thresh = 0.7
model.roi_heads.box_predictor.test_topk_per_image = 100
