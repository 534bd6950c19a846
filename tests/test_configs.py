"""Every config under ``configs/`` loads, builds its model, and says what its file name says.

- every ``.py`` config loads with ``LazyConfig.load``; the recipe files (one per row of the
  paper's tables, docs/DESIGN.md, "The experiments") define the LazyConfig contract of docs/DESIGN.md;
- every recipe's backbone is instantiated (catches a bad operator / level / pooling name) and
  its aggregation, attention levels and pooling match the file name (catches copy-paste);
  the full model is instantiated once per distinct model base (R-50 / R-101 / Swin-T /
  shapes R-18, Mask / Cascade), the others are checked by structure;
- the schedule in iterations is the paper's 12 epochs for COCO (117,266 images) and LVIS v1
  (99,388 images) at total batch 8, lr x 0.1 at epochs 8 and 11;
- a dumped config (``LazyConfig.save``) loads again and builds the same model;
- the yacs example builds through the registered backbone builder.
"""
import copy
import glob
import os
import re

import pytest
import torch

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.engine.schedule import resolve_epoch_schedule
from afa_d2.modeling import AttentionFPN, SwinBottomUp
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import GeneralizedRCNN, PanopticFPN, RetinaNet
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
ALL_PY = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.py"), recursive=True))
RECIPES = sorted(p for p in ALL_PY if os.sep + "common" + os.sep not in p and os.sep + "finetune" + os.sep not in p)
FINETUNE = sorted(p for p in ALL_PY if os.sep + os.path.join("COCO", "finetune") + os.sep in p)
SHAPES_FINETUNE = sorted(p for p in ALL_PY if os.sep + os.path.join("shapes", "finetune") + os.sep in p)
YAML = os.path.join(CONFIG_DIR, "shapes", "mask_rcnn_R_18_msca.yaml")

# docs/DESIGN.md, "The experiments": one config per row of the paper's tables (paths under configs/).
PAPER_ROWS = {
    "Table 1": ["COCO/cascade_mask_rcnn_R_{}_{}_1x.py".format(d, op)
                for d in (50, 101) for op in ("sum", "concat", "mssa", "msca")],
    "Table 2": ["COCO/cascade_mask_rcnn_R_50_{}_1x_test_dev.py".format(op) for op in ("mssa", "msca")],
    "Table 3": ["{}/mask_rcnn_R_50_{}_1x.py".format(ds, op)
                for ds in ("COCO", "LVIS") for op in ("sum", "mssa", "msca")],
    "Table 4": ["COCO/cascade_mask_rcnn_R_50_mssa_{}_1x.py".format(lv) for lv in ("p5", "p4p5", "p3p4p5")]
    + ["COCO/cascade_mask_rcnn_R_50_mssa_1x.py"],
    "Table 5": ["COCO/cascade_mask_rcnn_R_50_mssa_{}_1x.py".format(p) for p in ("single_scale", "adaptive")]
    + ["COCO/cascade_mask_rcnn_R_50_mssa_1x.py"],
    "Table 6": ["COCO/cascade_mask_rcnn_swin_T_{}_1x.py".format(op) for op in ("sum", "mssa")],
}
SHAPES_ROWS = ["shapes/mask_rcnn_R_18_{}.py".format(op) for op in ("sum", "concat", "mssa", "msca")] + [
    "shapes/cascade_mask_rcnn_R_18_{}.py".format(op) for op in ("sum", "mssa", "msca")
]
# docs/DESIGN.md, "Beyond the paper's two detectors": sum / MSSA / MSCA under four more detectors.
DETECTOR_ROWS = ["COCO/{}_R_50_{}_1x.py".format(arch, op) for arch in ("retinanet", "fcos", "panoptic_fpn",
                                                                      "keypoint_rcnn")
                 for op in ("sum", "mssa", "msca")]
DETECTOR_ROWS += ["shapes/{}_R_18_{}.py".format(arch, op) for arch in ("retinanet", "fcos")
                  for op in ("sum", "mssa", "msca")]

