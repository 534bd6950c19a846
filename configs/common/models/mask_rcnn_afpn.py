"""Mask R-CNN with an attention FPN: the model only (docs/DESIGN.md, "The method" and "The recipe").

detectron2's own ``common/models/mask_rcnn_fpn.py`` with ``FPN`` replaced by
``AttentionFPN``; everything else (RPN anchors, RoI heads) is detectron2's. The recipe files
under ``configs/COCO``, ``configs/LVIS`` and ``configs/shapes`` import ``model`` from here
and change a few names.

Paper recipe, kept as the default: ResNet-50 bottom-up with FrozenBN, initialised from
ImageNet weights (``train.init_checkpoint`` in ``configs/common/schedule_1x.py``).
From scratch (no ImageNet weights) FrozenBN at random init explodes (docs/DESIGN.md, "The recipe"); switch the
bottom-up to trainable norms instead, e.g. on the command line::

    model.backbone.bottom_up.stem.norm=GN model.backbone.bottom_up.stages.norm=GN train.init_checkpoint=""

(``"SyncBN"`` on 8 GPUs, ``"BN"`` with a large enough batch per GPU; see configs/shapes/.)
"""
import afa_d2  # noqa: F401  (detectron2 compat patches before detectron2 is used)
from afa_d2.modeling import AttentionFPN
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

# FPN -> AttentionFPN on the same ResNet-50 bottom-up (res2..res5 -> p2..p6).
model.backbone = L(AttentionFPN)(
    bottom_up=model.backbone.bottom_up,
    in_features="${.bottom_up.out_features}",
    out_channels=256,
    aggregation="mssa",  # "sum" (FPN) | "concat" (FPN-cat) | "mssa" | "msca"
    attention_levels=["p2", "p3", "p4", "p5"],  # Table 4: the levels using `aggregation`
    pooling="multi_scale",  # Table 5: "multi_scale" | "single_scale" | "adaptive"
    top_block=L(LastLevelMaxPool)(),  # p6 = max-pool of p5, as in detectron2
)

# docs/DESIGN.md, "The recipe": RPN NMS 0.7 and 100 detections per image (detectron2's defaults, stated here).
model.proposal_generator.nms_thresh = 0.7
model.roi_heads.box_predictor.test_topk_per_image = 100
