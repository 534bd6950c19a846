"""The training loop behind ``train_net.py``, as library functions.

Built from detectron2's pieces (``SimpleTrainer`` / ``AMPTrainer``, its hooks and writers,
``inference_on_dataset``) in the way of detectron2's ``tools/lazyconfig_train_net.py``, plus what a
resumable, reproducible run needs: the resumable data stream (:mod:`.train_loader`), per-step seeding and
the other hooks (:mod:`.hooks`), DDP on CPU too (:mod:`.ddp`), evaluation (:mod:`.eval_loop`).

Exact resume needs: ``train.seed >= 0``, ``num_workers=0`` (worker processes re-seed
themselves), and images of one orientation when aspect-ratio grouping is on (a grouped
batch may otherwise hold items buffered before the interruption).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.engine.defaults import default_writers
from detectron2.utils import comm

from .checkpoint import AtomicCheckpointer
from .train_loader import DeferredLoader, build_train_loader
from .ddp import create_ddp_model
from .deadline import ResizableLoopMixin, TimeBudget
from .eval_loop import do_test
from .hooks import GradientClipper, MetricWriters, PeakMemory, PeriodicEvaluation, ProgressBar, SamplerState, StepSeeder
from .schedule import EpochStepMultiplier
from .seeding import instantiate_seeded

__all__ = ["default_setup", "do_train", "trainer_class"]

logger = logging.getLogger(__name__)


def default_setup(cfg, args) -> None:
    """detectron2's ``default_setup`` (loggers, config.yaml, seeding) plus the ``afa_d2`` logger."""
    import detectron2.engine.defaults as d2_defaults
    from detectron2.utils.logger import setup_logger

    d2_defaults.default_setup(cfg, args)
    output_dir = cfg.OUTPUT_DIR if hasattr(cfg, "OUTPUT_DIR") else cfg.train.output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="afa_d2")




class _Trainer(ResizableLoopMixin, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` whose hooks may change ``max_iter`` (:class:`TimeBudget`)."""


class _AMPTrainer(ResizableLoopMixin, AMPTrainer):
    """detectron2's ``AMPTrainer`` whose hooks may change ``max_iter`` (:class:`TimeBudget`)."""


def trainer_class(amp: bool):
    """detectron2's ``AMPTrainer`` (``amp``) or ``SimpleTrainer``, with a loop hooks may re-size."""
    return _AMPTrainer if amp else _Trainer


def _check_train_config(cfg) -> None:
    """Refuse, before anything is built, a schedule that was not resolved and AMP off CUDA."""
    if cfg.train.get("max_iter", None) is None:
        raise ValueError("train.max_iter is None: call afa_d2.engine.resolve_epoch_schedule(cfg) first")
    device = cfg.train.device
    if bool(cfg.train.amp.enabled) and not str(device).startswith("cuda"):
        raise ValueError(
            f"train.amp.enabled=True needs a CUDA device (detectron2's AMPTrainer), but train.device={device!r}"
        )


def _model_and_optimizer(cfg, seed):
    """The model on ``train.device`` and its optimizer, with ``train.clip_gradients`` as a step pre-hook.

    With a seed, each part of the model starts from its own stream: two models that differ in one part
    (the pyramid's operator) start with the same other parts (docs/DESIGN.md, "Paired initialisation").
    """
    model = instantiate_seeded(cfg.model, seed) if seed is not None and seed >= 0 else instantiate(cfg.model)
    model.to(cfg.train.device)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    clip = cfg.train.get("clip_gradients", None)
    if clip is not None and clip.get("enabled", False):
        optimizer.register_step_pre_hook(GradientClipper(
            clip.get("clip_type", "full_model"), clip.get("clip_value", 1.0), clip.get("norm_type", 2.0)))
    return model, optimizer


def do_train(
    cfg,
    *,
    resume: bool = False,
    progress_bar: bool = False,
    deadline: Optional[float] = None,
    refresh_deadline: Optional[Callable[[Any], float]] = None,
) -> Dict[str, Any]:
    """Train as ``cfg`` says; ``resolve_epoch_schedule(cfg)`` must have run.

    Args:
        cfg: a LazyConfig following ``docs/DESIGN.md`` with ``train.max_iter``,
            ``train.checkpointer.period`` and ``train.eval_period`` in iterations.
        resume (bool): continue from ``<output_dir>/last_checkpoint`` if there is one
            (model, optimizer, lr scheduler, AMP scaler, iteration; the data stream and the
            per-step seeds continue from the iteration).
        progress_bar (bool): show a tqdm bar (main process).
        deadline (float): end training by this ``time.perf_counter()`` value: a
            :class:`TimeBudget` re-sizes ``max_iter`` and the lr decay points from the measured
            throughput (single process; the demo), and ``train.max_iter`` is set to the
            iterations trained. ``None``: ``train.max_iter`` iterations.
        refresh_deadline (callable): with ``deadline``, ``refresh_deadline(trainer) -> float`` is
            called once at half of training and returns a better deadline (:class:`TimeBudget`).

    Returns:
        dict: the last evaluation results (empty if none ran).
    """
    _check_train_config(cfg)
    device, seed = cfg.train.device, cfg.train.get("seed", -1)
    if cfg.train.get("deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
    model, optimizer = _model_and_optimizer(cfg, seed)
    loader, sampler = build_train_loader(cfg)
    ddp_model = create_ddp_model(model, **dict(cfg.train.get("ddp", {}) or {}))
    trainer = trainer_class(bool(cfg.train.amp.enabled))(ddp_model, DeferredLoader(loader), optimizer)

    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_results: Dict[str, Any] = {}

    def _eval():
        last_results.clear()
        last_results.update(do_test(cfg, ddp_model))
        return last_results

    ckpt_cfg = cfg.train.checkpointer
    main = comm.is_main_process()
    eval_period = int(cfg.train.get("eval_period", 0) or 0)
    lr_multiplier = instantiate(cfg.lr_multiplier)
    budget = None
    if deadline is not None:
        if comm.get_world_size() > 1:
            raise ValueError("do_train(deadline=) needs a single process: ranks would re-size apart")
        steps = lr_multiplier if isinstance(lr_multiplier, EpochStepMultiplier) else None
        budget = TimeBudget(deadline, lr_multiplier=steps, refresh_deadline=refresh_deadline)
    trainer.register_hooks([
        StepSeeder(seed) if seed is not None and seed >= 0 else None,
        SamplerState(sampler) if sampler is not None else None,
        hooks.IterationTimer(),
        PeakMemory(device),
        budget,  # before the lr, checkpoint and eval hooks: they see a re-sized schedule
        hooks.LRScheduler(scheduler=lr_multiplier),
        hooks.PeriodicCheckpointer(checkpointer, period=int(ckpt_cfg.period),
                                   max_to_keep=ckpt_cfg.get("max_to_keep", None)) if main else None,
        PeriodicEvaluation(eval_period, _eval) if eval_period >= 0 else None,
        ProgressBar() if progress_bar and main else None,
        MetricWriters(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                      period=int(cfg.train.get("log_period", 20))) if main else None,
    ])

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if sampler is not None:
        sampler.set_start(start_iter * int(cfg.dataloader.train.total_batch_size))
    trainer.train(start_iter, int(cfg.train.max_iter))
    if budget is not None:
        cfg.train.max_iter = int(trainer.max_iter)  # what was trained
    return dict(last_results)


