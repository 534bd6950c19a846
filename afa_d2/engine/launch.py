"""Start workers with detectron2's ``launch`` and end each one cleanly.

detectron2's ``launch`` spawns one process per GPU (or per CPU worker, with gloo) and calls
``main_func(*args)`` in each, but no version of it ever destroys the process group it
created. The group is then torn down during interpreter finalization, where gloo's worker
threads can still hold references into Python: now and then a worker that finished its work
dies with SIGABRT ("terminate called without an active exception"), and ``launch``, a
scheduler or Slurm reports a successful run as failed (pytorch/pytorch#190489 describes the
same crash; a PyTorch pull request that would have destroyed the group at exit was abandoned,
#179291).

:func:`launch` here is detectron2's, with ``main_func`` wrapped so that every worker, after
``main_func`` returns, waits for the others (one barrier: no rank closes its connections
while a peer still uses them) and destroys the process group, then exits 0. It works on any
detectron2 (it does not patch detectron2: the official build's ``launch`` is called as it
is; on the registry copy of v0.6, :mod:`afa_d2.compat`'s CPU-capable worker also ends the
group). When ``main_func`` raises, the group is left alone: the worker fails as before and
``launch`` reports the error (destroying a group with work still pending could wait for the
peers until the timeout).
"""
from __future__ import annotations

import functools
import logging
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

from afa_d2.compat import end_process_group

__all__ = ["launch", "end_process_group"]

logger = logging.getLogger(__name__)


def _run_then_end_process_group(main_func: Callable, *args: Any) -> Any:
    ret = main_func(*args)
    end_process_group()
    return ret


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: Optional[timedelta] = None,
) -> None:
    """detectron2's ``launch``, every worker ending its process group after ``main_func``.

    Args: as :func:`detectron2.engine.launch`. ``main_func`` must be picklable (a module-level
    function) when more than one process is started. ``timeout`` defaults to detectron2's.
    """
    from detectron2.engine import launch as d2_launch

    kwargs = {} if timeout is None else {"timeout": timeout}
    d2_launch(
        functools.partial(_run_then_end_process_group, main_func),
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=tuple(args),
        **kwargs,
    )
