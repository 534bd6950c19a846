"""RetinaNet with an attention FPN: the model only (docs/DESIGN.md, "Beyond the paper's two detectors").

detectron2's own ``common/models/retinanet.py`` with ``FPN`` replaced by ``AttentionFPN``; the head,
anchors, matcher and focal loss are detectron2's. The pyramid is RetinaNet's: res3..res5 -> p3..p5 with
the chosen operator on every one of them (MS-Att pooling strides 8, 4, 2, the paper's rule of 64 / stride),
and p6 / p7 from detectron2's ``LastLevelP6P7`` fed from **res5** (2048 channels), as detectron2's
RetinaNet does. With ``aggregation="sum"`` this is detectron2's RetinaNet exactly (same weights, same
outputs; tests/test_detectors.py).
"""
import afa_d2  # noqa: F401  (detectron2 compat patches before detectron2 is used)
from afa_d2.modeling import AttentionFPN
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

model = model_zoo.get_config("common/models/retinanet.py").model

# FPN -> AttentionFPN on the same ResNet-50 bottom-up (res3..res5 -> p3..p7).
model.backbone = L(AttentionFPN)(
    bottom_up=model.backbone.bottom_up,
    in_features="${.bottom_up.out_features}",
    out_channels=256,
    aggregation="mssa",  # "sum" (FPN) | "concat" | "mssa" | "msca"
    attention_levels=["p3", "p4", "p5"],  # every level of the pyramid; p6 / p7 come from the top block
    pooling="multi_scale",
    top_block=model.backbone.top_block,  # LastLevelP6P7(2048, 256), from res5
)
