"""Training hooks and pieces afa_d2 adds to detectron2's loop.

* :class:`StepSeeder`: with ``train.seed >= 0``, python/numpy/torch RNGs are re-seeded before
  every step from ``(seed, iteration, rank)``; random choices inside the model (RPN and ROI
  sampling) and in the data mapper (``num_workers=0``) are then a function of the iteration, so
  a resumed run repeats them exactly.
* :class:`SamplerState`: checkpoints the data stream's seed.
* :class:`PeriodicEvaluation` and :class:`MetricWriters`: detectron2's ``EvalHook`` and
  ``PeriodicWriter`` with public, re-sizable settings (a :class:`~.deadline.TimeBudget` moves
  the end of training).
* :class:`ProgressBar`, :class:`PeakMemory`, and :class:`GradientClipper` (an optimizer step
  pre-hook, so it sees unscaled gradients under AMP too).
"""
from __future__ import annotations

import logging
from typing import Callable, List

import torch
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter

from .train_loader import DeterministicTrainingSampler, mix_seed

__all__ = [
    "GradientClipper",
    "MetricWriters",
    "PeakMemory",
    "PeriodicEvaluation",
    "ProgressBar",
    "SamplerState",
    "StepSeeder",
]

logger = logging.getLogger(__name__)


class StepSeeder(HookBase):
    """Re-seed python, numpy and torch before every step from ``(seed, iteration, rank)``."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_step(self):
        seed_all_rng(mix_seed(self.seed, self.trainer.iter, comm.get_rank()) % (2**31))


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



class PeriodicEvaluation(HookBase):
    """Evaluate every ``period`` iterations and after the last one (detectron2's ``EvalHook``).

    Args:
        period (int): evaluate after every ``period``-th iteration; 0 or less: only at the end.
        eval_function (callable): runs the evaluation (``do_test``).

    ``period`` is public and ``trainer.max_iter`` is read when training ends, so a hook that
    re-sizes training (:func:`~.deadline.resize_training`) keeps "at the end" at the end.
    """

    def __init__(self, period: int, eval_function: Callable[[], object]):
        self.period = int(period)
        self._func = eval_function

    def _do_eval(self):
        results = self._func()
        if results:
            from detectron2.evaluation.testing import flatten_results_dict

            flat = flatten_results_dict(results)
            for k, v in flat.items():
                try:
                    flat[k] = float(v)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        "[PeriodicEvaluation] eval_function should return a nested dict of float, got "
                        "{}: {}".format(k, v)
                    ) from e
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        comm.synchronize()  # every rank waits for the evaluation of the main one

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.period > 0 and next_iter % self.period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self):
        # after a failed run trainer.iter is below max_iter - 1: no evaluation then
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()


class MetricWriters(HookBase):
    """Write metrics every ``period`` iterations and at the end (detectron2's ``PeriodicWriter``).

    Args:
        writers (list[EventWriter]): e.g. ``detectron2.engine.defaults.default_writers(...)``.
        period (int): iterations between writes.

    ``writers`` is public; :meth:`set_max_iter` gives the console printer a new length of training
    (its ETA) when training is re-sized.
    """

    def __init__(self, writers: List, period: int = 20):
        self.writers = list(writers)
        self.period = int(period)

    def set_max_iter(self, max_iter: int) -> None:
        self.writers = [CommonMetricPrinter(max_iter) if isinstance(w, CommonMetricPrinter) else w
                        for w in self.writers]

    def after_step(self):
        if (self.trainer.iter + 1) % self.period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self.writers:
                writer.write()

    def after_train(self):
        for writer in self.writers:
            writer.write()  # the last values, also after a failure
            writer.close()
