"""yacs builders in detectron2's ``BACKBONE_REGISTRY`` (``MODEL.BACKBONE.NAME``).

Call :func:`afa_d2.config.add_afa_config` on the config first; ``MODEL.FPN.*`` is read as
detectron2's ``build_resnet_fpn_backbone`` reads it.
"""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .attention_fpn import AttentionFPN
from .swin import SwinBottomUp

__all__ = [
    "build_resnet_attention_fpn_backbone",
    "build_retinanet_resnet_attention_fpn_backbone",
    "build_swin_attention_fpn_backbone",
]


@BACKBONE_REGISTRY.register()
def build_resnet_attention_fpn_backbone(cfg, input_shape: ShapeSpec) -> AttentionFPN:
    """detectron2 ResNet (``MODEL.RESNETS``, R-18/34/50/101) + :class:`AttentionFPN` (``MODEL.AFA``)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return AttentionFPN(cfg, input_shape, bottom_up=bottom_up)


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_attention_fpn_backbone(cfg, input_shape: ShapeSpec) -> AttentionFPN:
    """RetinaNet's pyramid: as detectron2's ``build_retinanet_resnet_fpn_backbone`` (``MODEL.FPN.IN_FEATURES``
    res3..res5, p6 / p7 by ``LastLevelP6P7`` from res5), with the aggregation of ``MODEL.AFA``."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    top_block = LastLevelP6P7(bottom_up.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS, "res5")
    return AttentionFPN(cfg, input_shape, bottom_up=bottom_up, top_block=top_block)


@BACKBONE_REGISTRY.register()
def build_swin_attention_fpn_backbone(cfg, input_shape: ShapeSpec) -> AttentionFPN:
    """timm Swin (``MODEL.SWIN``) + :class:`AttentionFPN` (``MODEL.AFA``)."""
    if input_shape.channels != 3:
        raise ValueError(
            "Swin takes 3-channel images; got input_shape.channels={}".format(input_shape.channels)
        )
    bottom_up = SwinBottomUp(
        cfg.MODEL.SWIN.NAME,
        cfg.MODEL.SWIN.OUT_FEATURES,
        drop_path_rate=cfg.MODEL.SWIN.DROP_PATH_RATE,
    )
    return AttentionFPN(cfg, input_shape, bottom_up=bottom_up)
