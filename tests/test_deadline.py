"""TimeBudget and the resizable training loop, on a one-parameter model and a fake clock.

Each step advances the fake clock by the seconds ``step_seconds(iteration)`` returns, so the
throughput TimeBudget measures, and the iteration it must stop at, are known exactly.
"""
import itertools
import time

import pytest
import torch
from detectron2.engine import hooks

from afa_d2.engine.deadline import TimeBudget, resize_training
from afa_d2.engine.schedule import EpochStepMultiplier
from afa_d2.engine.hooks import ProgressBar
from afa_d2.engine.train_loop import trainer_class


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TimedModel(torch.nn.Module):
    """A loss of one parameter; each forward costs ``step_seconds(iteration)`` on the clock."""

    def __init__(self, clock, step_seconds):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.clock, self.step_seconds, self.calls = clock, step_seconds, 0

    def forward(self, batch):
        self.clock.now += self.step_seconds(self.calls)
        self.calls += 1
        return {"loss": (self.w * batch).sum() ** 2}


class SaveRecorder:
    path_manager = None  # fvcore's PeriodicCheckpointer reads it

    def __init__(self):
        self.saved = []

    def save(self, name, **kwargs):
        self.saved.append((name, kwargs["iteration"]))


def _train(max_iter, deadline, step_seconds, decays=(8 / 12, 11 / 12), extra_hooks=(), **budget_kwargs):
    clock = FakeClock()
    model = TimedModel(clock, step_seconds)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    multiplier = EpochStepMultiplier(max_iter, [round(f * max_iter) for f in decays], gamma=0.1, warmup_iters=5)
    lr_hook = hooks.LRScheduler(scheduler=multiplier)
    budget = TimeBudget(deadline, lr_multiplier=multiplier, clock=clock, **budget_kwargs)
    saves = SaveRecorder()
    evals = []
    trainer = trainer_class(amp=False)(model, itertools.repeat(torch.ones(2)), optimizer)
    lrs = []

    class LrLog(hooks.HookBase):
        def before_step(self):
            lrs.append(optimizer.param_groups[0]["lr"])

    trainer.register_hooks(
        [
            LrLog(),
            budget,
            lr_hook,
            hooks.PeriodicCheckpointer(saves, period=max_iter),
            hooks.EvalHook(0, lambda: evals.append(trainer.iter)),
            *extra_hooks,
        ]
    )
    trainer.train(0, max_iter)
    return dict(trainer=trainer, clock=clock, budget=budget, saves=saves.saved, evals=evals, lrs=lrs,
                multiplier=multiplier)


def test_grows_to_the_deadline_and_moves_the_decays():
    # 1 s a step, 100 iterations planned, 300 s allowed: about 300 iterations fit.
    r = _train(100, 300.0, lambda i: 1.0, check_period=10)
    trainer = r["trainer"]
    assert 290 <= trainer.max_iter <= 300
    assert trainer.iter == trainer.max_iter  # finished, as detectron2's loop leaves it
    assert r["clock"].now <= 300.0
    # the decays kept their fractions of training, and the lr followed them
    assert r["multiplier"].decay_iters == [round(trainer.max_iter * 67 / 100), round(trainer.max_iter * 92 / 100)]
    first, second = r["multiplier"].decay_iters
    lrs = r["lrs"]
    assert lrs[first - 1] == pytest.approx(1e-3) and lrs[first] == pytest.approx(1e-4)
    assert lrs[second - 1] == pytest.approx(1e-4) and lrs[second] == pytest.approx(1e-5)
    assert lrs[-1] == pytest.approx(1e-5)
    # one final checkpoint, at the new last iteration; one evaluation, at the end
    last = trainer.max_iter - 1
    assert ("model_final", last) in r["saves"]
    assert all(it == last for _, it in r["saves"])
    assert r["evals"] == [trainer.max_iter]


def test_shrinks_when_steps_are_slower_than_planned():
    r = _train(1000, 200.0, lambda i: 1.0, check_period=10)
    assert 190 <= r["trainer"].max_iter <= 200
    assert r["clock"].now <= 200.0
    assert r["budget"].resizes  # it was re-sized, and says when
    assert ("model_final", r["trainer"].max_iter - 1) in r["saves"]


def test_ends_early_when_the_machine_slows_after_the_schedule_is_fixed():
    # 1 s a step until iteration 150, then 4 s: the schedule (fixed at 60% of ~300 iterations)
    # no longer fits, so training ends at the deadline, with its final checkpoint and evaluation.
    r = _train(100, 300.0, lambda i: 1.0 if i < 150 else 4.0, check_period=10)
    trainer, budget = r["trainer"], r["budget"]
    assert budget.frozen
    assert r["clock"].now <= 300.0
    assert trainer.max_iter < 200
    assert ("model_final", trainer.max_iter - 1) in r["saves"]
    assert r["evals"] == [trainer.max_iter]


