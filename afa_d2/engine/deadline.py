"""Training to a wall-clock deadline: a schedule re-sized from the throughput measured while training.

A time budget known before training (the demo's 10 minutes) can only be turned into
iterations by guessing the time of a step, and a guess made on a fresh model before the first
real step is off by 10-30% on a busy CPU: the data loading, the hooks and the proposals of a
model that has started to learn all come later. :class:`TimeBudget` measures the training loop
itself and re-sizes the schedule while that is still harmless:

* every ``check_period`` iterations it measures the seconds per iteration since
  ``skip_iters`` (the first steps build kernels) and sets ``max_iter`` so that training ends
  at ``deadline``; the learning-rate decay points move with ``max_iter`` (they keep their
  fraction of training), the warm-up keeps its length in iterations;
* it stops re-sizing once training reaches ``freeze_fraction`` of ``max_iter`` (before the
  first lr decay: 8/12 in the paper's schedule, 0.85 in the shapes configs), so the lr a step
  used never changes after the fact;
* at any step, it ends training if the next step would end past the deadline (a machine that
  slowed down); the final checkpoint and evaluation still run, as at any last iteration.

detectron2's ``TrainerBase.train`` fixes ``range(start_iter, max_iter)`` when training starts;
:class:`ResizableLoopMixin` is the same loop written as ``while self.iter < self.max_iter``,
so a hook can move ``trainer.max_iter``. :func:`resize_training` moves it together with the
hooks that keep a copy (the checkpointer's final save, the progress bar, the ETA printer).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, List, Optional

from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils.events import EventStorage

from afa_d2.compat import trainer_hooks

from .hooks import MetricWriters, PeriodicEvaluation
from .schedule import EpochStepMultiplier

__all__ = ["ResizableLoopMixin", "TimeBudget", "resize_training"]

logger = logging.getLogger(__name__)


class ResizableLoopMixin:
    """``TrainerBase.train`` with a ``while`` loop: hooks may change ``self.max_iter`` while training.

    Everything else is detectron2's: hooks run in the same order, ``self.iter`` is the current
    iteration inside a step and ``max_iter`` after a successful run (``after_train`` hooks use
    it to tell a finished run from a failed one), and exceptions are logged and re-raised.
    """

    def train(self, start_iter: int, max_iter: int):
        log = logging.getLogger("detectron2.engine.train_loop")
        log.info("Starting training from iteration {}".format(start_iter))
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                while self.iter < self.max_iter:
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    self.iter += 1
            except Exception:
                log.exception("Exception during training:")
                raise
            finally:
                self.after_train()


def resize_training(trainer, max_iter: int) -> None:
    """Set ``trainer.max_iter`` and the copies its hooks keep of it.

    Updated through their public attributes: detectron2's ``PeriodicCheckpointer`` (final save at
    ``max_iter - 1``; a period equal to the old ``max_iter``, i.e. "at the end", follows it),
    afa_d2's :class:`~.hooks.PeriodicEvaluation` (a period equal to the old ``max_iter`` follows
    it) and :class:`~.hooks.MetricWriters` (the console's ETA); afa_d2's progress bar reads
    ``trainer.max_iter`` itself. The lr schedule is :class:`TimeBudget`'s business.
    """
    max_iter = int(max_iter)
    if max_iter <= trainer.iter:
        raise ValueError(
            f"cannot end training at max_iter={max_iter}: iteration {trainer.iter} is running "
            f"(expected max_iter > {trainer.iter}; {trainer.iter + 1} ends after it)"
        )
    old = int(trainer.max_iter)
    trainer.max_iter = max_iter
    for h in trainer_hooks(trainer):
        if isinstance(h, hooks.PeriodicCheckpointer):
            h.max_iter = max_iter
            if h.period == old:
                h.period = max_iter
        elif isinstance(h, PeriodicEvaluation) and h.period == old:
            h.period = max_iter
        elif isinstance(h, MetricWriters):
            h.set_max_iter(max_iter)


class TimeBudget(HookBase):
    """Re-size training so that it ends at ``deadline`` (see the module's docs).

    Register it before the ``LRScheduler`` hook, so that the lr of the next step follows a
    re-sized schedule, and before the checkpointer and evaluation hooks, so that an early end
    still gets its final checkpoint and evaluation. Time spent in other hooks between two of its
    calls (a periodic checkpoint or evaluation) counts as training time: it slows the measured
    speed, and a long one just before the deadline ends training a step early.

    Args:
        deadline (float): when training must end, on ``clock``'s scale (``time.perf_counter()``).
        lr_multiplier (EpochStepMultiplier): the schedule the ``LRScheduler`` hook follows; its
            ``decay_iters`` move with ``max_iter``. ``None``: the lr schedule is left alone.
        skip_iters (int): steps not timed at the start (first kernels and allocations); at least 1.
        check_period (int): re-size every this many iterations.
        freeze_fraction (float): stop re-sizing at this fraction of ``max_iter``; must come
            before the first lr decay.
        clock (callable): seconds, monotonic (tests pass a fake one).
        refresh_deadline (callable): ``refresh_deadline(trainer) -> float``, called once, at the
            first check past ``refresh_fraction`` of training, returns a new deadline (the demo
            times its evaluation on the half-trained model there); its own time is not counted
            as training time.
        refresh_fraction (float): when to call ``refresh_deadline``; below ``freeze_fraction``.
    """

    def __init__(
        self,
        deadline: float,
        *,
        lr_multiplier: Optional[EpochStepMultiplier] = None,
        skip_iters: int = 10,
        check_period: int = 50,
        freeze_fraction: float = 0.6,
        clock: Callable[[], float] = time.perf_counter,
        refresh_deadline: Optional[Callable[[Any], float]] = None,
        refresh_fraction: float = 0.5,
    ):
        if not 0.0 < freeze_fraction <= 1.0:
            raise ValueError(f"freeze_fraction must be in (0, 1], got {freeze_fraction!r}")
        if refresh_deadline is not None and not 0.0 <= refresh_fraction < freeze_fraction:
            raise ValueError(
                f"refresh_fraction must be in [0, freeze_fraction={freeze_fraction}), got {refresh_fraction!r}"
            )
        if check_period < 1 or skip_iters < 0:
            raise ValueError(f"check_period must be >= 1 and skip_iters >= 0, got {check_period}, {skip_iters}")
        if lr_multiplier is not None and not isinstance(lr_multiplier, EpochStepMultiplier):
            raise TypeError(
                f"TimeBudget moves the decay points of an EpochStepMultiplier, got {type(lr_multiplier).__name__}"
            )
        self.deadline = float(deadline)
        self.lr_multiplier = lr_multiplier
        self.skip_iters = int(skip_iters)
        self.check_period = int(check_period)
        self.freeze_fraction = float(freeze_fraction)
        self._clock = clock
        self.refresh_deadline = refresh_deadline
        self.refresh_fraction = float(refresh_fraction)
        self._fractions: List[float] = []
        self._t0: Optional[float] = None
        self._t_last: Optional[float] = None
        self._i0 = 0
        self.seconds_per_iter: Optional[float] = None  # the last measurement
        self.frozen = False
        self.resizes: List[tuple] = []  # (iteration, new max_iter, seconds per iteration)

    def before_train(self):
        first = self.freeze_fraction * self.trainer.max_iter
        if self.lr_multiplier is not None:
            decays = self.lr_multiplier.decay_iters
            if decays and min(decays) < first:
                raise ValueError(
                    f"TimeBudget(freeze_fraction={self.freeze_fraction}) would re-size training after the "
                    f"first lr decay (iteration {min(decays)} of {self.trainer.max_iter}): lower freeze_fraction"
                )
            self._fractions = [d / self.trainer.max_iter for d in decays]
        self._i0 = self.trainer.start_iter + self.skip_iters

    def after_step(self):
        it = self.trainer.iter  # the step that just ran
        now = self._clock()
        last_step = now - self._t_last if self._t_last is not None else 0.0
        self._t_last = now
        if self._t0 is None:
            if it + 1 >= self._i0:
                self._t0, self._i0 = now, it + 1
            return
        done = it + 1 - self._i0
        average = (now - self._t0) / done
        if not self.frozen and done % self.check_period == 0:
            self.seconds_per_iter = average
            if self.refresh_deadline is not None and it + 1 >= self.refresh_fraction * self.trainer.max_iter:
                self._refresh()
                now = self._clock()
            if it + 1 < self.freeze_fraction * self.trainer.max_iter:
                fit = it + 1 + max(0, math.floor((self.deadline - now) / average))
                self._resize(fit)
                return
            self.frozen = True
            logger.info("TimeBudget: schedule fixed at %d iterations (%.3f s/it)", self.trainer.max_iter, average)
        # At any step: end now if the next one would end past the deadline. A step takes the longer
        # of the average so far and the last one: the machine may just have slowed down.
        if it + 1 < self.trainer.max_iter and now + max(average, last_step) > self.deadline:
            logger.warning("TimeBudget: the deadline is near; training ends at iteration %d instead of %d",
                           it + 1, self.trainer.max_iter)
            self._resize(it + 1)  # the step that ran is the last; its checkpoint and evaluation follow

    def _refresh(self) -> None:
        t = self._clock()
        deadline = float(self.refresh_deadline(self.trainer))
        spent = self._clock() - t
        self._t0 += spent  # not training time
        self._t_last += spent
        self.refresh_deadline = None  # once
        logger.info("TimeBudget: deadline moved by %+.1f s (%.1f s to refresh it)", deadline - self.deadline, spent)
        self.deadline = deadline

    def _resize(self, max_iter: int) -> None:
        if max_iter == self.trainer.max_iter:
            return
        resize_training(self.trainer, max_iter)
        if self.lr_multiplier is not None and not self.frozen:
            self.lr_multiplier.decay_iters = [int(round(f * max_iter)) for f in self._fractions]
        self.resizes.append((self.trainer.iter + 1, max_iter, self.seconds_per_iter))
        logger.info("TimeBudget: at iteration %d, %s s/it: training re-sized to %d iterations",
                    self.trainer.iter + 1, "{:.3f}".format(self.seconds_per_iter or float("nan")), max_iter)
