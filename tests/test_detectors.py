"""The attention FPN under detectron2's other FPN detectors: RetinaNet, FCOS, Panoptic FPN, Keypoint R-CNN.

Per detector, on small models built from the shipped configs (``configs/common/models/*_afpn.py``) and
detectron2's own (``common/models/*.py``): with "sum" the detector is detectron2's (same state dict, same
outputs within 1e-5, the same ``output_shape``); with MSSA / MSCA one training step on 200x249 images
(one of them without instances) gives finite losses and finite gradients on every parameter of the
operators' blocks; inference with nothing detected works; a detectron2 checkpoint converts (every shared
weight loaded, the new blocks reported; MSSA started as FPN gives detectron2's detections); the yacs
registry path builds the same. The neck's checks for these pyramids (levels, pooling strides, top block)
are at the end. Runs on the registry copy and on official detectron2 alike.
"""
import math

import pytest
import torch

import afa_d2  # noqa: F401  (before detectron2)
from _engine_fixtures import build_with_trained_norms, one_thread, tiny_resnet_stages  # noqa: F401  (one_thread: autouse)
from afa_d2.model_zoo import get_config
from afa_d2.model_zoo.convert import convert_detectron2_fpn
from afa_d2.modeling import AttentionFPN, default_pool_strides
from detectron2 import model_zoo as d2_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

# detector -> (detectron2's model config, ours)
DETECTORS = {
    "retinanet": ("common/models/retinanet.py", "common/models/retinanet_afpn.py"),
    "fcos": ("common/models/fcos.py", "common/models/fcos_afpn.py"),
    "panoptic_fpn": ("common/models/panoptic_fpn.py", "common/models/panoptic_fpn_afpn.py"),
    "keypoint_rcnn": ("common/models/keypoint_rcnn_fpn.py", "common/models/keypoint_rcnn_afpn.py"),
}
ONE_STAGE = ("retinanet", "fcos")
CH = 32  # the pyramid's width (GroupNorm(32) in FCOS's head and the semantic head)
NUM_CLASSES = 3
STUFF_CLASSES = 4
AGG = "backbone.fpn_aggregation"


def _shrink(model, kind):
    """A few-thousand-parameter version of the detector: tiny ResNet, CH channels, small heads."""
    features = ["res3", "res4", "res5"] if kind in ONE_STAGE else ["res2", "res3", "res4", "res5"]
    model.backbone.bottom_up = L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=8, norm="BN"),
        stages=L(tiny_resnet_stages)(norm="BN"),
        out_features=features,
    )
    model.backbone.out_channels = CH
    if kind in ONE_STAGE:
        top = model.backbone.top_block
        top.in_channels = CH if top.get("in_feature", "res5") == "p5" else 64  # res5 of the tiny ResNet
        top.out_channels = CH
        model.head.input_shape = [ShapeSpec(channels=CH)] * 5
        model.head.conv_dims = [CH, CH]
        model.num_classes = NUM_CLASSES
        if "anchor_generator" in model:  # RetinaNet (FCOS has none)
            model.anchor_generator.sizes = [[8, 10, 12], [16, 20, 25], [32, 40, 50], [64, 80, 100], [128, 160, 200]]
        model.test_score_thresh = 0.001  # random weights: keep detections to compare
        return model
    pg = model.proposal_generator
    pg.head.in_channels = CH
    pg.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
    pg.pre_nms_topk = (200, 100)
    pg.post_nms_topk = (40, 40)
    rh = model.roi_heads
    rh.batch_size_per_image = 32
    rh.box_head.input_shape = ShapeSpec(channels=CH, height=7, width=7)
    rh.box_head.fc_dims = [32, 32]
    rh.box_predictor.input_shape = ShapeSpec(channels=32)
    rh.box_predictor.test_score_thresh = 0.0
    if kind == "panoptic_fpn":
        rh.num_classes = NUM_CLASSES
        rh.mask_head.input_shape = ShapeSpec(channels=CH, width=14, height=14)
        rh.mask_head.conv_dims = [CH, CH]
        model.sem_seg_head.conv_dims = CH
        model.sem_seg_head.num_classes = STUFF_CLASSES
    else:  # keypoints: one class (person), 17 keypoints
        rh.keypoint_head.input_shape = ShapeSpec(channels=CH, width=14, height=14)
        rh.keypoint_head.conv_dims = [CH, CH]
    return model


def stock_config(kind):
    return _shrink(d2_zoo.get_config(DETECTORS[kind][0]).model, kind)


