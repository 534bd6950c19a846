"""afa_d2.model_zoo.convert: detectron2 FPN -> AttentionFPN (function-preserving for MSSA / concat),
torchvision ResNet -> detectron2 names, Swin (official / timm layout) -> SwinBottomUp. Every source is
made here from random weights: nothing is downloaded."""
import os
import pickle
import re

import numpy as np
import pytest
import torch

import afa_d2  # noqa: F401
from _engine_fixtures import tiny_rcnn
from afa_d2.model_zoo.convert import (
    TORCHVISION_SETTINGS,
    convert_detectron2_fpn,
    convert_swin,
    convert_torchvision_resnet,
    load_weights,
    save_converted,
)
from afa_d2.modeling import AttentionFPN
from detectron2.config import LazyCall as L
from detectron2.config import instantiate


def _fpn_and_afpn_configs(op, upsample_mode="nearest", start_as_fpn=True, kind="mask_rcnn"):
    """A small detectron2 Mask R-CNN with detectron2's own FPN, and the same with AttentionFPN."""
    fpn = tiny_rcnn(kind, norm="BN")
    fpn.roi_heads.num_classes = 3
    afpn = tiny_rcnn(kind, norm="BN")
    afpn.roi_heads.num_classes = 3
    bb = afpn.backbone
    afpn.backbone = L(AttentionFPN)(bottom_up=bb.bottom_up, in_features=["res2", "res3", "res4", "res5"],
                                    out_channels=bb.out_channels, aggregation=op, upsample_mode=upsample_mode,
                                    start_as_fpn=start_as_fpn, num_heads=4, top_block=bb.top_block)
    return fpn, afpn


def _random_fpn(cfg):
    torch.manual_seed(0)
    model = instantiate(cfg).eval()
    with torch.no_grad():  # trained-looking norms (random init BN in eval mode is the identity)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _images():
    g = torch.Generator().manual_seed(3)
    return [{"image": (torch.rand(3, h, w, generator=g) * 255), "height": h, "width": w}
            for h, w in ((97, 131), (128, 96))]


def _save_d2_pkl(model, path):
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in model.state_dict().items()},
                     "__author__": "Detectron2 Model Zoo"}, f)


@pytest.mark.parametrize("op", ["mssa", "concat"])
@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_fpn_checkpoint_converts_to_the_same_detections(op, fmt, tmp_path):
    fpn_cfg, afpn_cfg = _fpn_and_afpn_configs(op)
    fpn = _random_fpn(fpn_cfg)
    path = str(tmp_path / "model_final.{}".format(fmt))
    if fmt == "pkl":
        _save_d2_pkl(fpn, path)
    else:
        torch.save({"model": fpn.state_dict(), "iteration": 89999}, path)
    state, report = convert_detectron2_fpn(path, instantiate(afpn_cfg), start_as_fpn=True)
    # every shared weight loaded, only the operator's blocks are new, nothing dropped
    assert sorted(report.loaded) == sorted(fpn.state_dict())
    assert report.new and all(k.startswith("backbone.fpn_aggregation") for k in report.new)
    assert report.dropped == [] and report.mismatched == []
    converted = instantiate(afpn_cfg).eval()
    converted.load_state_dict(state)
    with torch.no_grad():
        a, b = fpn(_images()), converted(_images())
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y) > 0
        assert torch.equal(x.pred_classes, y.pred_classes)
        assert (x.scores - y.scores).abs().max().item() <= 1e-5
        assert (x.pred_boxes.tensor - y.pred_boxes.tensor).abs().max().item() <= 1e-5 * max(1.0, x.image_size[0])
        assert (x.pred_masks.float() - y.pred_masks.float()).abs().max().item() == 0.0
    # the file round trip: what save_converted writes is what a checkpointer loads
    out = save_converted(state, str(tmp_path / "converted.pth"), author="test", report=report)
    assert set(load_weights(out)[0]) == set(state)