# arch -> (meta-architecture, RoI heads or None, bottom-up maps, pyramid levels out, (train, test) data or None)
RES2_5, RES3_5 = ["res2", "res3", "res4", "res5"], ["res3", "res4", "res5"]
ARCHS = {
    "mask_rcnn": (GeneralizedRCNN, StandardROIHeads, RES2_5, ["p2", "p3", "p4", "p5", "p6"], None),
    "cascade_mask_rcnn": (GeneralizedRCNN, CascadeROIHeads, RES2_5, ["p2", "p3", "p4", "p5", "p6"], None),
    "keypoint_rcnn": (GeneralizedRCNN, StandardROIHeads, RES2_5, ["p2", "p3", "p4", "p5", "p6"],
                      ("keypoints_coco_2017_train", "keypoints_coco_2017_val")),
    "panoptic_fpn": (PanopticFPN, StandardROIHeads, RES2_5, ["p2", "p3", "p4", "p5", "p6"],
                     ("coco_2017_train_panoptic_separated", "coco_2017_val_panoptic_separated")),
    "retinanet": (RetinaNet, None, RES3_5, ["p3", "p4", "p5", "p6", "p7"], None),
    "fcos": (FCOS, None, RES3_5, ["p3", "p4", "p5", "p6", "p7"], None),
}

# <arch>_<backbone>_<op>[_<levels or pooling>][_<schedule>][_test_dev]
NAME_RE = re.compile(
    r"^(?P<arch>mask_rcnn|cascade_mask_rcnn|retinanet|fcos|panoptic_fpn|keypoint_rcnn)_(?P<backbone>R_18|R_50|R_101|swin_T)_(?P<op>sum|concat|mssa|msca)"
    r"(?:_(?P<levels>p5|p4p5|p3p4p5))?(?:_(?P<pooling>single_scale|adaptive))?(?:_(?P<schedule>1x))?"
    r"(?P<test_dev>_test_dev)?$"
)
DATASETS = {  # folder -> (train set, test set, classes, images per epoch)
    "COCO": ("coco_2017_train", "coco_2017_val", 80, 117266),
    "LVIS": ("lvis_v1_train", "lvis_v1_val", 1203, 99388),
    "shapes": ("shapes_train", "shapes_val", 13, None),
}


def _rel(path):
    return os.path.relpath(path, CONFIG_DIR)


def _folder(path):
    return _rel(path).split(os.sep)[0]


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


_LOADED = {}


def load(path):
    """LazyConfig.load, cached: tests modify copies only."""
    if path not in _LOADED:
        _LOADED[path] = LazyConfig.load(path)
    return copy.deepcopy(_LOADED[path])


def _levels(arch):
    """The pyramid levels of the bottom-up maps (the top block adds the rest): p2..p5 or p3..p5."""
    return ["p" + f[len("res"):] for f in ARCHS[arch][2]]


def expected(path):
    m = NAME_RE.match(_stem(path))
    assert m, "{}: file name does not follow <arch>_<backbone>_<op>[_levels|_pooling]_<schedule>".format(_rel(path))
    e = m.groupdict()
    every_level = _levels(e["arch"])
    levels = {None: every_level, "p5": ["p5"], "p4p5": ["p4", "p5"], "p3p4p5": ["p3", "p4", "p5"]}
    e["levels"] = levels[e["levels"]]
    e["pooling"] = e["pooling"] or "multi_scale"
    return e


# ----------------------------------------------------------------------------- inventory
def test_every_paper_row_and_shapes_row_has_a_config():
    missing = [(table, row) for table, rows in PAPER_ROWS.items() for row in rows
               if not os.path.isfile(os.path.join(CONFIG_DIR, row))]
    missing += [("shapes", row) for row in SHAPES_ROWS if not os.path.isfile(os.path.join(CONFIG_DIR, row))]
    missing += [("detectors", row) for row in DETECTOR_ROWS if not os.path.isfile(os.path.join(CONFIG_DIR, row))]
    assert not missing, "configs missing for: {}".format(missing)
    assert os.path.isfile(YAML), "the yacs example {} is missing".format(YAML)


