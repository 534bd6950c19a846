"""Tiny models, a tiny synthetic dataset and LazyConfigs for the engine / train_net.py tests.

Not a test module: imported by tests/test_train_net.py and tests/test_faults.py, and by the
config files those tests write (train_net.py runs them in subprocesses, and detectron2's
``launch`` re-loads them in every worker, so everything here is importable and deterministic).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from functools import partial
from typing import Dict, List

import numpy as np
import pytest
import torch
from torch import nn

import afa_d2  # noqa: F401  (compat patches before detectron2)
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.solver.build import get_default_optimizer_params
from detectron2.structures import BoxMode

from afa_d2.engine.schedule import epoch_lr_multiplier

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
IMAGE_HW = (64, 80)  # one orientation (w > h): aspect-ratio grouping never mixes buckets
CLASSES = ["box", "disk"]


# ---------------------------------------------------------------------------------------------
# data
def _disk_polygon(cx, cy, r, n=12) -> List[float]:
    pts = []
    for k in range(n):
        a = 2 * np.pi * k / n
        pts += [float(cx + r * np.cos(a)), float(cy + r * np.sin(a))]
    return pts


def tiny_dataset_dicts(root: str, n: int, identical: bool = False, seed: int = 0) -> List[Dict]:
    """``n`` images of two shapes each (a box and a disk), written to ``root`` on first use."""
    os.makedirs(root, exist_ok=True)
    h, w = IMAGE_HW
    dicts = []
    for i in range(n):
        rng = np.random.default_rng(seed if identical else seed * 100003 + i)
        path = os.path.join(root, "img_{:04d}.png".format(0 if identical else i))
        bx0, by0 = rng.integers(2, 30), rng.integers(2, 24)
        bw, bh = rng.integers(12, 30), rng.integers(12, 30)
        cx, cy, r = rng.integers(45, 65), rng.integers(20, 44), rng.integers(6, 14)
        if not os.path.isfile(path):
            from PIL import Image, ImageDraw

            img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 80, 3)))
            draw = ImageDraw.Draw(img)
            draw.rectangle([bx0, by0, bx0 + bw, by0 + bh], fill=(220, 40, 40))
            draw.polygon(_disk_polygon(cx, cy, r), fill=(40, 200, 60))
            tmp = path + ".tmp{}.png".format(os.getpid())
            img.save(tmp)
            os.replace(tmp, path)
        annos = [
            dict(bbox=[float(bx0), float(by0), float(bw), float(bh)], bbox_mode=BoxMode.XYWH_ABS, category_id=0,
                 segmentation=[[bx0, by0, bx0 + bw, by0, bx0 + bw, by0 + bh, bx0, by0 + bh]], iscrowd=0),
            dict(bbox=[float(cx - r), float(cy - r), float(2 * r), float(2 * r)], bbox_mode=BoxMode.XYWH_ABS,
                 category_id=1, segmentation=[_disk_polygon(cx, cy, r)], iscrowd=0),
        ]
        for a in annos:
            a["segmentation"] = [[float(v) for v in a["segmentation"][0]]]
        dicts.append(dict(file_name=path, image_id=i, height=h, width=w, annotations=annos))
    return dicts


def register_tiny(name: str, root: str, n: int, identical: bool = False, seed: int = 0) -> str:
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, partial(tiny_dataset_dicts, root, n, identical, seed))
        json_file = os.path.join(root, "coco_{}.json".format(n))
        MetadataCatalog.get(name).set(thing_classes=list(CLASSES), evaluator_type="coco", json_file=json_file)
        if not os.path.isfile(json_file):
            from detectron2.data.datasets.coco import convert_to_coco_json

            convert_to_coco_json(name, json_file, allow_cached=True)
    return name


# ---------------------------------------------------------------------------------------------
# models
def tiny_resnet_stages(norm: str = "BN", widths=(8, 16, 32, 64)):
    """One BasicBlock per stage: an R-18-shaped bottom-up with a few thousand parameters."""
    stages, in_ch = [], widths[0]
    for i, w in enumerate(widths):
        stages.append(
            ResNet.make_stage(BasicBlock, 1, in_channels=in_ch, out_channels=w,
                              stride_per_block=[1 if i == 0 else 2], norm=norm)
        )
        in_ch = w
    return stages


def _shrink_rcnn(model, norm: str, ch: int = 16):
    model.backbone.bottom_up = L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=8, norm=norm),
        stages=L(tiny_resnet_stages)(norm=norm),
        out_features=["res2", "res3", "res4", "res5"],
    )
    model.backbone.out_channels = ch
    pg = model.proposal_generator
    pg.head.in_channels = ch
    pg.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
    pg.pre_nms_topk = (200, 100)
    pg.post_nms_topk = (40, 40)
    pg.batch_size_per_image = 64
    rh = model.roi_heads
    rh.num_classes = len(CLASSES)
    rh.batch_size_per_image = 32
    rh.mask_head.input_shape = ShapeSpec(channels=ch, width=14, height=14)
    rh.mask_head.conv_dims = [ch, ch]
    if "box_heads" in rh:  # Cascade R-CNN
        for head in rh.box_heads:
            head.input_shape = ShapeSpec(channels=ch, height=7, width=7)
            head.fc_dims = [32, 32]
        for pred in rh.box_predictors:
            pred.input_shape = ShapeSpec(channels=32)
            pred.test_score_thresh = 0.0
    else:
        rh.box_head.input_shape = ShapeSpec(channels=ch, height=7, width=7)
        rh.box_head.fc_dims = [32, 32]
        rh.box_predictor.input_shape = ShapeSpec(channels=32)
        rh.box_predictor.test_score_thresh = 0.0  # always some predictions, so AP is computed
    return model


def tiny_rcnn(kind: str = "mask_rcnn", norm: str = "BN"):
    from detectron2 import model_zoo

    name = {"mask_rcnn": "common/models/mask_rcnn_fpn.py", "cascade": "common/models/cascade_rcnn.py"}[kind]
    return _shrink_rcnn(model_zoo.get_config(name).model, norm)


class ToyRegressor(nn.Module):
    """A conv net without normalization, regressing each image's mean box size.

    Its loss is a mean over images, so a batch split over ranks and averaged by DDP gives the
    same gradient as the whole batch in one process (up to float summation order).
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 1)

    def forward(self, batched_inputs):
        x = torch.stack([d["image"].float() / 255.0 for d in batched_inputs])  # (B, 3, H, W)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        pred = self.head(x.mean(dim=(2, 3))).squeeze(1)  # (B,)
        target = torch.tensor(
            [float(d["instances"].gt_boxes.area().sqrt().mean()) / 32.0 for d in batched_inputs]
        )
        return {"loss_mse": ((pred - target) ** 2).mean()}


