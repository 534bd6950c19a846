"""The paper's recipe (docs/DESIGN.md, "The recipe"): epochs -> iterations, the lr multiplier, AdamW param groups."""
import math
import os

import pytest
import torch
from torch import nn

import afa_d2  # noqa: F401  (compat patches before detectron2)
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from afa_d2.engine.schedule import (
    EpochStepMultiplier,
    epoch_lr_multiplier,
    epochs_to_iters,
    resolve_epoch_schedule,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULE_1X = os.path.join(REPO, "configs", "common", "schedule_1x.py")
OPTIM = os.path.join(REPO, "configs", "common", "optim.py")


def _recipe_cfg(images_per_epoch, total_batch=8):
    """The DESIGN.md contract's schedule part: configs/common/schedule_1x.py when present."""
    if os.path.isfile(SCHEDULE_1X):
        sched = LazyConfig.load(SCHEDULE_1X)
        cfg = OmegaConf.create({"lr_multiplier": sched.lr_multiplier, "train": sched.train}, flags={"allow_objects": True})
    else:  # the contract as written in docs/DESIGN.md
        cfg = OmegaConf.create(
            {
                "lr_multiplier": {
                    "_target_": epoch_lr_multiplier, "epochs": "${train.epochs}", "decay_epochs": [8, 11],
                    "gamma": 0.1, "warmup_iters": 1000, "warmup_factor": 0.001, "iters_per_epoch": None,
                },
                "train": {
                    "epochs": 12, "max_iter": None, "checkpointer": {"period_epochs": 1, "max_to_keep": 3},
                    "eval_period_epochs": 12,
                },
            },
            flags={"allow_objects": True},
        )
    cfg.dataloader = {"train": {"total_batch_size": total_batch}}
    cfg.train.images_per_epoch = images_per_epoch
    return cfg


def test_epochs_to_iters_values():
    assert epochs_to_iters(12, 117266, 8) == 12 * 14659 == 175908
    assert epochs_to_iters(12, 99388, 8) == 12 * 12424 == 149088
    assert epochs_to_iters(1, 16, 8) == 2  # exact division: no extra iteration
    assert epochs_to_iters(1, 17, 8) == 3  # the partial last batch is an iteration
    assert epochs_to_iters(0.5, 16, 8) == 1
    with pytest.raises(ValueError, match="total_batch"):
        epochs_to_iters(12, 100, 0)
    with pytest.raises(ValueError, match="num_images"):
        epochs_to_iters(12, 0, 8)


@pytest.mark.parametrize(
    "name,images,max_iter,decay",
    [
        ("COCO 2017 train", 117266, 12 * math.ceil(117266 / 8), [8 * 14659, 11 * 14659]),
        ("LVIS v1 train", 99388, 12 * math.ceil(99388 / 8), [8 * 12424, 11 * 12424]),
    ],
)
def test_resolve_epoch_schedule_real_dataset_sizes(name, images, max_iter, decay):
    cfg = _recipe_cfg(images)
    info = resolve_epoch_schedule(cfg)
    assert info.iters_per_epoch == math.ceil(images / 8), name
    assert info.max_iter == max_iter and cfg.train.max_iter == max_iter, name
    assert info.decay_iters == decay, name
    assert info.warmup_iters == 1000
    assert cfg.lr_multiplier.iters_per_epoch == math.ceil(images / 8)
    assert cfg.lr_multiplier.max_iter == max_iter
    assert cfg.train.checkpointer.period == math.ceil(images / 8)  # period_epochs=1
    assert cfg.train.eval_period == max_iter  # eval_period_epochs=12
    text = str(info)
    assert str(max_iter) in text and str(decay[0]) in text and str(decay[1]) in text, text

    mult = instantiate(cfg.lr_multiplier)
    assert mult.at_iter(0) == pytest.approx(0.001)
    assert mult.at_iter(500) == pytest.approx(0.001 + 0.999 * 0.5)
    assert mult.at_iter(1000) == 1.0
    assert mult.at_iter(decay[0] - 1) == 1.0
    assert mult.at_iter(decay[0]) == pytest.approx(0.1)
    assert mult.at_iter(decay[1] - 1) == pytest.approx(0.1)
    assert mult.at_iter(decay[1]) == pytest.approx(0.01)
    assert mult.at_iter(max_iter - 1) == pytest.approx(0.01)
    # detectron2's LRMultiplier calls it with where = iteration / max_iter
    assert mult(decay[0] / max_iter) == pytest.approx(0.1)
    assert mult((decay[0] - 1) / max_iter) == 1.0


def test_schedule_holds_on_any_number_of_gpus():
    # the total batch is what counts: 8 GPUs x 1 image or 2 x 4 give the same iterations
    a = resolve_epoch_schedule(_recipe_cfg(117266, total_batch=8))
    b = resolve_epoch_schedule(_recipe_cfg(117266, total_batch=16))
    assert a.max_iter == 175908
    assert b.max_iter == 12 * math.ceil(117266 / 16) == 87960
    assert b.decay_iters == [8 * 7330, 11 * 7330]


def test_explicit_max_iter_and_periods_win():
    cfg = _recipe_cfg(16, total_batch=2)
    cfg.train.max_iter = 5
    cfg.train.checkpointer.period = 1
    info = resolve_epoch_schedule(cfg)
    assert info.max_iter == 5 and not info.max_iter_from_epochs
    assert cfg.train.checkpointer.period == 1
    assert cfg.lr_multiplier.max_iter == 5  # the multiplier maps where -> iteration with it
    mult = instantiate(cfg.lr_multiplier)
    assert mult(2 / 5) == pytest.approx(mult.at_iter(2))
    assert "set explicitly to 5" in str(info)


def test_lr_multiplier_needs_resolution():
    with pytest.raises(ValueError, match="resolve_epoch_schedule"):
        epoch_lr_multiplier(epochs=12, iters_per_epoch=None)
    with pytest.raises(ValueError, match="increasing"):
        EpochStepMultiplier(100, [50, 20])


def test_lr_through_detectron2_scheduler():
    """The multiplier drives the optimizer's lr through detectron2's LRMultiplier."""
    from detectron2.solver import LRMultiplier

    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    sched = LRMultiplier(opt, epoch_lr_multiplier(3, [1, 2], 0.1, 2, 0.5, iters_per_epoch=4), max_iter=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5e-4, 0.75e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-5, 1e-6, 1e-6, 1e-6, 1e-6]
    assert lrs == pytest.approx(expected, rel=1e-9), lrs


class _NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4, bias=True)


def test_adamw_param_groups_no_decay_on_norms_and_biases():
    if os.path.isfile(OPTIM):
        opt_cfg = LazyConfig.load(OPTIM).AdamW
    else:
        from detectron2.solver.build import get_default_optimizer_params

        opt_cfg = OmegaConf.create(
            {"_target_": torch.optim.AdamW,
             "params": {"_target_": get_default_optimizer_params, "weight_decay_norm": 0.0, "weight_decay_bias": 0.0},
             "lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.05}, flags={"allow_objects": True})
    model = _NormNet()
    opt_cfg.params.model = model
    opt = instantiate(opt_cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 1e-4 and tuple(opt.defaults["betas"]) == (0.9, 0.99)
    assert opt.defaults["weight_decay"] == 0.05  # the paper's 0.5 read as a typo (docs/DESIGN.md, "The recipe")
    decay_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            decay_of[id(p)] = group["weight_decay"]
    names = dict(model.named_parameters())
    assert len(decay_of) == len(names)
    for name, p in names.items():
        expected = 0.05 if name in ("conv.weight", "fc.weight") else 0.0
        assert decay_of[id(p)] == expected, f"{name}: weight_decay {decay_of[id(p)]}, expected {expected}"
