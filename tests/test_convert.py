"""afa_d2.model_zoo.convert and its commands (tools/convert_*.py): detectron2 FPN -> AttentionFPN (the same detections
when MSSA / concat start as FPN), torchvision ResNet -> detectron2 names (with the settings they
need), Swin (official / timm layout) -> SwinBottomUp. Every source is made here from random
weights: nothing is downloaded."""
import os
import pickle
import re

import numpy as np
import pytest
import torch

import afa_d2  # noqa: F401  (before detectron2)
from _engine_fixtures import TESTS_DIR, build_with_trained_norms, one_thread, tiny_rcnn  # noqa: F401  (one_thread: autouse)
from afa_d2.model_zoo import convert
from afa_d2.model_zoo.convert import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    convert_detectron2_fpn,
    convert_swin,
    convert_torchvision_resnet,
    load_weights,
    torchvision_resnet_overrides,
)
from afa_d2.modeling import AttentionFPN
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

AGG = "backbone.fpn_aggregation"


# ----------------------------------------------------------------------------- detectron2 FPN
def _configs(op, upsample_mode="nearest", start_as_fpn=False, kind="mask_rcnn", norm=""):
    """A small detectron2 Mask R-CNN with detectron2's own FPN (16 channels, tiny ResNet, 2 classes,
    every detection kept), and the same detector with AttentionFPN(``op``)."""
    fpn = tiny_rcnn(kind, norm="BN")
    afpn = tiny_rcnn(kind, norm="BN")
    bb = afpn.backbone
    afpn.backbone = L(AttentionFPN)(bottom_up=bb.bottom_up, in_features=["res2", "res3", "res4", "res5"],
                                    out_channels=bb.out_channels, aggregation=op, upsample_mode=upsample_mode,
                                    start_as_fpn=start_as_fpn, num_heads=4, norm=norm, top_block=bb.top_block)
    return fpn, afpn


def _deeper_stages(norm="BN", widths=(8, 16, 32, 64)):
    """``_engine_fixtures.tiny_resnet_stages`` with two BasicBlocks a stage instead of one."""
    from detectron2.modeling.backbone import ResNet
    from detectron2.modeling.backbone.resnet import BasicBlock

    stages, in_ch = [], widths[0]
    for i, w in enumerate(widths):
        stages.append(ResNet.make_stage(BasicBlock, 2, in_channels=in_ch, out_channels=w,
                                        stride_per_block=[1 if i == 0 else 2, 1], norm=norm))
        in_ch = w
    return stages


def _build(cfg, seed=0):
    return build_with_trained_norms(cfg, seed)


def _images():
    g = torch.Generator().manual_seed(3)
    return [{"image": torch.rand(3, h, w, generator=g) * 255, "height": h, "width": w}
            for h, w in ((97, 131), (128, 96))]


def _predict(model):
    """Boxes, scores, classes and mask probabilities (before pasting) per image."""
    with torch.no_grad():
        out = model.inference(_images(), do_postprocess=False)
    return [(x.pred_boxes.tensor, x.scores, x.pred_classes, x.pred_masks) for x in out]


def _assert_same_predictions(a, b, atol=1e-5):
    for (boxes, scores, classes, masks), (boxes2, scores2, classes2, masks2) in zip(a, b):
        assert len(scores) == len(scores2) > 0
        assert torch.equal(classes, classes2)
        assert (scores - scores2).abs().max().item() <= atol
        assert (boxes - boxes2).abs().max().item() <= atol * max(1.0, boxes.abs().max().item())
        assert (masks - masks2).abs().max().item() <= atol


@pytest.fixture(scope="module")
def fpn_source(tmp_path_factory):
    """detectron2's FPN detector, random weights, as its model zoo writes it (.pkl of numpy arrays)
    and as a training checkpoint (.pth), with its predictions."""
    d = tmp_path_factory.mktemp("fpn")
    fpn_cfg, _ = _configs("sum")
    model = _build(fpn_cfg)
    state = model.state_dict()
    pkl, pth = str(d / "model_final.pkl"), str(d / "model_final.pth")
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}, f,
                    protocol=2)
    torch.save({"model": state, "iteration": 89999}, pth)
    return dict(model=model, state=state, pkl=pkl, pth=pth, pred=_predict(model))


