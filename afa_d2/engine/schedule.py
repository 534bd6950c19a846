"""The paper's schedule in epochs, turned into iterations at start-up (docs/DESIGN.md, "The recipe").

The paper trains 12 epochs with the learning rate multiplied by 0.1 at epochs 8 and 11, after
a linear warm-up, at a total batch of 8. detectron2 counts iterations, so a schedule in epochs
only holds on any number of GPUs if it is converted from the dataset's size and the *total*
batch::

    iters_per_epoch = ceil(images_per_epoch / total_batch)
    max_iter        = epochs * iters_per_epoch       (COCO: 12 * ceil(117266 / 8) = 175908)
    decay_iters     = [e * iters_per_epoch for e in decay_epochs]

:func:`resolve_epoch_schedule` does that conversion on a LazyConfig (see ``docs/DESIGN.md``)
and returns a :class:`ScheduleInfo`; :func:`epoch_lr_multiplier` is the ``lr_multiplier``
the configs instantiate.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from fvcore.common.param_scheduler import ParamScheduler

__all__ = [
    "epochs_to_iters",
    "EpochStepMultiplier",
    "epoch_lr_multiplier",
    "ScheduleInfo",
    "ensure_schedule_keys",
    "fit_schedule_to_iters",
    "resolve_epoch_schedule",
]

logger = logging.getLogger(__name__)


def _iters_per_epoch(num_images: int, total_batch: int) -> int:
    if int(num_images) <= 0:
        raise ValueError(f"num_images must be a positive number of images, got {num_images!r}")
    if int(total_batch) <= 0:
        raise ValueError(f"total_batch must be a positive batch size, got {total_batch!r}")
    return math.ceil(int(num_images) / int(total_batch))


def epochs_to_iters(epochs: float, num_images: int, total_batch: int) -> int:
    """``epochs * ceil(num_images / total_batch)``: iterations for ``epochs`` passes over the data.

    The last, partial batch of an epoch counts as one iteration (``ceil``). Fractional epochs
    are rounded to the nearest iteration.

    Args:
        epochs (float): number of epochs, >= 0.
        num_images (int): images per epoch (the training set's size).
        total_batch (int): images per iteration over all processes.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs!r}")
    ipe = _iters_per_epoch(num_images, total_batch)
    if float(epochs).is_integer():
        return int(epochs) * ipe
    return int(round(epochs * ipe))


class EpochStepMultiplier(ParamScheduler):
    """Learning-rate multiplier: linear warm-up, then ``gamma`` at each decay iteration.

    A fvcore :class:`ParamScheduler`, so detectron2's ``LRScheduler`` hook wraps it in
    ``LRMultiplier`` which calls it with ``where = iteration / max_iter``. The multiplier is
    defined on absolute iterations, so ``max_iter`` must be the trainer's ``max_iter``
    (:func:`resolve_epoch_schedule` makes sure of it)::

        m(it) = gamma ** #{d in decay_iters: d <= it}
                * (warmup_factor + (1 - warmup_factor) * it / warmup_iters   if it < warmup_iters
                   else 1)

    Args:
        max_iter (int): the trainer's total number of iterations.
        decay_iters (Sequence[int]): iterations at which the multiplier is multiplied by gamma.
        gamma (float): decay factor.
        warmup_iters (int): length of the linear warm-up (0: none).
        warmup_factor (float): multiplier at iteration 0.
    """

    def __init__(
        self,
        max_iter: int,
        decay_iters: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 0.001,
    ):
        if int(max_iter) <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter!r}")
        if list(decay_iters) != sorted(decay_iters):
            raise ValueError(f"decay_iters must be increasing, got {list(decay_iters)}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters!r}")
        self.max_iter = int(max_iter)
        self.decay_iters = [int(d) for d in decay_iters]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def at_iter(self, iteration: int) -> float:
        """The multiplier at an absolute iteration."""
        value = self.gamma ** sum(1 for d in self.decay_iters if d <= iteration)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            value *= self.warmup_factor + (1.0 - self.warmup_factor) * alpha
        return value

    def __call__(self, where: float) -> float:
        return self.at_iter(int(round(where * self.max_iter)))


