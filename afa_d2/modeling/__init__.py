"""The model part of afa_d2: MS-Att, the aggregation operators, AttentionFPN, bottom-ups.

Importing it registers the yacs builders in detectron2's ``BACKBONE_REGISTRY``.
"""
from .aggregation import AGGREGATION_OPS, Aggregation, build_aggregation
from .attention_fpn import AttentionFPN, default_pool_strides
from .backbone import (
    build_resnet_attention_fpn_backbone,
    build_retinanet_resnet_attention_fpn_backbone,
    build_swin_attention_fpn_backbone,
)
from .ms_attention import MSAttention
from .pooling import POOLING_TYPES
from .swin import SwinBottomUp

__all__ = [
    "AGGREGATION_OPS",
    "POOLING_TYPES",
    "Aggregation",
    "AttentionFPN",
    "MSAttention",
    "SwinBottomUp",
    "default_pool_strides",
    "build_aggregation",
    "build_resnet_attention_fpn_backbone",
    "build_retinanet_resnet_attention_fpn_backbone",
    "build_swin_attention_fpn_backbone",
]