# ---------------------------------------------------------------------------------------------
# configs
def _evaluator():
    try:
        from afa_d2.evaluation import COCOEvaluator

        return L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
    except ImportError:  # afa_d2.evaluation not there yet: detectron2's, pure-python pycocotools
        from detectron2.evaluation import COCOEvaluator

        return L(COCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False)


def tiny_config(kind: str, data_root: str, output_dir: str, *, n_train: int = 16, n_val: int = 4,
                identical: bool = False, total_batch: int = 2, max_iter: int = 5, seed: int = 0,
                lr: float = 1e-4) -> Dict:
    """The DESIGN.md LazyConfig contract with a tiny model and the tiny dataset."""
    digest = hashlib.md5(os.path.abspath(data_root).encode()).hexdigest()[:8]
    tag = "{}_{}".format(digest, "same" if identical else "diff")
    train_name = register_tiny("tiny_train_" + tag, os.path.join(data_root, "train"), n_train, identical)
    val_name = register_tiny("tiny_val_" + tag, os.path.join(data_root, "val"), n_val, identical, seed=1)
    if kind == "toy":
        model = L(ToyRegressor)()
    else:
        model = tiny_rcnn(kind)
    image_aug = [L(T.ResizeShortestEdge)(short_edge_length=IMAGE_HW[0], max_size=IMAGE_HW[1])]
    dataloader = dict(
        train=L(build_detection_train_loader)(
            dataset=L(get_detection_dataset_dicts)(names=train_name),
            mapper=L(DatasetMapper)(is_train=True, augmentations=image_aug, image_format="BGR",
                                    use_instance_mask=kind != "toy"),
            total_batch_size=total_batch,
            num_workers=0,
        ),
    )
    if kind != "toy":
        dataloader["test"] = L(build_detection_test_loader)(
            dataset=L(get_detection_dataset_dicts)(names=val_name, filter_empty=False),
            mapper=L(DatasetMapper)(is_train=False, augmentations=image_aug, image_format="BGR"),
            num_workers=0,
        )
        dataloader["evaluator"] = _evaluator()
    optimizer = L(torch.optim.AdamW)(
        params=L(get_default_optimizer_params)(weight_decay_norm=0.0, weight_decay_bias=0.0),
        lr=lr, betas=(0.9, 0.99), weight_decay=0.05,
    )
    lr_multiplier = L(epoch_lr_multiplier)(
        epochs="${train.epochs}", decay_epochs=[8, 11], gamma=0.1, warmup_iters=2, warmup_factor=0.1,
        iters_per_epoch=None,
    )
    train = dict(
        output_dir=output_dir, init_checkpoint="", device="cpu", seed=seed,
        epochs=12, images_per_epoch=None, max_iter=max_iter,
        amp=dict(enabled=False),
        clip_gradients=dict(enabled=False, clip_type="full_model", clip_value=1.0, norm_type=2.0),
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
        checkpointer=dict(period_epochs=1, max_to_keep=3), eval_period_epochs=12, log_period=1,
    )
    return dict(model=model, dataloader=dataloader, optimizer=optimizer, lr_multiplier=lr_multiplier, train=train)