def afpn_config(kind, op="sum", **backbone):
    cfg = _shrink(get_config(DETECTORS[kind][1]).model, kind)
    cfg.backbone.aggregation = op
    cfg.backbone.update(backbone)
    return cfg


def _build(cfg, seed=0):
    return build_with_trained_norms(cfg, seed)


def _images(sizes=((97, 131), (128, 96))):
    g = torch.Generator().manual_seed(3)
    return [{"image": torch.rand(3, h, w, generator=g) * 255, "height": h, "width": w} for h, w in sizes]


def _flat(outputs):
    """Every tensor of detectron2's outputs, by a stable name."""
    flat = {}
    for i, out in enumerate(outputs):
        for key, value in out.items():
            if isinstance(value, Instances):
                for field, v in value.get_fields().items():
                    flat["{}/{}/{}".format(i, key, field)] = v.tensor if hasattr(v, "tensor") else v
            elif isinstance(value, tuple):  # panoptic_seg: (segment ids, segments info)
                flat["{}/{}".format(i, key)] = value[0]
                flat["{}/{}/info".format(i, key)] = torch.tensor(
                    [[s["id"], s["category_id"], int(s["isthing"])] for s in value[1]], dtype=torch.float32)
            else:
                flat["{}/{}".format(i, key)] = value
    return flat


def _predict(model):
    with torch.no_grad():
        return _flat(model(_images()))


def _assert_same(a, b, atol=1e-5, keypoint_rtol=None):
    """Every output within ``atol`` (relative for values above 1); keypoints and their heatmaps within
    ``keypoint_rtol`` when given (their logits are steep with random weights: a 1e-6 relative change of the
    pyramid moves them by 4e-4 relative)."""
    assert a.keys() == b.keys()
    instance_counts = [v.shape[0] for k, v in a.items() if k.endswith("/scores")]
    assert instance_counts and min(instance_counts) > 0, "no detections to compare"
    for k in a:
        assert a[k].shape == b[k].shape, k
        x, y = a[k].float(), b[k].float()  # pasted masks are bool: then exactly equal
        if keypoint_rtol and "keypoint" in k:
            assert torch.allclose(x, y, rtol=keypoint_rtol, atol=10 * keypoint_rtol), k
        elif x.numel():
            scale = max(1.0, x.abs().max().item())  # boxes in pixels: relative
            assert (x - y).abs().max().item() <= atol * scale, k


# ----------------------------------------------------------------------------- sum is detectron2's model
@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_sum_equals_detectron2s_detector(kind):
    stock = _build(stock_config(kind))
    ours = _build(afpn_config(kind), seed=1)
    assert type(ours) is type(stock) and isinstance(ours.backbone, AttentionFPN) and isinstance(stock.backbone, FPN)
    ours.load_state_dict(stock.state_dict())  # strict: the same names and shapes
    assert ours.backbone.output_shape() == stock.backbone.output_shape()
    assert ours.backbone.size_divisibility == stock.backbone.size_divisibility
    _assert_same(_predict(stock), _predict(ours))


# ----------------------------------------------------------------------------- attention: training and inference
def _instances(h, w, kind, n):
    inst = Instances((h, w))
    boxes = torch.tensor([[10.0, 12.0, 90.0, 110.0], [120.0, 40.0, 230.0, 170.0]])[:n]
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([2, 0])[:n] if kind != "keypoint_rcnn" else torch.zeros(n, dtype=torch.long)
    if kind == "panoptic_fpn":
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
    if kind == "keypoint_rcnn":
        g = torch.Generator().manual_seed(n)
        kp = torch.zeros(n, 17, 3)
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            kp[i, :, 0] = x0 + torch.rand(17, generator=g) * (x1 - x0)
            kp[i, :, 1] = y0 + torch.rand(17, generator=g) * (y1 - y0)
            kp[i, :, 2] = 2
        inst.gt_keypoints = Keypoints(kp)
    return inst


def _trains_on_an_empty_image(kind):
    """detectron2 v0.6's FCOS matches anchors with a max over the image's boxes, which fails on an image with
    none (later versions handle it); detectron2's training loaders leave such images out."""
    from detectron2.modeling.meta_arch.fcos import FCOS

    return kind != "fcos" or not hasattr(FCOS, "match_anchors")