@pytest.mark.parametrize("op", ["mssa", "concat"])
def test_fpn_checkpoint_converts_to_the_same_detections(op, fpn_source, tmp_path):
    _, afpn_cfg = _configs(op)  # built without start_as_fpn: the converter's start_as_fpn does it
    out = str(tmp_path / "converted.pth")
    state, report = convert_detectron2_fpn(fpn_source["pkl"], instantiate(afpn_cfg), start_as_fpn=True, output=out)
    state_pth, _ = convert_detectron2_fpn(fpn_source["pth"], instantiate(afpn_cfg), start_as_fpn=True)
    assert state.keys() == state_pth.keys() and all(torch.equal(state[k], state_pth[k]) for k in report.loaded)
    # every shared weight loaded; exactly the operator's blocks are new; nothing else missing or dropped
    target_keys = set(instantiate(afpn_cfg).state_dict())
    assert set(report.loaded) == set(fpn_source["state"])
    assert set(report.new) == {k for k in target_keys if k.startswith(AGG)} != set()
    assert report.missing == [] and report.dropped == [] and report.mismatched == []
    assert "source author: Detectron2 Model Zoo" in report.describe()
    # the file: atomic, weights-only loadable, says where it came from; a model built without
    # start_as_fpn loads it strictly and gives the FPN detector's detections
    data = torch.load(out, map_location="cpu", weights_only=True)
    assert data["conversion"]["source"] == fpn_source["pkl"] and data["start_as_fpn"] is True
    assert [n for n in os.listdir(str(tmp_path)) if n != "converted.pth"] == []
    converted = instantiate(afpn_cfg).eval()
    converted.load_state_dict(data["model"], strict=True)
    _assert_same_predictions(fpn_source["pred"], _predict(converted))


def test_model_option_start_as_fpn_with_the_ordinary_checkpoint_load(fpn_source):
    """What the fine-tuning configs do: AttentionFPN(start_as_fpn=True), detectron2's .pkl loaded as
    train.init_checkpoint is; the new blocks are missing from it and keep their start."""
    from afa_d2.engine.checkpoint import AtomicCheckpointer

    _, afpn_cfg = _configs("mssa", start_as_fpn=True)
    model = instantiate(afpn_cfg).eval()
    checkpointer = AtomicCheckpointer(model)
    checkpointer.load(fpn_source["pkl"])
    report = checkpointer.last_load_report
    assert set(report.missing) == {k for k in model.state_dict() if k.startswith(AGG)} != set()
    assert report.mismatched == [] and report.unexpected == []
    _assert_same_predictions(fpn_source["pred"], _predict(model))


def test_bilinear_up_or_no_start_as_fpn_differ_from_fpn(fpn_source):
    fpn = fpn_source["model"]
    image = _images()[:1]
    with torch.no_grad():
        x = fpn.preprocess_image(image).tensor
        ref = fpn.backbone(x)
        for start, up in ((True, "bilinear"), (False, "nearest")):
            _, cfg = _configs("mssa", upsample_mode=up)
            state, _ = convert_detectron2_fpn(fpn_source["state"], instantiate(cfg), start_as_fpn=start)
            model = instantiate(cfg).eval()
            model.load_state_dict(state)
            feats = model.backbone(x)
            assert (feats["p2"] - ref["p2"]).abs().max().item() > 1e-2, (start, up)
            if start:  # the top level has no Up: with start_as_fpn it is FPN's whatever the Up
                for level in ("p5", "p6"):
                    assert (feats[level] - ref[level]).abs().max().item() <= 1e-5 * ref[level].abs().max().item()


