"""The training and evaluation loop behind ``train_net.py``, as library functions.

Built from detectron2's pieces (``SimpleTrainer`` / ``AMPTrainer``, its hooks and writers,
``inference_on_dataset``) in the way of detectron2's ``tools/lazyconfig_train_net.py``, plus
what a resumable, reproducible run needs:

* :class:`DeterministicTrainingSampler`: detectron2's ``TrainingSampler`` stream
  (``shuffle(range(n)) + shuffle(range(n)) + ...``, rank ``r`` of ``W`` taking every ``W``-th
  item), but each epoch's permutation is a function of ``(seed, epoch)`` and the stream can
  start at any position. On resume it starts at ``start_iter * total_batch``, so the resumed
  run sees the batches the uninterrupted run would have seen (detectron2's sampler restarts
  its stream at the beginning). The data loader is only iterated at the first step, after
  the checkpoint has been loaded (:class:`DeferredLoader`), and its torch ``DataLoader`` gets
  its own generator, so creating it mid-run does not draw from the global RNG. The stream's
  seed is checkpointed (:class:`SamplerState`), so it continues even with ``train.seed < 0``.
* :class:`StepSeeder`: with ``train.seed >= 0``, python/numpy/torch RNGs are re-seeded before
  every step from ``(seed, iteration, rank)``. Random choices inside the model (RPN and ROI
  sampling draw from torch's global RNG) and in the data mapper (with ``num_workers=0``) are
  then a function of the iteration, so a resumed run repeats them exactly.
* gradient clipping (``train.clip_gradients``) as an optimizer step pre-hook, so it sees
  unscaled gradients under AMP too.
* :func:`create_ddp_model` with ``device_ids=None`` for CPU models (gloo).
* :class:`ProgressBar`: an optional tqdm bar (the demo).

Exact resume needs: ``train.seed >= 0``, ``num_workers=0`` (worker processes re-seed
themselves), and images of one orientation when aspect-ratio grouping is on (a grouped
batch may otherwise hold items buffered before the interruption).
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.engine.defaults import default_writers
from detectron2.engine.train_loop import HookBase
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.sampler import Sampler

from .checkpoint import AtomicCheckpointer
from .deadline import ResizableLoopMixin, TimeBudget
from .schedule import EpochStepMultiplier

__all__ = [
    "default_setup",
    "DeterministicTrainingSampler",
    "DeferredLoader",
    "StepSeeder",
    "SamplerState",
    "ProgressBar",
    "PeakMemory",
    "GradientClipper",
    "create_ddp_model",
    "build_train_loader",
    "build_evaluator",
    "do_test",
    "do_train",
    "do_eval_only",
    "run_yacs",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# set-up
def default_setup(cfg, args) -> None:
    """detectron2's ``default_setup`` (loggers, config.yaml, seeding) plus the ``afa_d2`` logger."""
    import detectron2.engine.defaults as d2_defaults
    from detectron2.utils.logger import setup_logger

    d2_defaults.default_setup(cfg, args)
    output_dir = cfg.OUTPUT_DIR if hasattr(cfg, "OUTPUT_DIR") else cfg.train.output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="afa_d2")