def epoch_lr_multiplier(
    epochs: float,
    decay_epochs: Sequence[float] = (8, 11),
    gamma: float = 0.1,
    warmup_iters: int = 1000,
    warmup_factor: float = 0.001,
    iters_per_epoch: Optional[int] = None,
    max_iter: Optional[int] = None,
) -> EpochStepMultiplier:
    """The configs' ``lr_multiplier``: the paper's step schedule given in epochs.

    Args:
        epochs (float): length of training in epochs (``"${train.epochs}"`` in the configs).
        decay_epochs (Sequence[float]): epochs at whose start the lr is multiplied by ``gamma``.
        gamma (float): decay factor (0.1).
        warmup_iters (int): linear warm-up length in iterations (1000).
        warmup_factor (float): lr multiplier at iteration 0 (0.001).
        iters_per_epoch (int): filled by :func:`resolve_epoch_schedule`.
        max_iter (int): the trainer's ``train.max_iter``; filled by :func:`resolve_epoch_schedule`;
            default ``epochs * iters_per_epoch``.
    """
    if iters_per_epoch is None:
        raise ValueError(
            "lr_multiplier.iters_per_epoch is None: call afa_d2.engine.schedule."
            "resolve_epoch_schedule(cfg) before instantiating cfg.lr_multiplier "
            "(train_net.py does), or set lr_multiplier.iters_per_epoch=<int>"
        )
    ipe = int(iters_per_epoch)
    decay_iters = [int(round(e * ipe)) for e in decay_epochs]
    total = int(max_iter) if max_iter is not None else int(round(epochs * ipe))
    return EpochStepMultiplier(total, decay_iters, gamma, min(int(warmup_iters), total), warmup_factor)


@dataclass
class ScheduleInfo:
    """What :func:`resolve_epoch_schedule` computed, all in iterations unless named epochs."""

    epochs: float
    images_per_epoch: int
    total_batch: int
    iters_per_epoch: int
    max_iter: int
    decay_iters: List[int] = field(default_factory=list)
    warmup_iters: int = 0
    checkpoint_period: int = 0
    eval_period: int = 0
    max_iter_from_epochs: bool = True  # False: train.max_iter was set explicitly

    def summary(self) -> str:
        """A few lines for the log: the arithmetic from epochs to iterations."""
        lines = [
            "Schedule: {:g} epochs x ceil({} images / total batch {}) = {} x {} = {} iterations{}".format(
                self.epochs,
                self.images_per_epoch,
                self.total_batch,
                self.epochs,
                self.iters_per_epoch,
                epochs_to_iters(self.epochs, self.images_per_epoch, self.total_batch),
                "" if self.max_iter_from_epochs else "; train.max_iter set explicitly to {}".format(self.max_iter),
            ),
            "  lr x gamma at iterations {}; linear warm-up over {} iterations".format(
                self.decay_iters, self.warmup_iters
            ),
            "  checkpoint every {} iterations; evaluation every {} iterations".format(
                self.checkpoint_period, self.eval_period
            ),
        ]
        return "\n".join(lines)

    __str__ = summary


def ensure_schedule_keys(cfg) -> None:
    """Declare the keys :func:`resolve_epoch_schedule` fills, so they can be overridden.

    ``train.checkpointer.period`` and ``train.eval_period`` (iterations; ``None`` = from the
    ``*_epochs`` values) and ``lr_multiplier.max_iter``. An explicit value set on the command
    line (``train.checkpointer.period=1``) wins over the epochs. A config without ``train`` (a model
    piece such as ``common/models/retinanet_afpn.py``) is left as it is.
    """
    if "train" not in cfg:
        return
    train = cfg.train
    if "checkpointer" in train and "period" not in train.checkpointer:
        train.checkpointer.period = None
    if "eval_period" not in train:
        train.eval_period = None
    if "lr_multiplier" in cfg and "max_iter" not in cfg.lr_multiplier:
        cfg.lr_multiplier.max_iter = None


def _count_training_images(cfg) -> int:
    from detectron2.config import instantiate

    dataset = instantiate(cfg.dataloader.train.dataset)
    return len(dataset)