def test_readme_lists_every_recipe():
    with open(os.path.join(CONFIG_DIR, "README.md")) as f:
        readme = f.read()
    missing = [_rel(p) for p in RECIPES if _stem(p) not in readme]
    assert not missing, "configs/README.md does not mention {}".format(missing)


def test_no_lambda_in_configs():
    """A dumped config with a lambda cannot be loaded again: functools.partial instead."""
    offenders = [_rel(p) for p in ALL_PY if re.search(r"\blambda\b", open(p).read())]
    assert not offenders, "lambda in {}".format(offenders)


@pytest.mark.parametrize("path", ALL_PY, ids=_rel)
def test_config_loads(path):
    cfg = load(path)
    assert len(cfg) > 0, "{} defines no config objects".format(_rel(path))


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipe_follows_the_contract_and_its_name(path):
    cfg = load(path)
    name, folder = _rel(path), _folder(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, "{} has no `{}`".format(name, key)
    for key in ("train", "test", "evaluator"):
        assert key in cfg.dataloader, "{} has no dataloader.{}".format(name, key)
    e = expected(path)

    meta, heads, features, _, data = ARCHS[e["arch"]]
    assert cfg.model._target_ is meta, name
    bb = cfg.model.backbone
    assert bb._target_ is AttentionFPN, name
    assert bb._get_node("in_features")._value() == "${.bottom_up.out_features}", "{}: in_features is not a reference".format(name)
    assert list(bb.bottom_up.out_features) == features, name
    assert bb.aggregation == e["op"], "{}: aggregation {!r}, file name says {!r}".format(name, bb.aggregation, e["op"])
    assert list(bb.attention_levels) == e["levels"], "{}: attention_levels {}".format(name, bb.attention_levels)
    assert bb.pooling == e["pooling"], "{}: pooling {!r}".format(name, bb.pooling)
    if heads is not None:
        assert cfg.model.roi_heads._target_ is heads, name
        assert ("keypoint_head" in cfg.model.roi_heads) == (e["arch"] == "keypoint_rcnn"), name

    train_set, test_set, num_classes, images = DATASETS[folder]
    if data is not None:  # keypoints, panoptic: their own COCO splits, counted at start-up
        (train_set, test_set), images = data, None
    if e["arch"] == "keypoint_rcnn":
        num_classes = 1
    if e["test_dev"]:
        test_set = "coco_2017_test-dev"
    assert cfg.dataloader.train.dataset.names == train_set, name
    assert cfg.dataloader.test.dataset.names == test_set, name
    assert (cfg.model.roi_heads.num_classes if heads else cfg.model.num_classes) == num_classes, name
    assert cfg.train.images_per_epoch == images, name
    assert cfg.train.output_dir.replace("\\", "/").endswith("{}/{}".format(folder, _stem(path))), (
        "{}: output_dir {!r} does not name the config".format(name, cfg.train.output_dir))
    assert cfg.train.max_iter is None, "{}: the schedule is in epochs (train.max_iter is resolved)".format(name)
    if heads is None:  # boxes only: no mask is read
        assert cfg.dataloader.train.mapper.use_instance_mask is False, name

    opt = cfg.optimizer
    assert opt._target_ is torch.optim.AdamW, name
    assert list(opt.betas) == [0.9, 0.99] and opt.weight_decay == 0.05, name
    assert opt.params.weight_decay_norm == 0.0 and opt.params.weight_decay_bias == 0.0, name
    if heads is not None:
        assert cfg.model.proposal_generator.nms_thresh == 0.7, name

    if folder == "shapes":  # small-scale, from scratch: trainable norms, CPU
        assert bb.bottom_up._target_ is ResNet, name
        norms = {bb.bottom_up.stem.norm} | {s.norm for s in bb.bottom_up.stages}
        assert norms == {"GN"}, "{}: from scratch needs trainable norms, got {}".format(name, norms)
        assert cfg.train.init_checkpoint == "" and cfg.train.device == "cpu", name
        assert cfg.dataloader.train.total_batch_size <= 8, name
        return
    # the paper's recipe (docs/DESIGN.md, "The recipe")
    assert cfg.dataloader.train.total_batch_size == 8, name
    assert opt.lr == 1e-4, name
    assert cfg.train.epochs == 12 and list(cfg.lr_multiplier.decay_epochs) == [8, 11], name
    aug = cfg.dataloader.train.mapper.augmentations
    assert aug[0].short_edge_length == 800 and aug[0].max_size == 1333 and aug[1].horizontal, name
    if heads is None:
        topk = {cfg.model.get("max_detections_per_image", 100)}  # detectron2's default, 100
    else:
        predictors = cfg.model.roi_heads.get("box_predictors") or [cfg.model.roi_heads.box_predictor]
        topk = {p.test_topk_per_image for p in predictors}
    assert topk == ({300} if folder == "LVIS" else {100}), "{}: detections per image {}".format(name, topk)
    if e["backbone"].startswith("R_"):
        depth = int(e["backbone"][2:])
        assert bb.bottom_up.stages.depth == depth, name
        assert bb.bottom_up.stem.norm == "FrozenBN" and bb.bottom_up.stages.norm == "FrozenBN", name
        if e["arch"] not in ("mask_rcnn", "cascade_mask_rcnn"):  # the detectors' own setting (detectron2's)
            assert bb.bottom_up.freeze_at == 2, name
        if not e["test_dev"]:
            assert cfg.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-{}.pkl".format(depth), name
        else:
            assert cfg.train.init_checkpoint.endswith("cascade_mask_rcnn_R_50_{}_1x/model_final.pth".format(e["op"]))
    else:
        assert bb.bottom_up._target_ is SwinBottomUp, name
        assert cfg.model.input_format == "RGB" and cfg.dataloader.train.mapper.image_format == "RGB", name


def _attention_pooling(backbone, level):
    """The pooling types of the MS-Att modules at ``level`` of a built AttentionFPN."""
    stage = int(level[1:])
    agg = getattr(backbone, "fpn_aggregation{}".format(stage))
    return {m.pooling for m in agg.modules() if hasattr(m, "pooling") and hasattr(m, "pool_strides")}


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipe_backbone_builds_as_named(path):
    cfg = load(path)
    e = expected(path)
    backbone = instantiate(cfg.model.backbone)
    assert isinstance(backbone, AttentionFPN)
    assert backbone._out_features == ARCHS[e["arch"]][3]
    for level in _levels(e["arch"]):
        op = e["op"] if level in e["levels"] else "sum"
        assert backbone.level_ops[level] == op, "{}: {} uses {!r}, expected {!r}".format(
            _rel(path), level, backbone.level_ops[level], op)
        pools = _attention_pooling(backbone, level)
        if op in ("mssa", "msca"):
            assert pools == {e["pooling"]}, "{}: {} pools {}".format(_rel(path), level, pools)
        else:
            assert not pools, "{}: {} has attention but uses {!r}".format(_rel(path), level, op)


def _model_base(path):
    e = expected(path)
    return (_folder(path) == "shapes", e["arch"], e["backbone"])


_BASES = {}
for _p in RECIPES:
    if NAME_RE.match(_stem(_p)):
        _BASES.setdefault(_model_base(_p), _p)


@pytest.mark.parametrize("path", sorted(_BASES.values()), ids=_rel)
def test_model_base_instantiates_and_runs(path):
    """One full model per distinct base; a forward pass in eval mode on a small odd-sized image."""
    cfg = load(path)
    model = instantiate(cfg.model).eval()
    e = expected(path)
    meta, heads = ARCHS[e["arch"]][:2]
    assert type(model) is meta
    if heads is not None:
        assert type(model.roi_heads) is heads
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 1e6
    if _folder(path) == "shapes":  # small enough to run here
        with torch.no_grad():
            out = model([{"image": torch.randint(0, 255, (3, 97, 131), dtype=torch.uint8), "height": 97, "width": 131}])
        assert out[0]["instances"].image_size == (97, 131)


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("folder,images,ipe", [("COCO", 117266, 14659), ("LVIS", 99388, 12424)])
def test_schedule_is_the_papers_12_epochs(folder, images, ipe):
    """12 epochs at batch 8; lr x 0.1 at epochs 8 and 11; 1000 warm-up iterations."""
    paths = [p for p in RECIPES if _folder(p) == folder and load(p).train.images_per_epoch is not None]
    assert paths
    for path in paths:
        cfg = load(path)
        info = resolve_epoch_schedule(cfg)
        assert (info.images_per_epoch, info.total_batch, info.iters_per_epoch) == (images, 8, ipe), _rel(path)
        assert info.max_iter == 12 * ipe == cfg.train.max_iter, _rel(path)
        assert info.decay_iters == [8 * ipe, 11 * ipe], _rel(path)
        assert info.warmup_iters == 1000, _rel(path)
        assert cfg.train.checkpointer.period == ipe and cfg.train.eval_period == 12 * ipe, _rel(path)
        lr = instantiate(cfg.lr_multiplier)
        assert lr.at_iter(0) == pytest.approx(0.001)
        assert lr.at_iter(8 * ipe - 1) == pytest.approx(1.0)
        assert lr.at_iter(8 * ipe) == pytest.approx(0.1)
        assert lr.at_iter(11 * ipe) == pytest.approx(0.01)
        assert str(ipe) in info.summary()
        # the iterations themselves, written out: 12 x 14659 = 175908 (COCO), 12 x 12424 = 149088 (LVIS)
        expected_iters = {"COCO": (175908, [117272, 161249]), "LVIS": (149088, [99392, 136664])}[folder]
        assert (info.max_iter, info.decay_iters) == expected_iters, _rel(path)


def test_shapes_schedule():
    """4 epochs of 2000 images at batch 2 = 4000 iterations; the lr decays at 0.85 and 0.95 of them,
    later than the paper's 8/12 and 11/12 on purpose (see the config's docstring)."""
    cfg = load(os.path.join(CONFIG_DIR, "shapes", "mask_rcnn_R_18_msca.py"))
    info = resolve_epoch_schedule(cfg, num_images=2000)
    assert (info.iters_per_epoch, info.max_iter) == (1000, 4000)
    assert info.decay_iters == [3400, 3800]


@pytest.mark.parametrize("arch", ["mask_rcnn", "cascade_mask_rcnn"])
def test_shapes_rows_share_the_small_recipe(arch):
    """Every shapes row, cascade included, runs the recipe of mask_rcnn_R_18_sum.py: its pyramid
    width, RoI sampling, RPN proposal counts and RoIAlign sampling (the cascade config copies the
    poolers' one by one)."""
    base = load(os.path.join(CONFIG_DIR, "shapes", "mask_rcnn_R_18_sum.py"))
    for op in ("sum", "msca"):
        cfg = load(os.path.join(CONFIG_DIR, "shapes", "{}_R_18_{}.py".format(arch, op)))
        assert cfg.model.backbone.out_channels == base.model.backbone.out_channels == 64
        assert cfg.model.roi_heads.batch_size_per_image == base.model.roi_heads.batch_size_per_image == 64
        for pooler in ("box_pooler", "mask_pooler"):
            assert cfg.model.roi_heads[pooler].sampling_ratio == 1
        model = instantiate(cfg.model)
        assert model.roi_heads.box_pooler.level_poolers[0].sampling_ratio == 1
        assert model.roi_heads.mask_pooler.level_poolers[0].sampling_ratio == 1
        rpn = model.proposal_generator
        assert (rpn.pre_nms_topk[True], rpn.post_nms_topk[True]) == (500, 250)  # training
        assert (rpn.pre_nms_topk[False], rpn.post_nms_topk[False]) == (500, 300)  # inference


# ----------------------------------------------------------------------------- dump / reload
@pytest.mark.parametrize("name", [
    "COCO/cascade_mask_rcnn_swin_T_mssa_1x.py",
    "COCO/cascade_mask_rcnn_R_50_mssa_1x_test_dev.py",
    "LVIS/mask_rcnn_R_50_msca_1x.py",
    "shapes/cascade_mask_rcnn_R_18_msca.py",
    "COCO/finetune/mask_rcnn_R_50_mssa_from_fpn.py",
])
def test_dumped_config_loads_again(name, tmp_path):
    path = os.path.join(CONFIG_DIR, name)
    cfg = load(path)
    out = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, out)
    assert not os.path.exists(out + ".pkl"), "{} could not be dumped as yaml".format(name)
    again = LazyConfig.load(out)
    assert sorted(again.keys()) == sorted(cfg.keys())
    LazyConfig.save(again, str(tmp_path / "again.yaml"))
    with open(out) as f, open(str(tmp_path / "again.yaml")) as g:
        assert f.read() == g.read(), "{}: the reloaded config dumps differently".format(name)
    info, info_again = resolve_epoch_schedule(cfg, num_images=2000), resolve_epoch_schedule(again, num_images=2000)
    assert info_again.max_iter == info.max_iter and info_again.decay_iters == info.decay_iters
    assert again.dataloader.evaluator._get_node("dataset_name")._value() == "${..test.dataset.names}"
    assert again.dataloader.evaluator.dataset_name == cfg.dataloader.test.dataset.names
    backbone = instantiate(again.model.backbone)
    assert backbone.level_ops == instantiate(cfg.model.backbone).level_ops
    if name.startswith("shapes"):
        assert sum(p.numel() for p in instantiate(again.model).parameters()) == sum(
            p.numel() for p in instantiate(cfg.model).parameters())