def test_msca_cannot_start_as_fpn_and_converts_with_fresh_blocks(fpn_source):
    _, cfg = _configs("msca", upsample_mode=None)
    model = instantiate(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"msca cannot start as FPN's sum: .*P_i = 2 F_i and the deeper level is lost"):
        convert_detectron2_fpn(fpn_source["state"], model, start_as_fpn=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any change
    _, cfg_start = _configs("msca", upsample_mode=None, start_as_fpn=True)
    with pytest.raises(ValueError, match=r"start_as_fpn=True with msca on \['p2', 'p3', 'p4', 'p5'\]: msca cannot"):
        instantiate(cfg_start)
    state, report = convert_detectron2_fpn(fpn_source["state"], model)
    assert set(report.loaded) == set(fpn_source["state"]) and report.missing == []
    assert {k.split(".")[1] for k in report.new} == {"fpn_aggregation{}".format(i) for i in (2, 3, 4, 5)}
    assert all(torch.equal(state[k], before[k]) for k in report.new)  # MSCA blocks: their fresh init
    assert "backbone.fpn_aggregation2.* (" in report.describe()
    assert "new, not in the source (left at their initialisation)" in report.describe()


def test_a_checkpoint_of_another_architecture_is_refused_naming_keys_and_shapes(fpn_source):
    _, afpn_cfg = _configs("mssa")
    target = instantiate(afpn_cfg)
    # another number of classes: the shapes, both named
    other_cfg, _ = _configs("sum")
    other_cfg.roi_heads.num_classes = 5
    other = instantiate(other_cfg).state_dict()
    with pytest.raises(ValueError) as e:
        convert_detectron2_fpn(other, target)
    msg = str(e.value)
    assert "\n" not in msg and "does not fit GeneralizedRCNN (another architecture?)" in msg
    assert "roi_heads.box_predictor.cls_score.weight (6, 32) vs (3, 32)" in msg
    # non-strict: reported, converted anyway, the misfit tensors at the target's initialisation
    state, report = convert_detectron2_fpn(other, target, strict=False)
    assert ("roi_heads.box_predictor.cls_score.weight", (6, 32), (3, 32)) in report.mismatched
    assert torch.equal(state["roi_heads.box_predictor.cls_score.weight"],
                       target.state_dict()["roi_heads.box_predictor.cls_score.weight"])
    assert "SHAPE DOES NOT FIT" in report.describe()
    # a deeper bottom-up in the checkpoint: its extra blocks have no place in the target
    deeper_cfg, _ = _configs("sum")
    deeper_cfg.backbone.bottom_up.stages = L(_deeper_stages)()
    deeper = instantiate(deeper_cfg).state_dict()
    with pytest.raises(ValueError, match=r"in the checkpoint, not in the target: backbone\.bottom_up\.res2\.1\."):
        convert_detectron2_fpn(deeper, target)
    # a deeper target: blocks the checkpoint does not have
    _, deep_target_cfg = _configs("mssa")
    deep_target_cfg.backbone.bottom_up.stages = L(_deeper_stages)()
    with pytest.raises(ValueError, match=r"not in the checkpoint: backbone\.bottom_up\.res2\.1\."):
        convert_detectron2_fpn(fpn_source["state"], instantiate(deep_target_cfg))
    # Cascade R-CNN's heads
    cascade_cfg, _ = _configs("sum", kind="cascade")
    with pytest.raises(ValueError, match=r"not in the checkpoint: roi_heads\.box_head\.fc1\.weight"):
        convert_detectron2_fpn(instantiate(cascade_cfg).state_dict(), target)


def test_start_as_fpn_argument_checks():
    from afa_d2.modeling.aggregation import ConcatAggregation, build_aggregation

    with pytest.raises(ValueError, match="start_as_fpn must be a bool, got 1"):
        instantiate(_configs("mssa", start_as_fpn=1)[1])
    # concat with a norm in its fuse conv cannot be the sum: refused with AttentionFPN's other checks
    with pytest.raises(ValueError, match=r"start_as_fpn=True with concat on \['p2', 'p3', 'p4'\]: concat cannot "
                                         r"start as FPN's sum with a norm in its 1x1 fuse conv \(norm='GN'\)"):
        instantiate(_configs("concat", start_as_fpn=True, norm="GN")[1])
    with pytest.raises(ValueError, match="concat cannot start as FPN's sum with a norm"):
        ConcatAggregation(64, norm="GN", start_as_fpn=True)
    # a built model refuses the same, before any weight changes
    concat_gn = instantiate(_configs("concat", norm="BN")[1]).backbone
    before = {k: v.clone() for k, v in concat_gn.state_dict().items()}
    with pytest.raises(ValueError, match=r"init_as_fpn with concat on \['p2', 'p3', 'p4'\]: concat cannot start"):
        concat_gn.init_as_fpn()
    assert all(torch.equal(v, concat_gn.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"init_as_fpn with msca on \['p2', 'p3', 'p4', 'p5'\]: msca cannot"):
        instantiate(_configs("msca")[1]).backbone.init_as_fpn()
    with pytest.raises(ValueError, match="msca cannot start as FPN's sum"):
        build_aggregation("msca", 64, start_as_fpn=True)
    # what each start sets
    concat = ConcatAggregation(8, start_as_fpn=True)
    assert torch.equal(concat.fuse.weight[:, :, 0, 0], torch.cat([torch.eye(8), torch.eye(8)], 1))
    assert torch.equal(concat.fuse.bias, torch.zeros(8))
    mssa = build_aggregation("mssa", 8, num_heads=2, start_as_fpn=True)
    assert mssa.attn.mlp.fc2.weight.abs().sum() == 0 and mssa.attn.mlp.fc2.bias.abs().sum() == 0
    assert build_aggregation("mssa", 8, num_heads=2).attn.mlp.fc2.weight.abs().sum() > 0


def test_yacs_start_as_fpn():
    from afa_d2.config import add_afa_config
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    cfg = get_cfg()
    add_afa_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_attention_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.AFA.AGGREGATION, cfg.MODEL.AFA.START_AS_FPN = "mssa", True
    backbone = build_backbone(cfg)
    assert all(getattr(backbone, "fpn_aggregation{}".format(i)).attn.mlp.fc2.weight.abs().sum() == 0
               for i in (2, 3, 4, 5))
    cfg.MODEL.AFA.AGGREGATION = "msca"
    with pytest.raises(ValueError, match="msca cannot start as FPN's sum"):
        build_backbone(cfg)


# ----------------------------------------------------------------------------- reading files
def test_a_pkl_with_code_in_it_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > {}".format(tmp_path / "pwned"),))

    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "x": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl: refusing GLOBAL (posix|os|nt)\.system") as e:
        load_weights(path)
    assert "\n" not in str(e.value) and not (tmp_path / "pwned").exists()
    with open(path, "wb") as f:
        f.write(pickle.dumps({"model": {"w": np.zeros(2)}})[:20])
    with pytest.raises(pickle.UnpicklingError, match="not a readable pickle"):
        load_weights(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pkl_and_pth_layouts_load(protocol, tmp_path):
    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(3, dtype=np.int64)}
    path = str(tmp_path / "m.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": w, "__author__": "Detectron2 Model Zoo", "matching_heuristics": False}, f,
                    protocol=protocol)
    weights, rest = load_weights(path)
    assert torch.equal(weights["a"], torch.arange(6.0).view(2, 3)) and weights["b"].shape == ()
    assert rest == {"__author__": "Detectron2 Model Zoo", "matching_heuristics": False}
    tensors = {k: torch.from_numpy(v) for k, v in w.items()}
    for i, layout in enumerate(({"model": tensors}, {"state_dict": tensors}, tensors)):
        torch.save(layout, str(tmp_path / "{}.pth".format(i)))
        assert torch.equal(load_weights(str(tmp_path / "{}.pth".format(i)))[0]["a"], tensors["a"])


# ----------------------------------------------------------------------------- torchvision
def _torchvision_resnet(depth):
    import torchvision

    torch.manual_seed(0)
    tv = getattr(torchvision.models, "resnet{}".format(depth))(weights=None).eval()  # random init, no download
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return tv


def _torchvision_features(tv, image01):
    """torchvision's res2..res5 (layer1..layer4) for an RGB image in [0, 1], its own normalisation."""
    import torchvision.transforms.functional as TF

    x = TF.normalize(image01, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])[None]
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = []
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        x = layer(x)
        out.append(x)
    return dict(zip(("res2", "res3", "res4", "res5"), out))