def test_without_start_as_fpn_or_with_bilinear_up_the_outputs_differ(tmp_path):
    fpn_cfg, afpn_cfg = _fpn_and_afpn_configs("mssa", upsample_mode="bilinear")
    fpn = _random_fpn(fpn_cfg)
    image = _images()[:1]
    with torch.no_grad():
        ref = fpn.backbone(fpn.preprocess_image(image).tensor)
        for start, up in ((True, "bilinear"), (False, "nearest")):
            _, cfg = _fpn_and_afpn_configs("mssa", upsample_mode=up, start_as_fpn=start)
            state, _ = convert_detectron2_fpn(fpn.state_dict(), instantiate(cfg), start_as_fpn=start)
            model = instantiate(cfg).eval()
            model.load_state_dict(state)
            feats = model.backbone(model.preprocess_image(image).tensor)
            assert (feats["p2"] - ref["p2"]).abs().max().item() > 1e-3, (start, up)
            if start:  # the top level has no Up: it starts as FPN's whatever the Up
                assert (feats["p6"] - ref["p6"]).abs().max().item() <= 1e-6 * ref["p6"].abs().max().item()


def test_msca_cannot_start_as_fpn_and_says_why():
    _, cfg = _fpn_and_afpn_configs("msca", start_as_fpn=False)
    with pytest.raises(ValueError, match=r"msca cannot start as FPN's sum: .*P_i = 2 F_i"):
        convert_detectron2_fpn({}, instantiate(cfg), start_as_fpn=True)
    _, cfg = _fpn_and_afpn_configs("msca", start_as_fpn=True)
    with pytest.raises(ValueError, match=r"start_as_fpn=True with msca on \['p2', 'p3', 'p4', 'p5'\]"):
        instantiate(cfg)


def test_msca_converts_with_every_shared_weight_and_fresh_blocks():
    fpn_cfg, afpn_cfg = _fpn_and_afpn_configs("msca", start_as_fpn=False)
    fpn = _random_fpn(fpn_cfg)
    state, report = convert_detectron2_fpn(fpn.state_dict(), instantiate(afpn_cfg))
    assert sorted(report.loaded) == sorted(fpn.state_dict())
    assert {k.split(".")[1] for k in report.new} == {"fpn_aggregation2", "fpn_aggregation3", "fpn_aggregation4",
                                                     "fpn_aggregation5"}
    assert "backbone.fpn_aggregation2.* (" in report.describe()


def test_a_checkpoint_of_another_architecture_is_refused_naming_keys_and_shapes(tmp_path):
    fpn_cfg, _ = _fpn_and_afpn_configs("mssa")
    fpn_cfg.roi_heads.num_classes = 5
    other = _random_fpn(fpn_cfg)
    _, afpn_cfg = _fpn_and_afpn_configs("mssa")
    with pytest.raises(ValueError) as e:
        convert_detectron2_fpn(other.state_dict(), instantiate(afpn_cfg))
    msg = str(e.value)
    assert "\n" not in msg and "does not fit the target detector" in msg
    assert "roi_heads.box_predictor.cls_score.weight (6, 32) vs (4, 32)" in msg
    fpn_cfg, _ = _fpn_and_afpn_configs("mssa", kind="cascade")
    with pytest.raises(ValueError, match="not in the checkpoint: roi_heads.box_head.fc1.weight"):
        convert_detectron2_fpn(_random_fpn(fpn_cfg).state_dict(), instantiate(afpn_cfg))


def test_a_pkl_with_code_in_it_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "x": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing GLOBAL (posix|os)\.system"):
        load_weights(path)