# ----------------------------------------------------------------------------- yacs
def test_yacs_example_builds_through_the_registry():
    from afa_d2.config import add_afa_config
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    add_afa_config(cfg)
    cfg.merge_from_file(YAML)
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_attention_fpn_backbone"
    assert cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.DATASETS.TEST == ("shapes_val",)
    model = build_model(cfg).eval()
    assert isinstance(model.backbone, AttentionFPN)
    assert set(model.backbone.level_ops.values()) == {"msca"}
    assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.WEIGHTS == ""
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 97, 131), dtype=torch.uint8), "height": 97, "width": 131}])
    assert out[0]["instances"].image_size == (97, 131)


# ----------------------------------------------------------------------------- fine-tuning from FPN
D2_FPN_CHECKPOINT = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/137260431/model_final_a54504.pkl"
_D2_SHAPES = {}


def _detectron2_fpn_shapes():
    """Key -> shape of detectron2's own Mask R-CNN R-50 FPN (the architecture of D2_FPN_CHECKPOINT)."""
    if not _D2_SHAPES:
        from detectron2 import model_zoo

        model = instantiate(model_zoo.get_config("common/models/mask_rcnn_fpn.py").model)
        _D2_SHAPES.update({k: tuple(v.shape) for k, v in model.state_dict().items()})
    return _D2_SHAPES