# ---------------------------------------------------------------------------------------------
# data
class DeterministicTrainingSampler(Sampler):
    """An infinite, resumable stream of dataset indices shared by all ranks.

    The global stream is ``perm(0) + perm(1) + ...`` where ``perm(e)`` is a permutation of
    ``range(size)`` drawn from a generator seeded with ``(seed, e)`` (or ``range(size)`` when
    ``shuffle=False``). Rank ``r`` of ``W`` yields global positions ``start + r, start + r + W,
    ...``; with ``B = total_batch / W`` items per rank and step, the union of the ranks' k-th
    batches is positions ``start + k*total_batch ... + total_batch - 1``, i.e. the same images a
    single process with the whole batch takes (before aspect-ratio grouping).

    Args:
        size (int): dataset length.
        shuffle (bool): shuffle each epoch.
        seed (int): shared by all ranks; ``None``: a random seed shared by all ranks.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"DeterministicTrainingSampler(size=) expects a positive int, got {size!r}")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._start = 0

    @property
    def seed(self) -> int:
        return self._seed

    def set_start(self, position: int) -> None:
        """Start the global stream at ``position`` (= ``start_iter * total_batch``)."""
        if position < 0:
            raise ValueError(f"start position must be >= 0, got {position}")
        self._start = int(position)

    def _permutation(self, epoch: int) -> List[int]:
        if not self._shuffle:
            return list(range(self._size))
        g = torch.Generator()
        g.manual_seed(_mix(self._seed, epoch))
        return torch.randperm(self._size, generator=g).tolist()

    def global_stream(self, start: int = 0) -> Iterator[int]:
        """Every index from global position ``start`` on (all ranks together)."""
        epoch, offset = divmod(start, self._size)
        while True:
            perm = self._permutation(epoch)
            yield from perm[offset:]
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        stream = self.global_stream(self._start)
        for i, index in enumerate(stream):
            if i % self._world_size == self._rank:
                yield index


def _mix(*values: int) -> int:
    """A stable 63-bit seed from integers (python's hash() of ints is not a mixer)."""
    digest = hashlib.sha256(":".join(str(int(v)) for v in values).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DeferredLoader:
    """Wraps a data loader so that ``iter()`` does nothing until the first item is asked for.

    detectron2's ``SimpleTrainer`` calls ``iter(data_loader)`` in its constructor, before the
    checkpoint (and with it the start iteration) is known; worker processes would start
    sampling from position 0. The generator returned here creates the real iterator on its
    first ``next()``, inside the first training step.
    """

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        yield from self.loader

    def __len__(self):  # pragma: no cover - infinite loaders have none
        return len(self.loader)


def build_train_loader(cfg):
    """Instantiate ``cfg.dataloader.train`` with a :class:`DeterministicTrainingSampler`.

    Returns:
        (loader, sampler): ``sampler`` is None when the config chose its own sampler (then a
        resumed run restarts that sampler's stream; a warning says so).
    """
    from detectron2.config.instantiate import locate

    lc = cfg.dataloader.train
    if lc.get("sampler", None) is not None or "dataset" not in lc:
        logger.warning(
            "dataloader.train sets its own sampler: on --resume its stream restarts from the "
            "beginning instead of continuing (afa_d2's DeterministicTrainingSampler is not used)."
        )
        return instantiate(lc), None
    dataset = instantiate(lc.dataset)
    seed = cfg.train.get("seed", -1)
    sampler = DeterministicTrainingSampler(len(dataset), seed=None if seed is None or seed < 0 else seed)
    target = lc._target_
    if isinstance(target, str):
        target = locate(target)
    kwargs: Dict[str, Any] = {}
    for key in lc.keys():
        if key in ("_target_", "dataset", "sampler"):
            continue
        kwargs[key] = instantiate(lc[key])
    loader = target(dataset=dataset, sampler=sampler, **kwargs)
    _give_own_generator(loader, sampler.seed)
    return loader, sampler


def _give_own_generator(loader, seed: int) -> None:
    """Let the torch ``DataLoader`` inside ``loader`` draw its base seed from its own generator.

    Creating a ``DataLoader`` iterator draws a number from torch's *global* RNG unless the
    loader has a ``generator``. The iterator is created in the first step of a run, i.e. at
    iteration 0 of a fresh run but at the resume iteration of a resumed one, so that draw
    would shift the random choices the model makes in that step (RPN/ROI sampling).
    """
    candidates = [loader, getattr(loader, "dataset", None)]  # AspectRatioGroupedDataset wraps one
    for dl in candidates:
        if isinstance(dl, torch.utils.data.DataLoader) and dl.generator is None:
            g = torch.Generator()
            g.manual_seed(_mix(seed, comm.get_rank(), 0x10AD))
            dl.generator = g


# ---------------------------------------------------------------------------------------------
# hooks and trainer pieces
class StepSeeder(HookBase):
    """Re-seed python, numpy and torch before every step from ``(seed, iteration, rank)``."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_step(self):
        seed_all_rng(_mix(self.seed, self.trainer.iter, comm.get_rank()) % (2**31))


class SamplerState(HookBase):
    """Checkpoints the data stream's seed, so that a resumed run continues the same stream.

    With ``train.seed < 0`` the sampler's seed is drawn at start-up; without this a resumed
    run would continue at the right position of a different stream.
    """

    def __init__(self, sampler: DeterministicTrainingSampler):
        self.sampler = sampler

    def state_dict(self):
        return {"seed": self.sampler.seed}

    def load_state_dict(self, state_dict):
        self.sampler._seed = int(state_dict["seed"])


class ProgressBar(HookBase):
    """A tqdm progress bar over the iterations, with the latest total loss (main process)."""

    def __init__(self, desc: str = "train"):
        self.desc = desc
        self._bar = None

    def before_train(self):
        from tqdm import tqdm

        self._bar = tqdm(
            total=self.trainer.max_iter, initial=self.trainer.start_iter, desc=self.desc,
            unit="it", dynamic_ncols=True,
        )

    def after_step(self):
        if self._bar is None:
            return
        history = self.trainer.storage.histories().get("total_loss")
        if history is not None:
            self._bar.set_postfix(loss="{:.3f}".format(history.latest()), refresh=False)
        if self._bar.total != self.trainer.max_iter:  # re-sized by a TimeBudget
            self._bar.total = self.trainer.max_iter
        self._bar.update(1)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class PeakMemory(HookBase):
    """Logs the peak memory of training so far as ``peak_mem_mib`` (in ``metrics.json``).

    On CUDA, ``torch.cuda.max_memory_allocated`` of the trainer's device (what detectron2's
    console line shows as ``max_mem``); on the CPU, the process's peak resident set
    (``ru_maxrss``: weights, optimizer state, activations, and the data pipeline's memory too).
    """

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda") and torch.cuda.is_available()

    def after_step(self):
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        self.trainer.storage.put_scalar("peak_mem_mib", peak / 2**20, smoothing_hint=False)


class GradientClipper:
    """Clip gradients in an optimizer step pre-hook (after AMP's unscale, before the step).

    Args:
        clip_type (str): ``"full_model"`` (one norm over all parameters), ``"norm"`` (per
            parameter) or ``"value"``.
        clip_value (float): max norm, or max absolute value for ``"value"``.
        norm_type (float): the p of the p-norm.
    """

    TYPES = ("full_model", "norm", "value")

    def __init__(self, clip_type: str = "full_model", clip_value: float = 1.0, norm_type: float = 2.0):
        if clip_type not in self.TYPES:
            raise ValueError(f"train.clip_gradients.clip_type={clip_type!r}; valid: {', '.join(self.TYPES)}")
        if clip_value <= 0:
            raise ValueError(f"train.clip_gradients.clip_value must be > 0, got {clip_value}")
        self.clip_type, self.clip_value, self.norm_type = clip_type, float(clip_value), float(norm_type)

    def __call__(self, optimizer, args, kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.clip_type == "full_model":
            torch.nn.utils.clip_grad_norm_(params, self.clip_value, self.norm_type)
        elif self.clip_type == "norm":
            for p in params:
                torch.nn.utils.clip_grad_norm_([p], self.clip_value, self.norm_type)
        else:
            torch.nn.utils.clip_grad_value_(params, self.clip_value)


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    """``DistributedDataParallel(model)`` when there are several processes, else ``model``.

    Like detectron2's, but a CPU model gets ``device_ids=None`` (DDP refuses device ids for
    CPU modules; this is the gloo case).
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_cuda = any(p.is_cuda for p in model.parameters())
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


# ---------------------------------------------------------------------------------------------
# evaluation
def build_evaluator(cfg):
    """``cfg.dataloader.evaluator`` (its ``output_dir`` defaulted to ``<output_dir>/inference``),
    else afa_d2's evaluator for the test dataset, else None."""
    out = os.path.join(cfg.train.output_dir, "inference")
    if "evaluator" in cfg.dataloader:
        ev = cfg.dataloader.evaluator
        if "output_dir" in ev and ev.output_dir is None:
            ev.output_dir = out
        elif "output_dir" not in ev:
            ev.output_dir = out
        return instantiate(ev)
    names = cfg.dataloader.test.dataset.get("names", None) if "test" in cfg.dataloader else None
    if names is None:
        return None
    from afa_d2.evaluation import build_evaluator as _build

    return _build(names if isinstance(names, str) else names[0], out)


def do_test(cfg, model) -> Dict[str, Any]:
    """Evaluate ``model`` on ``cfg.dataloader.test``; returns detectron2's nested results dict."""
    if "test" not in cfg.dataloader:
        return {}
    evaluator = build_evaluator(cfg)
    if evaluator is None:
        return {}
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process() and ret:
        print_csv_format(ret)
    return ret or {}


# ---------------------------------------------------------------------------------------------
# training
class _Trainer(ResizableLoopMixin, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` whose hooks may change ``max_iter`` (:class:`TimeBudget`)."""


class _AMPTrainer(ResizableLoopMixin, AMPTrainer):
    """detectron2's ``AMPTrainer`` whose hooks may change ``max_iter`` (:class:`TimeBudget`)."""


def _trainer_class(amp: bool):
    return _AMPTrainer if amp else _Trainer


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
    if cfg.train.get("max_iter", None) is None:
        raise ValueError("train.max_iter is None: call afa_d2.engine.resolve_epoch_schedule(cfg) first")
    device = cfg.train.device
    amp = bool(cfg.train.amp.enabled)
    if amp and not str(device).startswith("cuda"):
        raise ValueError(
            f"train.amp.enabled=True needs a CUDA device (detectron2's AMPTrainer), but train.device={device!r}"
        )
    seed = cfg.train.get("seed", -1)
    if cfg.train.get("deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)

    model = instantiate(cfg.model)
    model.to(device)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    clip = cfg.train.get("clip_gradients", None)
    if clip is not None and clip.get("enabled", False):
        optimizer.register_step_pre_hook(
            GradientClipper(clip.get("clip_type", "full_model"), clip.get("clip_value", 1.0), clip.get("norm_type", 2.0))
        )

    loader, sampler = build_train_loader(cfg)
    ddp_kwargs = dict(cfg.train.get("ddp", {}) or {})
    ddp_model = create_ddp_model(model, **ddp_kwargs)
    trainer = _trainer_class(amp)(ddp_model, DeferredLoader(loader), optimizer)

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
    trainer.register_hooks(
        [
            StepSeeder(seed) if seed is not None and seed >= 0 else None,
            SamplerState(sampler) if sampler is not None else None,
            hooks.IterationTimer(),
            PeakMemory(device),
            budget,  # before the lr, checkpoint and eval hooks: they see a re-sized schedule
            hooks.LRScheduler(scheduler=lr_multiplier),
            hooks.PeriodicCheckpointer(
                checkpointer, period=int(ckpt_cfg.period), max_to_keep=ckpt_cfg.get("max_to_keep", None)
            )
            if main
            else None,
            hooks.EvalHook(eval_period, _eval) if eval_period >= 0 else None,
            ProgressBar() if progress_bar and main else None,
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=int(cfg.train.get("log_period", 20))
            )
            if main
            else None,
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if sampler is not None:
        sampler.set_start(start_iter * int(cfg.dataloader.train.total_batch_size))
    trainer.train(start_iter, int(cfg.train.max_iter))
    if budget is not None:
        cfg.train.max_iter = int(trainer.max_iter)  # what was trained
    return dict(last_results)


def do_eval_only(cfg, *, resume: bool = False) -> Dict[str, Any]:
    """Load weights (the last checkpoint with ``resume``, else ``train.init_checkpoint``) and
    evaluate. A checkpoint whose shapes do not fit raises :class:`CheckpointShapeError`."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, strict_shapes=True)
    if resume and checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
    else:
        path = cfg.train.init_checkpoint
    if not path:
        logger.warning("--eval-only without train.init_checkpoint: evaluating randomly initialized weights")
    checkpointer.load(path)
    model = create_ddp_model(model)
    return do_test(cfg, model)


# ---------------------------------------------------------------------------------------------
# the yacs path (a .yaml config using the registered backbone)
def _yacs_trainer_class():
    import weakref

    from detectron2.engine import DefaultTrainer

    class YacsTrainer(DefaultTrainer):
        """detectron2's ``DefaultTrainer`` with afa_d2's evaluators and atomic checkpointer."""

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            from afa_d2.evaluation import build_evaluator as _build

            return _build(dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

        def build_hooks(self):
            # DefaultTrainer made a plain DetectionCheckpointer just before calling this.
            self.checkpointer = AtomicCheckpointer(
                self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
            )
            return super().build_hooks()

    return YacsTrainer


def run_yacs(args) -> Dict[str, Any]:
    """``train_net.py`` for a yacs ``.yaml``: ``get_cfg() + add_afa_config``, DefaultTrainer.

    Single-process on CPU (detectron2 v0.6's DefaultTrainer gives DDP CUDA device ids).
    """
    from detectron2.config import get_cfg

    import afa_d2.modeling  # noqa: F401  (registers the backbones in BACKBONE_REGISTRY)
    from afa_d2.config import add_afa_config

    try:
        import afa_d2.data  # noqa: F401  (registers the built-in datasets)
    except ImportError:  # pragma: no cover - the data package is optional for the registry path
        pass
    cfg = get_cfg()
    add_afa_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.info("CUDA is not available: MODEL.DEVICE set to cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    trainer_cls = _yacs_trainer_class()
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        ckpt = AtomicCheckpointer(model, cfg.OUTPUT_DIR, strict_shapes=True)
        ckpt.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return dict(getattr(trainer, "_last_eval_results", None) or {})