def _training_batch(kind, h=200, w=249):
    g = torch.Generator().manual_seed(0)
    batch = []
    for n in (2, 0 if _trains_on_an_empty_image(kind) else 1):  # the second image has no instances
        sample = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
                  "instances": _instances(h, w, kind, n), "height": h, "width": w}
        if kind == "panoptic_fpn":
            sem = torch.randint(0, STUFF_CLASSES, (h, w), generator=g)
            sem[:20] = 255  # ignored pixels
            sample["sem_seg"] = sem
        batch.append(sample)
    return batch


@pytest.mark.parametrize("kind", sorted(DETECTORS))
@pytest.mark.parametrize("op", ["mssa", "msca"])
def test_attention_trains_one_step_on_odd_sizes(kind, op):
    model = _build(afpn_config(kind, op)).train()
    assert set(model.backbone.level_ops.values()) == {op}
    with EventStorage(0):
        losses = model(_training_batch(kind))
    assert losses
    for name, value in losses.items():
        assert math.isfinite(value.item()), "{} = {}".format(name, value.item())
    sum(losses.values()).backward()
    new = {n: p for n, p in model.named_parameters() if n.startswith(AGG)}
    assert new, "no operator blocks"
    for name, p in new.items():
        assert p.grad is not None, "no gradient reached " + name
        assert torch.isfinite(p.grad).all(), "non-finite gradient in " + name
    assert sum(p.grad.abs().sum().item() for p in new.values()) > 0


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_inference_with_nothing_detected(kind):
    cfg = afpn_config(kind, "msca")
    if kind in ONE_STAGE:
        cfg.test_score_thresh = 1.1  # no score passes
    else:
        cfg.roi_heads.box_predictor.test_score_thresh = 1.1
    model = _build(cfg)
    with torch.no_grad():
        out = model(_images(((200, 249),)))[0]
    assert len(out["instances"]) == 0 and out["instances"].image_size == (200, 249)
    if kind == "panoptic_fpn":
        assert out["sem_seg"].shape == (STUFF_CLASSES, 200, 249)
        assert out["panoptic_seg"][0].shape == (200, 249)
    if kind == "keypoint_rcnn":
        assert out["instances"].pred_keypoints.shape == (0, 17, 3)


# ----------------------------------------------------------------------------- converting detectron2's checkpoint
@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_detectron2_checkpoint_converts(kind):
    stock = _build(stock_config(kind))
    state = stock.state_dict()
    # MSSA started as FPN's sum, with FPN's nearest Up: detectron2's detections
    target = instantiate(afpn_config(kind, "mssa", upsample_mode="nearest"))
    converted, report = convert_detectron2_fpn(state, target, start_as_fpn=True)
    assert "start as FPN's sum" in report.describe()
    assert set(report.loaded) == set(state)
    assert set(report.new) == {k for k in converted if k.startswith(AGG)} != set()
    assert report.missing == [] and report.dropped == [] and report.mismatched == []
    target.load_state_dict(converted)
    _assert_same(_predict(stock), _predict(target.eval()), keypoint_rtol=1e-3)
    # MSCA cannot start as the sum: every shared weight loaded, its blocks fresh
    converted, report = convert_detectron2_fpn(state, instantiate(afpn_config(kind, "msca")))
    assert set(report.loaded) == set(state) and report.new and report.missing == []
    assert all(torch.equal(converted[k], state[k]) for k in state)


# ----------------------------------------------------------------------------- yacs
def _yacs(kind, backbone_name, op="sum"):
    from afa_d2.config import add_afa_config
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_afa_config(cfg)
    base = {"retinanet": "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
            "panoptic_fpn": "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
            "keypoint_rcnn": "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml"}[kind]
    cfg.merge_from_file(d2_zoo.get_config_file(base))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = backbone_name
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"  # normalises in eval mode too: no overflow through a random R-18
    cfg.MODEL.FPN.OUT_CHANNELS = CH
    cfg.MODEL.AFA.AGGREGATION = op
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.001
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1 if kind == "keypoint_rcnn" else NUM_CLASSES
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 40
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = STUFF_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = CH
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (CH, CH)
    return cfg