def test_one_finetune_config_per_operator():
    assert [_stem(p) for p in FINETUNE] == ["mask_rcnn_R_50_{}_from_fpn".format(op)
                                            for op in ("concat", "msca", "mssa", "sum")]
    # the name is a recipe's name with the schedule "from_fpn"
    assert all(NAME_RE.match(_stem(p)[: -len("_from_fpn")]) for p in FINETUNE)
    with open(os.path.join(CONFIG_DIR, "README.md")) as f:
        readme = f.read()
    assert all(_rel(p).replace(os.sep, "/") in readme for p in FINETUNE), "configs/README.md: fine-tuning configs"


@pytest.mark.parametrize("path", FINETUNE, ids=_rel)
def test_finetune_config_starts_from_detectron2_fpn(path):
    """Each fine-tuning config: detectron2's FPN checkpoint, whose every tensor has a place of the same
    shape in the model (only the operator's blocks are new), 3 epochs with the decay after 2, the new
    blocks at the base lr and the loaded weights at a tenth, no weight decay on norms and biases, and
    the start its operator allows."""
    from afa_d2.solver import finetune_param_groups

    cfg = load(path)
    op = _stem(path).split("_")[4]
    assert cfg.model.backbone.aggregation == op
    assert cfg.train.init_checkpoint == D2_FPN_CHECKPOINT
    assert cfg.train.output_dir.endswith("COCO/finetune/" + _stem(path))
    info = resolve_epoch_schedule(cfg)
    assert (info.max_iter, info.decay_iters, info.warmup_iters) == (43977, [29318], 500)
    assert cfg.model.backbone.get("start_as_fpn", False) == (op in ("mssa", "concat"))
    if op == "mssa":
        assert cfg.model.backbone.upsample_mode == "nearest"  # the exact FPN start
    model = instantiate(cfg.model)
    assert isinstance(model.backbone, AttentionFPN) and set(model.backbone.level_ops.values()) == {op}
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shared = {k: v for k, v in state.items() if not k.startswith("backbone.fpn_aggregation")}
    assert shared == _detectron2_fpn_shapes(), "the checkpoint's architecture differs from the model's"
    assert (list(cfg.model.pixel_std), cfg.model.input_format) == ([1.0, 1.0, 1.0], "BGR")  # MSRA R-50, as trained
    if op == "mssa":
        assert all(float(model.backbone.get_submodule("fpn_aggregation{}".format(i)).attn.mlp.fc2.weight.abs().sum())
                   == 0 for i in (2, 3, 4, 5))
    if op == "concat":
        fuse = model.backbone.fpn_aggregation2.fuse.weight[:, :, 0, 0]
        assert torch.equal(fuse, torch.cat([torch.eye(256), torch.eye(256)], 1))
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert cfg.optimizer.params._target_ is finetune_param_groups
    lrs, wds = {}, {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lrs[names[id(p)]], wds[names[id(p)]] = group["lr"], group["weight_decay"]
    assert set(lrs) == {n for n, p in model.named_parameters() if p.requires_grad}
    new = {n for n in lrs if n.startswith("backbone.fpn_aggregation")}
    assert bool(new) == (op != "sum")
    assert all(lrs[n] == 1e-4 for n in new)
    assert all(abs(lrs[n] - 1e-5) < 1e-12 for n in lrs if n not in new)
    assert all(wds[n] == 0.0 for n in lrs if n.endswith(".bias") or ".norm" in n)
    assert wds["backbone.fpn_lateral2.weight"] == 0.05


@pytest.mark.parametrize("path", SHAPES_FINETUNE, ids=_rel)
def test_shapes_finetune_config_continues_a_trained_sum_model(path):
    """The study's fine-tuning configs: a trained shapes sum-up model loads with only the operator's blocks
    new; MSSA and concat then compute exactly what it computed (nearest Up), MSCA starts fresh; the new
    blocks train at the shapes lr, the loaded weights at a tenth; the lr decays after two thirds."""
    from afa_d2.solver import finetune_param_groups

    op = _stem(path).split("_")[4]
    cfg = load(path)
    base = load(os.path.join(CONFIG_DIR, "shapes", "mask_rcnn_R_18_sum.py"))
    assert cfg.model.backbone.aggregation == op and cfg.train.init_checkpoint == ""
    assert cfg.model.backbone.get("start_as_fpn", False) == (op in ("mssa", "concat"))
    assert [float(e) / float(cfg.train.epochs) for e in cfg.lr_multiplier.decay_epochs] == [pytest.approx(2 / 3)]
    torch.manual_seed(0)
    trained = instantiate(base.model).eval()
    with torch.no_grad():  # a "trained" model: every weight moved away from its initialisation
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model = instantiate(cfg.model).eval()
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("backbone.fpn_aggregation") for k in missing)
    assert bool(missing) == (op != "sum")  # sum-up has no block of its own
    x = torch.rand(1, 3, 96, 131) * 255
    with torch.no_grad():
        want, got = trained.backbone(x), model.backbone(x)
    for level in want:
        same = torch.allclose(got[level], want[level], atol=1e-5)
        assert same == (op != "msca"), "{} at {}: start {} the sum-up model".format(
            op, level, "differs from" if op != "msca" else "equals")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert cfg.optimizer.params._target_ is finetune_param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert all(lr == pytest.approx(1e-3 if n.startswith("backbone.fpn_aggregation") else 1e-4) for n, lr in lrs.items())
