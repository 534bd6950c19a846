"""Training engine: the epoch schedule, an atomic checkpointer, validated overrides and the
train/eval loop that ``train_net.py`` drives (see ``docs/DESIGN.md``, "Engine")."""
from .checkpoint import AtomicCheckpointer, CheckpointShapeError, LoadReport, UntrustedCheckpointError
from .deadline import TimeBudget
from .launch import end_process_group, launch
from .overrides import UnknownConfigKeyError, apply_overrides, flatten_keys, load_config
from .schedule import (
    ScheduleInfo,
    epoch_lr_multiplier,
    epochs_to_iters,
    fit_schedule_to_iters,
    resolve_epoch_schedule,
)
from .ddp import create_ddp_model
from .eval_loop import do_eval_only, do_test
from .hooks import ProgressBar
from .train_loader import DeterministicTrainingSampler
from .train_loop import do_train

__all__ = [
    "AtomicCheckpointer",
    "CheckpointShapeError",
    "LoadReport",
    "UntrustedCheckpointError",
    "UnknownConfigKeyError",
    "apply_overrides",
    "flatten_keys",
    "load_config",
    "fit_schedule_to_iters",
    "ScheduleInfo",
    "epoch_lr_multiplier",
    "epochs_to_iters",
    "resolve_epoch_schedule",
    "DeterministicTrainingSampler",
    "ProgressBar",
    "TimeBudget",
    "end_process_group",
    "launch",
    "create_ddp_model",
    "do_eval_only",
    "do_test",
    "do_train",
]