CONFIG_TEMPLATE = '''"""Written by tests/_engine_fixtures.py."""
import sys
sys.path.insert(0, {tests!r})
from _engine_fixtures import tiny_config as _tiny_config

_c = _tiny_config({kind!r}, {data_root!r}, {output_dir!r}, **{kwargs!r})
model, dataloader, optimizer = _c["model"], _c["dataloader"], _c["optimizer"]
lr_multiplier, train = _c["lr_multiplier"], _c["train"]
'''


def write_config(path: str, kind: str, data_root: str, output_dir: str, **kwargs) -> str:
    with open(path, "w") as f:
        f.write(CONFIG_TEMPLATE.format(tests=TESTS_DIR, kind=kind, data_root=data_root,
                                       output_dir=output_dir, kwargs=kwargs))
    return path


# ---------------------------------------------------------------------------------------------
# running train_net.py
def rendezvous_url(directory: str) -> str:
    """A ``--dist-url`` for workers on this machine that needs no port: a file (``FileStore``)
    in ``directory``, which must not exist yet. A free TCP port found here and released before
    the workers bind it could be taken by another process in between; a file cannot."""
    path = os.path.join(os.path.abspath(directory), "rendezvous")
    assert not os.path.exists(path), "{} exists: the workers would read a stale store".format(path)
    return "file://" + path


def train_net_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    return env


def train_net_cmd(config: str, *args: str) -> List[str]:
    return [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config, *args]


def run_train_net(config: str, *args: str, timeout: float = 540) -> subprocess.CompletedProcess:
    return subprocess.run(train_net_cmd(config, *args), cwd=REPO, env=train_net_env(),
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(output_dir: str) -> List[Dict]:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_model_state(path: str) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# ---------------------------------------------------------------------------------------------
# shared by the model-equality tests (test_convert, test_detectors, test_export)
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for every test of a module that imports this fixture: the values do not depend on
    it, and on shared cores OpenMP's spin-waits made a 64x64 ResNet-50 forward take 1.6 s with 2 threads
    against 0.035 s with 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build_with_trained_norms(cfg, seed: int = 0):
    """``instantiate(cfg)`` in eval mode after ``torch.manual_seed(seed)``, its BatchNorm statistics drawn as a
    trained model's (random-init BN in eval mode is the identity, which would hide a wrong normalisation)."""
    from detectron2.config import instantiate

    torch.manual_seed(seed)
    model = instantiate(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model