def _d2_config():
    """detectron2's own Mask R-CNN R-50 FPN LazyConfig (MSRA settings) with its COCO data config."""
    from detectron2 import model_zoo
    from omegaconf import OmegaConf

    return OmegaConf.create({"model": model_zoo.get_config("common/models/mask_rcnn_fpn.py").model,
                             "dataloader": model_zoo.get_config("common/data/coco.py").dataloader})


def _assert_close(out, ref, names=("res2", "res3", "res4", "res5")):
    for name in names:
        assert (out[name] - ref[name]).abs().max().item() <= 1e-5 * max(1.0, ref[name].abs().max().item()), name


def test_torchvision_resnet18_in_a_detectron2_detector(tmp_path):
    """The file detectron2's own checkpointer loads by name matching, into detectron2's Mask R-CNN
    config with the overrides the converter returns: image read by the config's mapper, normalised
    by the model, gives torchvision's features."""
    from afa_d2.engine import apply_overrides
    from detectron2.checkpoint import DetectionCheckpointer
    from PIL import Image

    tv = _torchvision_resnet(18)
    src = str(tmp_path / "resnet18.pth")
    torch.save(tv.state_dict(), src)
    out = str(tmp_path / "R-18-torchvision.pth")
    weights, report = convert_torchvision_resnet(src, prefix="", output=out)
    assert report.why["fc.weight"] == "the ImageNet classifier" and "stem.conv1.norm.running_var" in weights
    assert report.config_overrides == torchvision_resnet_overrides(18)
    assert not any("stride_in_1x1" in o for o in report.config_overrides)  # BasicBlock has no such choice
    data = torch.load(out, weights_only=True)
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True

    cfg = _d2_config()
    del cfg.model.backbone.bottom_up.stages["stride_in_1x1"]  # as report.notes says for BasicBlock depths
    cfg = apply_overrides(cfg, report.config_overrides)
    cfg.model.roi_heads.num_classes = 2
    cfg.dataloader.test.mapper.augmentations = []  # keep the image's size
    model = instantiate(cfg.model).eval()
    DetectionCheckpointer(model).load(out)  # matching heuristics: backbone.bottom_up. found by name
    bottom_up = model.backbone.bottom_up.state_dict()
    assert all(torch.equal(bottom_up[k], v) for k, v in weights.items())

    rgb = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(str(tmp_path / "img.png"))
    mapper = instantiate(cfg.dataloader.test.mapper)
    d = mapper({"file_name": str(tmp_path / "img.png"), "height": 64, "width": 96, "image_id": 0})
    with torch.no_grad():
        feats = model.backbone.bottom_up(model.preprocess_image([d]).tensor)
        ref = _torchvision_features(tv, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    _assert_close(feats, ref)


def test_torchvision_resnet50_needs_its_stride_setting():
    from afa_d2.engine import apply_overrides

    tv = _torchvision_resnet(50)
    prefix = "backbone.bottom_up."
    weights, report = convert_torchvision_resnet(tv.state_dict())
    assert all(k.startswith(prefix) for k in weights) and "model.backbone.bottom_up.stages.stride_in_1x1=False" \
        in report.config_overrides
    assert report.why["layer1.0.bn1.num_batches_tracked"].startswith("BatchNorm's step counter")
    image = torch.rand(3, 64, 64) * 255  # RGB, detectron2's 0..255 scale
    with torch.no_grad():
        ref = _torchvision_features(tv, image / 255)

    def features(overrides):
        cfg = apply_overrides(_d2_config(), overrides)
        bottom_up = instantiate(cfg.model.backbone.bottom_up).eval()
        bottom_up.load_state_dict({k[len(prefix):]: v for k, v in weights.items()}, strict=True)
        mean = torch.tensor(list(cfg.model.pixel_mean)).view(3, 1, 1)
        std = torch.tensor(list(cfg.model.pixel_std)).view(3, 1, 1)
        with torch.no_grad():
            return bottom_up(((image - mean) / std)[None])

    _assert_close(features(report.config_overrides), ref)
    # MSRA's stride placement (detectron2's default) with the same weights computes something else
    wrong = features([o for o in report.config_overrides if "stride_in_1x1" not in o])
    assert (wrong["res3"] - ref["res3"]).abs().max().item() > 1e-2


def test_torchvision_source_is_checked():
    with pytest.raises(ValueError, match=r"<state dict>: no conv1\.weight, bn1\.weight, layer4\.0\.conv1\.weight: "
                                         r"not a torchvision ResNet"):
        convert_torchvision_resnet({"features.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="depth must be one of 18, 34, 50, 101, 152"):
        torchvision_resnet_overrides(42)
    assert torchvision_resnet_overrides()[:2] == [
        "model.pixel_mean=[{}]".format(",".join(map(str, TORCHVISION_PIXEL_MEAN))),
        "model.pixel_std=[{}]".format(",".join(map(str, TORCHVISION_PIXEL_STD)))]


# ----------------------------------------------------------------------------- Swin
def _to_official_layout(timm_state, window=7):
    """The inverse of the conversion, written independently: merging at the end of stages 0-2,
    ``head``, and the buffers the official code saves (``attn_mask`` in shifted blocks only)."""
    out = {}
    for k, v in timm_state.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: "layers.{}.downsample.".format(int(m.group(1)) - 1), k)
        out[k.replace("head.fc.", "head.")] = v
    for k in list(out):
        m = re.match(r"(layers\.\d+\.blocks\.(\d+)\.)attn\.relative_position_bias_table$", k)
        if m:
            out[m.group(1) + "attn.relative_position_index"] = torch.zeros(window ** 2, window ** 2, dtype=torch.long)
            if int(m.group(2)) % 2:
                out[m.group(1) + "attn_mask"] = torch.zeros(4, window ** 2, window ** 2)
    return out


@pytest.fixture(scope="module")
def swin():
    import timm

    from afa_d2.modeling import SwinBottomUp

    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # the per-stage outputs, NCHW, without the final norm
        expected = ref.forward_intermediates(x, norm=False, intermediates_only=True)
    return dict(state=ref.state_dict(), x=x, expected=dict(zip(("res2", "res3", "res4", "res5"), expected)),
                bottom_up=SwinBottomUp(img_size=224).eval())


def test_swin_official_checkpoint_gives_timms_outputs(swin, tmp_path):
    source = _to_official_layout(swin["state"])
    assert "layers.0.downsample.reduction.weight" in source and "head.weight" in source
    path = str(tmp_path / "swin_tiny_patch4_window7_224.pth")
    torch.save({"model": source}, path)
    out = str(tmp_path / "converted.pth")
    weights, report = convert_swin(path, swin["bottom_up"], prefix="", output=out)
    assert report.why["head.weight"] == "the ImageNet classifier"
    assert report.why["norm.weight"] == "the final norm (the bottom-up has none)"
    assert report.why["layers.0.blocks.0.attn.relative_position_index"] == "a buffer timm recomputes (not a weight)"
    assert report.why["layers.0.blocks.1.attn_mask"] == "a buffer timm recomputes (not a weight)"
    assert "layers_1.downsample.reduction.weight" in weights and "source layout: official" in report.describe()
    bottom_up = swin["bottom_up"]
    bottom_up.model.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
    with torch.no_grad():
        feats = bottom_up(swin["x"])
    for name, e in swin["expected"].items():
        assert (feats[name] - e).abs().max().item() <= 1e-4 * max(1.0, e.abs().max().item()), name


def test_swin_timm_checkpoint_converts_to_the_same_weights(swin):
    official, _ = convert_swin({"state_dict": _to_official_layout(swin["state"])}, swin["bottom_up"])
    weights, report = convert_swin(dict(swin["state"]), swin["bottom_up"])
    assert "source layout: timm" in report.describe() and report.why["head.fc.weight"] == "the ImageNet classifier"
    assert weights.keys() == official.keys() and all(torch.equal(weights[k], official[k]) for k in weights)
    assert all(k.startswith("backbone.bottom_up.model.") for k in weights)


def test_swin_misfits_are_refused(swin):
    state = dict(swin["state"])
    state["layers.2.blocks.0.attn.relative_position_bias_table"] = torch.zeros(15 * 15, 12)  # window 8
    with pytest.raises(ValueError, match=r"relative position bias table: made for another window size .*"
                                         r"layers\.2\.blocks\.0\.attn\.relative_position_bias_table has shape "
                                         r"\(225, 12\), the bottom-up needs \(169, 12\)"):
        convert_swin(state, swin["bottom_up"])
    del state["layers.2.blocks.0.attn.relative_position_bias_table"]
    with pytest.raises(ValueError, match=r"layers_2\.blocks\.0\.attn\.relative_position_bias_table are not in"):
        convert_swin(state, swin["bottom_up"])
    with pytest.raises(ValueError, match="not a Swin Transformer checkpoint"):
        convert_swin({"conv1.weight": torch.zeros(1)}, swin["bottom_up"])


# ----------------------------------------------------------------------------- the commands (tools/convert_*.py)
def test_tools(fpn_source, tmp_path, capsys):
    for command in (convert.detectron2_fpn, convert.torchvision_resnet, convert.swin):
        with pytest.raises(SystemExit) as e:
            command.main(["--help"])
        assert e.value.code == 0 and "usage:" in capsys.readouterr().out
    # a LazyConfig file as the target, with overrides after the flags
    config = tmp_path / "tiny_mssa.py"
    config.write_text("import sys\nsys.path.insert(0, {!r})\nfrom test_convert import _configs\n"
                      "model = _configs('mssa', upsample_mode='bilinear')[1]\n".format(TESTS_DIR))
    out = str(tmp_path / "out" / "converted.pth")
    assert convert.detectron2_fpn.main([fpn_source["pkl"], out, "--config", str(config), "--start-as-fpn",
                                        "model.backbone.upsample_mode=nearest"]) == 0
    printed = capsys.readouterr().out
    assert "new, not in the source" in printed and "backbone.fpn_aggregation2.* (" in printed and "wrote" in printed
    assert "new, not in the source (started as FPN's sum)" in printed  # not "left at their initialisation"
    model = instantiate(_configs("mssa")[1]).eval()
    model.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
    _assert_same_predictions(fpn_source["pred"], _predict(model))
    # bad input: one line, exit status 2, nothing written
    with pytest.raises(SystemExit) as e:
        convert.detectron2_fpn.main([fpn_source["pth"], str(tmp_path / "x.pth"), "--config", str(config),
                                     "model.roi_heads.num_classes=7"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "cls_score.weight (3, 32) vs (8, 32)" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(str(tmp_path / "x.pth"))
    src = str(tmp_path / "resnet18.pth")
    torch.save(_torchvision_resnet(18).state_dict(), src)
    assert convert.torchvision_resnet.main([src, str(tmp_path / "r18.pth")]) == 0
    assert "model.input_format=RGB" in capsys.readouterr().out