@pytest.mark.parametrize("kind,stock_name,ours_name", [
    ("retinanet", "build_retinanet_resnet_fpn_backbone", "build_retinanet_resnet_attention_fpn_backbone"),
    ("panoptic_fpn", "build_resnet_fpn_backbone", "build_resnet_attention_fpn_backbone"),
    ("keypoint_rcnn", "build_resnet_fpn_backbone", "build_resnet_attention_fpn_backbone"),
])
def test_yacs_registry_path(kind, stock_name, ours_name):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    stock = build_model(_yacs(kind, stock_name)).eval()
    ours = build_model(_yacs(kind, ours_name)).eval()
    assert isinstance(ours.backbone, AttentionFPN)
    ours.load_state_dict(stock.state_dict())
    assert ours.backbone.output_shape() == stock.backbone.output_shape()
    _assert_same(_predict(stock), _predict(ours))
    attention = build_model(_yacs(kind, ours_name, op="msca")).eval()
    levels = ("p3", "p4", "p5") if kind == "retinanet" else ("p2", "p3", "p4", "p5")
    assert attention.backbone.level_ops == {lvl: "msca" for lvl in levels}
    assert [attention.backbone.get_submodule(AGG[len("backbone."):] + lvl[1:]).attn.pool_strides[0]
            for lvl in levels] == default_pool_strides([2 ** int(lvl[1:]) for lvl in levels])
    with torch.no_grad():
        assert len(attention(_images(((200, 249),)))) == 1


# ----------------------------------------------------------------------------- the neck's checks for these pyramids
def _res3_pyramid(**kw):
    bottom_up = instantiate(L(ResNet)(stem=L(BasicStem)(in_channels=3, out_channels=8, norm="BN"),
                                      stages=L(tiny_resnet_stages)(norm="BN"),
                                      out_features=["res3", "res4", "res5"]))
    kw.setdefault("top_block", LastLevelP6P7(64, 16))
    return AttentionFPN(bottom_up, ["res3", "res4", "res5"], 16, **kw)


def test_pyramid_from_p3_derives_its_levels_and_strides():
    neck = _res3_pyramid(aggregation="msca")
    assert neck.level_ops == {"p3": "msca", "p4": "msca", "p5": "msca"}
    assert [neck.fpn_aggregation3.attn.pool_strides, neck.fpn_aggregation5.attn.pool_strides] == [(8, 16), (2, 4)]
    assert {k: v.stride for k, v in neck.output_shape().items()} == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    out = neck(torch.zeros(1, 3, 200, 249))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p3": (25, 32), "p4": (13, 16), "p5": (7, 8), "p6": (4, 4), "p7": (2, 2)}
    assert default_pool_strides([4, 8, 16, 32]) == [16, 8, 4, 2]  # the paper's, for p2..p5
    fed_from_p5 = _res3_pyramid(aggregation="mssa", top_block=LastLevelP6P7(16, 16, in_feature="p5"))
    assert fed_from_p5(torch.zeros(1, 3, 64, 64))["p7"].shape == (1, 16, 1, 1)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(attention_levels=["p2", "p3"]), r"'p2' in attention_levels; this pyramid's levels: \['p3', 'p4', 'p5'\]"),
    (dict(aggregation={"p6": "mssa"}), r"'p6' in aggregation; this pyramid's levels: \['p3', 'p4', 'p5'\]"),
    (dict(pool_strides=[16, 8, 4, 2]), r"\[16, 8, 4, 2\] has 4 entries.*levels \['p3', 'p4', 'p5'\].*\[8, 4, 2\]"),
    (dict(top_block=LastLevelP6P7(64, 16, in_feature="p6")), r"reads 'p6'.*valid: \['p5', 'res5'\]"),
    (dict(top_block=LastLevelP6P7(64, 16, in_feature="p4")), r"reads 'p4'.*deepest stride 32"),
    (dict(top_block=LastLevelP6P7(2048, 16)), r"takes 2048 channels from 'res5', which has 64"),
    (dict(top_block=LastLevelP6P7(64, 16, in_feature="p5")), r"takes 64 channels from 'p5', which has 16"),
    (dict(top_block=torch.nn.Identity()), r"top_block Identity has no 'in_feature'"),
])
def test_bad_pyramid_choices_are_refused_at_construction(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _res3_pyramid(**kwargs)


def test_max_pool_top_block_needs_p5():
    bottom_up = instantiate(L(ResNet)(stem=L(BasicStem)(in_channels=3, out_channels=8, norm="BN"),
                                      stages=L(tiny_resnet_stages)(norm="BN"), out_features=["res2", "res3", "res4"]))
    with pytest.raises(ValueError, match=r"LastLevelMaxPool reads 'p5'.*valid: \['p4', 'res4'\]"):
        AttentionFPN(bottom_up, ["res2", "res3", "res4"], 16, top_block=LastLevelMaxPool())
