"""Swin-T bottom-up (timm) for the attention-FPN models (paper Table 6, docs/DESIGN.md, "The recipe").

``bottom_up`` replaces ``model.backbone.bottom_up`` of ``mask_rcnn_afpn.py`` /
``cascade_mask_rcnn_afpn.py``; ``AttentionFPN`` reads channels (96/192/384/768) and strides
(4..32) from it, so nothing else changes. Swin normalises RGB input with ImageNet mean/std.
"""
import afa_d2  # noqa: F401  (detectron2 compat patches before detectron2 is used)
from afa_d2.modeling import SwinBottomUp
from detectron2.config import LazyCall as L

bottom_up = L(SwinBottomUp)(
    name="swin_tiny_patch4_window7_224",
    out_features=["res2", "res3", "res4", "res5"],
    drop_path_rate=0.2,  # Swin-T's detection recipe
)

# ImageNet RGB statistics (timm), in 0..255 pixel units as detectron2 expects.
pixel_mean = [123.675, 116.28, 103.53]
pixel_std = [58.395, 57.12, 57.375]