# ----------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_converts_to_the_same_features(depth):
    import torchvision
    from detectron2.modeling.backbone.resnet import build_resnet_backbone
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec

    torch.manual_seed(0)
    tv = getattr(torchvision.models, "resnet{}".format(depth))(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    weights, report = convert_torchvision_resnet(tv.state_dict(), prefix="")
    assert "fc.weight" in report.dropped and "stem.conv1.norm.running_var" in weights
    assert "model.backbone.bottom_up.stages.stride_in_1x1=False" in TORCHVISION_SETTINGS

    def d2_resnet(stride_in_1x1):
        cfg = get_cfg()
        cfg.MODEL.RESNETS.DEPTH = depth
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        model = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
        incompatible = model.load_state_dict(weights, strict=False)
        assert not incompatible.missing_keys, incompatible.missing_keys
        return model

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = [tv.layer1, tv.layer2, tv.layer3, tv.layer4]
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = []
        for layer in expected:
            y = layer(y)
            ref.append(y)
        out = d2_resnet(False)(x)
        for name, r in zip(("res2", "res3", "res4", "res5"), ref):
            assert (out[name] - r).abs().max().item() <= 1e-4 * max(1.0, r.abs().max().item()), name
        if depth == 50:  # with MSRA's stride placement the same weights compute something else
            wrong = d2_resnet(True)(x)
            assert (wrong["res5"] - ref[3]).abs().max().item() > 1e-2


# ----------------------------------------------------------------------------- Swin
def _to_official_layout(timm_state):
    """The inverse of the conversion, written independently: merging at the end of stages 0-2,
    ``head``, and the buffers the official code saves."""
    out = {}
    for k, v in timm_state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: "layers.{}.downsample.".format(int(m.group(1)) - 1), k)
        k = k.replace("head.fc.", "head.")
        out[k] = v
    for k in list(out):
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49, dtype=torch.long)
            out[k.replace("attn.relative_position_bias_table", "attn_mask")] = torch.zeros(4, 49, 49)
    return out


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_swin_checkpoint_converts_to_timms_outputs(layout, tmp_path):
    import timm

    from afa_d2.modeling import SwinBottomUp

    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    state = ref.state_dict()
    source = _to_official_layout(state) if layout == "official" else state
    path = str(tmp_path / "swin_tiny.pth")
    torch.save({"model": source}, path)
    bottom_up = SwinBottomUp(img_size=224).eval()
    weights, report = convert_swin(path, bottom_up, prefix="")
    assert any("head" in k for k in report.dropped)
    if layout == "official":
        assert any("relative_position_index (recomputed by timm)" in k for k in report.dropped)
    incompatible = bottom_up.model.load_state_dict(weights, strict=True)
    assert not incompatible.missing_keys
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = ref.forward_intermediates(x, norm=False, intermediates_only=True)  # NCHW, per stage
        out = bottom_up(x)
    for name, e in zip(("res2", "res3", "res4", "res5"), expected):
        assert (out[name] - e).abs().max().item() <= 1e-4 * max(1.0, e.abs().max().item()), name


def test_swin_with_another_window_is_refused(tmp_path):
    import timm

    from afa_d2.modeling import SwinBottomUp

    other = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, window_size=8, img_size=256)
    with pytest.raises(ValueError, match="relative position bias table"):
        convert_swin(other.state_dict(), SwinBottomUp(img_size=224), prefix="")


def test_fine_tuning_path_model_option_plus_plain_checkpoint_load(tmp_path):
    """What the fine-tuning configs do: AttentionFPN(start_as_fpn=True) built, the FPN checkpoint
    loaded by the ordinary checkpointer (the new blocks are missing from it and keep their start)."""
    from afa_d2.engine.checkpoint import AtomicCheckpointer

    fpn_cfg, afpn_cfg = _fpn_and_afpn_configs("mssa")
    fpn = _random_fpn(fpn_cfg)
    path = str(tmp_path / "fpn.pth")
    torch.save({"model": fpn.state_dict()}, path)
    model = instantiate(afpn_cfg).eval()
    checkpointer = AtomicCheckpointer(model)
    checkpointer.load(path)
    assert all(k.startswith("backbone.fpn_aggregation") for k in checkpointer.last_load_report.missing)
    with torch.no_grad():
        a, b = fpn(_images()), model(_images())
    for x, y in zip(a, b):
        assert (x["instances"].scores - y["instances"].scores).abs().max().item() <= 1e-5


def test_start_as_fpn_arguments_are_checked():
    from afa_d2.modeling.aggregation import ConcatAggregation

    with pytest.raises(ValueError, match="start_as_fpn must be a bool, got 1"):
        instantiate(_fpn_and_afpn_configs("mssa", start_as_fpn=1)[1])
    with pytest.raises(ValueError, match="concat cannot start as FPN's sum with a norm"):
        ConcatAggregation(64, norm="GN").init_as_sum()