def resolve_epoch_schedule(cfg, num_images: Optional[int] = None) -> ScheduleInfo:
    """Turn the epochs of a LazyConfig into iterations, in place.

    Reads ``train.epochs``, ``train.images_per_epoch`` (``None``: the training dataset is
    counted), ``dataloader.train.total_batch_size``, ``train.checkpointer.period_epochs``,
    ``train.eval_period_epochs`` and ``lr_multiplier``. Sets ``train.max_iter`` (unless set),
    ``train.images_per_epoch``, ``lr_multiplier.iters_per_epoch`` and ``lr_multiplier.max_iter``,
    ``train.checkpointer.period`` and ``train.eval_period`` (unless set, in iterations).

    Args:
        cfg: a LazyConfig following ``docs/DESIGN.md``.
        num_images (int): images per epoch; overrides ``train.images_per_epoch``.

    Returns:
        ScheduleInfo: what was computed; ``str()`` of it is a printable summary.
    """
    ensure_schedule_keys(cfg)
    train = cfg.train
    total_batch = int(cfg.dataloader.train.total_batch_size)
    epochs = train.get("epochs", None)
    if epochs is None:
        raise ValueError("train.epochs is not set: the schedule is given in epochs (docs/DESIGN.md, 'The recipe')")
    if num_images is None:
        num_images = train.get("images_per_epoch", None)
    if num_images is None:
        num_images = _count_training_images(cfg)
        logger.info("Counted %d training images in %s", num_images, cfg.dataloader.train.dataset.get("names"))
    num_images = int(num_images)
    train.images_per_epoch = num_images
    ipe = _iters_per_epoch(num_images, total_batch)

    from_epochs = train.get("max_iter", None) is None
    if from_epochs:
        train.max_iter = epochs_to_iters(epochs, num_images, total_batch)
    max_iter = int(train.max_iter)

    decay_iters: List[int] = []
    warmup_iters = 0
    if "lr_multiplier" in cfg and "iters_per_epoch" in cfg.lr_multiplier:
        lrm = cfg.lr_multiplier
        lrm.iters_per_epoch = ipe
        lrm.max_iter = max_iter
        decay_iters = [int(round(e * ipe)) for e in lrm.get("decay_epochs", [])]
        warmup_iters = min(int(lrm.get("warmup_iters", 0)), max_iter)

    ckpt = train.get("checkpointer", None)
    if ckpt is not None:
        if ckpt.get("period", None) is None:
            ckpt.period = max(1, epochs_to_iters(ckpt.get("period_epochs", 1), num_images, total_batch))
        checkpoint_period = int(ckpt.period)
    else:
        checkpoint_period = 0
    if train.get("eval_period", None) is None:
        train.eval_period = epochs_to_iters(train.get("eval_period_epochs", epochs), num_images, total_batch)
    return ScheduleInfo(
        epochs=epochs,
        images_per_epoch=num_images,
        total_batch=total_batch,
        iters_per_epoch=ipe,
        max_iter=max_iter,
        decay_iters=decay_iters,
        warmup_iters=warmup_iters,
        checkpoint_period=checkpoint_period,
        eval_period=int(train.eval_period),
        max_iter_from_epochs=from_epochs,
    )


def fit_schedule_to_iters(cfg, num_images: int, max_iter: int) -> None:
    """Re-size a LazyConfig's epoch schedule, in place, to ``max_iter`` iterations.

    Sets ``train.epochs`` (fractional) so that :func:`resolve_epoch_schedule` gives ``max_iter``
    on ``num_images`` images at the config's total batch, keeps the lr decays at the config's
    fractions of training (``decay_epochs / epochs``), shortens the warm-up to at most a tenth of
    training, and puts one checkpoint and one evaluation at the end. The demo, the Table 1 tool and
    the model-zoo trainer train the shapes recipes this way at any length.

    Args:
        cfg: a LazyConfig following ``docs/DESIGN.md``.
        num_images (int): images per epoch of the training set.
        max_iter (int): the iterations to train (>= 1).
    """
    if int(max_iter) < 1:
        raise ValueError("max_iter must be >= 1, got {!r}".format(max_iter))
    ipe = _iters_per_epoch(num_images, int(cfg.dataloader.train.total_batch_size))
    epochs = max_iter / ipe
    config_epochs = float(cfg.train.epochs)
    fractions = [float(e) / config_epochs for e in cfg.lr_multiplier.decay_epochs]
    cfg.train.images_per_epoch = int(num_images)
    cfg.train.epochs = epochs
    cfg.lr_multiplier.decay_epochs = [f * epochs for f in fractions]
    cfg.lr_multiplier.warmup_iters = min(int(cfg.lr_multiplier.warmup_iters), max(1, max_iter // 10))
    cfg.train.checkpointer.period_epochs = epochs
    cfg.train.eval_period_epochs = epochs
