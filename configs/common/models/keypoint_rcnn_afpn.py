"""Keypoint R-CNN with an attention FPN: the model only (docs/DESIGN.md, "Beyond the paper's two detectors").

detectron2's own ``common/models/keypoint_rcnn_fpn.py`` (its Mask R-CNN without the mask head, one class,
17 COCO keypoints, the 8-conv keypoint head on p2..p5, 1500 / 1000 RPN proposals, smooth-L1 beta 0.5) with
``FPN`` replaced by ``AttentionFPN`` on res2..res5 -> p2..p6, the pyramid of ``mask_rcnn_afpn.py``. With
``aggregation="sum"`` this is detectron2's Keypoint R-CNN exactly (tests/test_detectors.py).
"""
import afa_d2  # noqa: F401  (detectron2 compat patches before detectron2 is used)
from detectron2 import model_zoo

from .mask_rcnn_afpn import model as _mask_rcnn

model = model_zoo.get_config("common/models/keypoint_rcnn_fpn.py").model

# FPN -> AttentionFPN: the same pyramid as mask_rcnn_afpn.py (one place to change it for the R-CNN family)
model.backbone = _mask_rcnn.backbone

model.proposal_generator.nms_thresh = 0.7
model.roi_heads.box_predictor.test_topk_per_image = 100
