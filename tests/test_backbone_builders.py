"""The yacs path: add_afa_config + the builders registered in BACKBONE_REGISTRY."""
import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from afa_d2.config import add_afa_config
from afa_d2.modeling import AttentionFPN, SwinBottomUp

IN = ["res2", "res3", "res4", "res5"]


def _cfg(name="build_resnet_attention_fpn_backbone", depth=50, **afa):
    cfg = get_cfg()
    add_afa_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = IN
    cfg.MODEL.FPN.IN_FEATURES = IN
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for k, v in afa.items():
        setattr(cfg.MODEL.AFA, k, v)
    return cfg


def test_keys_and_defaults():
    cfg = _cfg()
    assert cfg.MODEL.AFA.AGGREGATION == "mssa"
    assert cfg.MODEL.AFA.ATTENTION_LEVELS == []  # every level of the pyramid
    assert build_backbone(cfg).level_ops == {"p2": "mssa", "p3": "mssa", "p4": "mssa", "p5": "mssa"}
    assert cfg.MODEL.AFA.POOLING == "multi_scale"
    assert cfg.MODEL.AFA.POOL_STRIDES == []  # 64 / stride: the paper's 16, 8, 4, 2 on p2..p5
    assert [build_backbone(cfg).fpn_aggregation2.attn.pool_strides[0]] == [16]
    assert (cfg.MODEL.AFA.ADAPTIVE_POOL_SIZE, cfg.MODEL.AFA.NUM_HEADS, cfg.MODEL.AFA.MLP_RATIO) == (7, 4, 2.0)
    assert cfg.MODEL.AFA.UPSAMPLE_MODE == ""
    assert cfg.MODEL.AFA.CHECKPOINT_MLP is False
    assert cfg.MODEL.SWIN.NAME == "swin_tiny_patch4_window7_224"
    cfg.merge_from_list(["MODEL.AFA.AGGREGATION", "msca", "MODEL.AFA.POOL_STRIDES", "[8, 4, 2, 1]"])
    assert cfg.MODEL.AFA.AGGREGATION == "msca" and cfg.MODEL.AFA.POOL_STRIDES == [8, 4, 2, 1]


def test_registered():
    assert "build_resnet_attention_fpn_backbone" in BACKBONE_REGISTRY
    assert "build_swin_attention_fpn_backbone" in BACKBONE_REGISTRY


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_builder_depths(depth):
    cfg = _cfg(depth=depth, AGGREGATION="msca", ATTENTION_LEVELS=["p4", "p5"], POOLING="adaptive",
               CHECKPOINT_MLP=depth == 18)
    model = build_backbone(cfg)
    assert isinstance(model, AttentionFPN)
    assert model.level_ops == {"p2": "sum", "p3": "sum", "p4": "msca", "p5": "msca"}
    assert model.fpn_aggregation4.attn.pooling == "adaptive"
    assert model.fpn_aggregation5.attn.checkpoint_mlp is (depth == 18)
    n_blocks = {18: 8, 34: 16, 50: 16, 101: 33}[depth]
    assert sum(len(s) for s in model.bottom_up.stages) == n_blocks
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == {
        "p2": (256, 4), "p3": (256, 8), "p4": (256, 16), "p5": (256, 32), "p6": (256, 64)
    }


def test_resnet_builder_forward_and_fpn_keys():
    cfg = _cfg(depth=18, AGGREGATION="sum", UPSAMPLE_MODE="bilinear")
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FPN.NORM = "GN"
    model = build_backbone(cfg).eval()
    assert model.fpn_aggregation3.upsample_mode == "bilinear"
    assert isinstance(model.fpn_lateral2.norm, torch.nn.GroupNorm)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 131))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 32, 25, 33), "p3": (1, 32, 13, 17), "p4": (1, 32, 7, 9), "p5": (1, 32, 4, 5), "p6": (1, 32, 2, 3)
    }


def test_swin_builder():
    cfg = _cfg("build_swin_attention_fpn_backbone", AGGREGATION="mssa")
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.1
    model = build_backbone(cfg)
    assert isinstance(model.bottom_up, SwinBottomUp)
    assert model.size_divisibility == 32
    assert {k: v.stride for k, v in model.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("AGGREGATION", "mean", r"'mean'.*sum.*concat.*mssa.*msca"),
        ("ATTENTION_LEVELS", ["p5", "P4"], r"'P4'.*p2"),
        ("POOLING", "max", r"'max'.*multi_scale"),
        ("NUM_HEADS", 6, r"num_heads=6.*out_channels=256"),
        ("POOL_STRIDES", [16, 8, 4], r"3 entries"),
        ("POOL_STRIDES", [16, 8, 4, 0], r"positive"),
        ("UPSAMPLE_MODE", "area", r"'area'.*nearest.*bilinear"),
    ],
)
def test_bad_config_raises_value_error(key, value, pattern):
    cfg = _cfg(depth=18, **{key: value})
    with pytest.raises(ValueError, match=pattern):
        build_backbone(cfg, ShapeSpec(channels=3))
