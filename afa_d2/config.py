"""yacs keys of afa_d2 (``add_afa_config``), for the registry path (``MODEL.BACKBONE.NAME``).

LazyConfig users set the same things as keyword arguments of
:class:`~afa_d2.modeling.AttentionFPN` and :class:`~afa_d2.modeling.SwinBottomUp`.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_afa_config"]


def add_afa_config(cfg: CN) -> CN:
    """Add ``MODEL.AFA`` (the aggregation) and ``MODEL.SWIN`` (the timm bottom-up) to ``cfg``.

    ``MODEL.FPN.IN_FEATURES / OUT_CHANNELS / NORM / FUSE_TYPE`` keep their detectron2 meaning.
    Returns ``cfg`` (modified in place).
    """
    _C = cfg
    _C.MODEL.AFA = CN()
    # "sum" | "concat" | "mssa" | "msca" (paper Table 1), used on ATTENTION_LEVELS; others "sum".
    _C.MODEL.AFA.AGGREGATION = "mssa"
    # Levels (detectron2 names, p2..p5 = paper P0..P3) using AGGREGATION (paper Table 4); [] = every
    # level of the pyramid (p2..p5 for res2..res5 inputs, p3..p5 for RetinaNet's res3..res5).
    _C.MODEL.AFA.ATTENTION_LEVELS = []
    # Key/value pooling of MS-Att: "multi_scale" | "single_scale" | "adaptive" (paper Table 5).
    _C.MODEL.AFA.POOLING = "multi_scale"
    # r_i, one per MODEL.FPN.IN_FEATURES; multi-scale pools with r_i and 2 r_i. [] = 64 / stride of
    # each level: the paper's [16, 8, 4, 2] for p2..p5, [8, 4, 2] for p3..p5.
    _C.MODEL.AFA.POOL_STRIDES = []
    _C.MODEL.AFA.ADAPTIVE_POOL_SIZE = 7
    _C.MODEL.AFA.NUM_HEADS = 4
    _C.MODEL.AFA.MLP_RATIO = 2.0
    # Recompute each MS-Att's DW-MLP branch in backward (less training memory, more time).
    _C.MODEL.AFA.CHECKPOINT_MLP = False
    # Initialise MSSA / concat so that they compute FPN's sum (fine-tuning from an FPN checkpoint:
    # exactly FPN with UPSAMPLE_MODE "nearest"); sum has nothing to do; msca cannot (ValueError).
    _C.MODEL.AFA.START_AS_FPN = False
    # "" = bilinear for mssa/msca (paper), nearest for sum/concat (FPN); or "nearest" | "bilinear".
    _C.MODEL.AFA.UPSAMPLE_MODE = ""

    _C.MODEL.SWIN = CN()
    _C.MODEL.SWIN.NAME = "swin_tiny_patch4_window7_224"  # a timm model name
    _C.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    _C.MODEL.SWIN.DROP_PATH_RATE = 0.2  # Swin-T's detection recipe
    return cfg
