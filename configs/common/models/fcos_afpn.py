"""FCOS with an attention FPN: the model only (docs/DESIGN.md, "Beyond the paper's two detectors").

detectron2's own ``common/models/fcos.py`` (itself its RetinaNet with the FCOS head, GN in the head, score
threshold 0.2, NMS 0.6) with ``FPN`` replaced by ``AttentionFPN``: res3..res5 -> p3..p5 with the chosen
operator on every one of them, p6 / p7 from ``LastLevelP6P7`` fed from **p5** (the pyramid's own
``out_channels``), as detectron2's FCOS does (FCOS paper's improvement, arXiv:2006.09214 Sec. 2.2). With
``aggregation="sum"`` this is detectron2's FCOS exactly (tests/test_detectors.py).
"""
import afa_d2  # noqa: F401  (detectron2 compat patches before detectron2 is used)
from afa_d2.modeling import AttentionFPN
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

model = model_zoo.get_config("common/models/fcos.py").model

model.backbone = L(AttentionFPN)(
    bottom_up=model.backbone.bottom_up,
    in_features="${.bottom_up.out_features}",
    out_channels=256,
    aggregation="mssa",  # "sum" (FPN) | "concat" | "mssa" | "msca"
    attention_levels=["p3", "p4", "p5"],
    pooling="multi_scale",
    top_block=model.backbone.top_block,  # LastLevelP6P7 from p5
)
model.backbone.top_block.in_channels = "${..out_channels}"  # p5 has the pyramid's width