def test_a_short_run_with_time_to_spare_is_left_alone():
    r = _train(20, 1000.0, lambda i: 1.0, check_period=50)
    assert r["trainer"].max_iter == 20 and r["budget"].resizes == []


def test_a_deadline_already_past_ends_after_the_first_timed_step():
    # steps 0-9 are not timed (skip_iters=10); step 10 gives the first speed, and the next step
    # would end past the deadline: the run ends with 11 iterations, checkpointed and evaluated.
    r = _train(30, 1.0, lambda i: 1.0, check_period=50)
    assert r["trainer"].max_iter == 11 == r["trainer"].iter
    assert ("model_final", 10) in r["saves"] and r["evals"] == [11]


def test_a_refreshed_deadline_is_used_and_its_own_time_is_not_training_time():
    # The first deadline (200 s) is pessimistic; half-way, refresh_deadline says 300 s and takes
    # 5 s itself: training grows to ~295 iterations, and the 5 s do not slow the measured speed.
    calls = []

    def refresh(trainer):
        calls.append((trainer.iter, trainer.max_iter))
        trainer.model.clock.now += 5.0
        return 300.0

    r = _train(100, 200.0, lambda i: 1.0, check_period=10, refresh_deadline=refresh)
    trainer, budget = r["trainer"], r["budget"]
    assert len(calls) == 1  # once, at the first check past half of the run
    it, planned = calls[0]
    assert 0.5 * planned <= it + 1 < 0.5 * planned + 10
    assert budget.deadline == 300.0
    assert 285 <= trainer.max_iter <= 295 and r["clock"].now <= 300.0
    assert budget.seconds_per_iter == pytest.approx(1.0)


def test_progress_bar_follows_max_iter():
    bar = ProgressBar()
    totals = []

    class Spy(hooks.HookBase):
        def after_step(self):
            totals.append(bar._bar.total if bar._bar is not None else None)

    r = _train(100, 300.0, lambda i: 1.0, check_period=10, extra_hooks=[bar, Spy()])
    assert totals[-1] == r["trainer"].max_iter != 100


def test_refuses_a_freeze_point_after_the_first_decay():
    with pytest.raises(ValueError, match="freeze_fraction"):
        _train(100, 300.0, lambda i: 1.0, decays=(0.5, 0.9), freeze_fraction=0.6)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="freeze_fraction must be in"):
        TimeBudget(1.0, freeze_fraction=1.5)
    with pytest.raises(ValueError, match=r"refresh_fraction must be in \[0, freeze_fraction=0.6\), got 0.7"):
        TimeBudget(1.0, refresh_deadline=lambda t: 1.0, refresh_fraction=0.7)
    with pytest.raises(TypeError, match="EpochStepMultiplier"):
        TimeBudget(1.0, lr_multiplier=object())


def test_resize_training_refuses_to_end_before_the_running_iteration():
    class T:
        iter, max_iter, _hooks = 10, 20, []

    with pytest.raises(ValueError, match="max_iter=10"):
        resize_training(T(), 10)
    t = T()
    resize_training(t, 11)
    assert t.max_iter == 11


def test_do_train_with_a_past_deadline_stops_checkpoints_and_evaluates(data_root, tmp_path):
    """do_train(deadline=) wires a TimeBudget into a real Mask R-CNN run: 30 iterations are
    planned, the deadline has passed, so training ends after the first timed step (11 iterations),
    writes its final checkpoint, evaluates, and reports the iterations it trained."""
    import os

    import _engine_fixtures as fx
    from detectron2.config import LazyConfig

    from afa_d2.engine import resolve_epoch_schedule
    from afa_d2.engine.train_loop import do_train

    out = tmp_path / "out"
    cfg = LazyConfig.load(fx.write_config(str(tmp_path / "cfg.py"), "mask_rcnn", data_root, str(out), max_iter=30))
    resolve_epoch_schedule(cfg)
    results = do_train(cfg, deadline=time.perf_counter())
    assert cfg.train.max_iter == 11
    assert os.path.isfile(out / "model_final.pth")
    assert fx.load_model_state(str(out / "model_final.pth")) and "bbox" in results
    assert max(r["iteration"] for r in fx.read_metrics(str(out)) if "total_loss" in r) == 10
