"""Training on a Slurm cluster through submitit: one task per GPU, requeued on time-out or preemption.

``tools/slurm_train.py`` (:mod:`afa_d2.slurm_train`) submits ``afa_d2.train_net.main`` with :func:`submit`.
The job asks for ``nodes x gpus_per_node`` GPUs and runs one Slurm task per GPU (submitit's ``tasks_per_node``).
Each task (:class:`TrainingTask`):

1. reads its place in the job from submitit's ``JobEnvironment`` (global rank, local rank, node,
   world size) and the rendezvous URL ``tcp://<first host of the job>:<port>``, the port derived
   from the job id so that every task, and every requeued run of the job, agrees on it without
   talking (:func:`distributed_setup`);
2. joins the process group through detectron2's own worker set-up, the one ``train_net.py
   --num-gpus`` uses for each process it spawns (NCCL with CUDA, gloo without; detectron2's local
   process group; ``cuda.set_device(local_rank)``);
3. runs ``main_func(args)`` and, after a successful run, ends its process group
   (:func:`afa_d2.engine.end_process_group`), so that it exits 0 and Slurm records success.

Time-out and preemption. submitit's job asks Slurm for its signal (``USR2``) ``signal_delay_s``
seconds before the time limit (``#SBATCH --signal``; Slurm sends it on preemption too where the
cluster sets ``SlurmctldParameters=preempt_send_user_signal``), and the job is marked requeueable
(``--requeue``). On that signal submitit calls, in the task of global rank 0,
:meth:`TrainingTask.checkpoint`, which returns the same task with ``--resume``
(a ``DelayedSubmission``); submitit stores it in place of the submitted one and requeues the job
(``scontrol requeue``; the local executor restarts the tasks). The requeued job continues from the
last checkpoint of ``train.output_dir``: ``do_train(resume=True)`` restores model, optimizer, lr
scheduler and iteration and continues the data stream and the per-step seeds, so with the settings
of an exact resume (``train.seed >= 0``, ``num_workers=0``) it trains as if never stopped (bit for bit
on two gloo tasks, ``tests/test_slurm.py``). Work since
the last checkpoint is redone: ``train.checkpointer.period`` bounds what a requeue costs.
A job that Slurm itself restarts (node failure, ``PreemptMode=REQUEUE``; ``SLURM_RESTART_COUNT >
0``) resumes too. ``--eval-only`` jobs are resubmitted unchanged.

Rank 0 leaves as soon as the requeue is done (``os._exit``): submitit ends the task with
``SystemExit`` from inside its signal handler, i.e. in the middle of a training step, and letting
that unwind would run the trainer's ``after_train`` hooks on one rank and tear down a live gloo
group at interpreter exit (which can abort the process, and then the local executor does not
requeue). The other ranks are stopped by Slurm's requeue, or, with gloo, fail at their next
collective; their results of that run are overwritten by the requeued run.

submitit is an optional dependency (``pip install 'afa_d2[slurm]'``); this module imports it only
where it is used.
"""
from __future__ import annotations

import argparse
import copy
import functools
import logging
import math
import os
import re
import shlex
import signal
import sys
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

from afa_d2.compat import distributed_worker, slurm_requeue_signal

__all__ = [
    "DistributedSetup",
    "SlurmResources",
    "TrainingTask",
    "build_executor",
    "distributed_setup",
    "parse_time_limit",
    "port_for_job",
    "require_submitit",
    "submit",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'afa_d2[slurm]' (or: pip install submitit)"
PORT_RANGE = (20000, 32000)  # below Linux's ephemeral ports (32768-60999), which outgoing connections take


def require_submitit():
    """Import and return ``submitit``; an ``ImportError`` with a one-line fix when it is missing."""
    try:
        import submitit
    except ImportError as e:
        raise ImportError(f"submitit is not installed ({e}): {INSTALL_HINT}") from None
    return submitit


# ---------------------------------------------------------------------------------------------
# what to ask Slurm for
_TIME_FORMATS = (  # Slurm's --time formats (sbatch(1)), each to (days, hours, minutes, seconds) groups
    (re.compile(r"^(\d+)$"), ("m",)),
    (re.compile(r"^(\d+):(\d+)$"), ("m", "s")),
    (re.compile(r"^(\d+):(\d+):(\d+)$"), ("h", "m", "s")),
    (re.compile(r"^(\d+)-(\d+)$"), ("d", "h")),
    (re.compile(r"^(\d+)-(\d+):(\d+)$"), ("d", "h", "m")),
    (re.compile(r"^(\d+)-(\d+):(\d+):(\d+)$"), ("d", "h", "m", "s")),
)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_time_limit(text: str) -> int:
    """A Slurm time limit in whole minutes, seconds rounded up as Slurm does.

    Args:
        text (str): one of Slurm's ``--time`` formats: ``minutes``, ``minutes:seconds``,
            ``hours:minutes:seconds``, ``days-hours``, ``days-hours:minutes``,
            ``days-hours:minutes:seconds`` (e.g. ``90``, ``12:00:00``, ``3-00:00:00``).

    Returns:
        int: minutes, at least 1.

    Raises:
        ValueError: naming ``text`` when it is none of these or is zero.
    """
    value = str(text).strip()
    for pattern, units in _TIME_FORMATS:
        match = pattern.match(value)
        if match:
            seconds = sum(int(g) * _SECONDS[u] for g, u in zip(match.groups(), units))
            if seconds <= 0:
                break
            return math.ceil(seconds / 60)
    raise ValueError(
        f"time limit {text!r} is not a positive Slurm time: use minutes (90), HH:MM:SS (12:00:00) "
        "or D-HH:MM:SS (3-00:00:00)"
    )


@dataclass(frozen=True)
class SlurmResources:
    """What the job asks Slurm for: ``nodes x gpus_per_node`` GPUs, one task per GPU.

    Args:
        nodes (int): number of nodes (>= 1).
        gpus_per_node (int): GPUs per node, and so tasks (processes) per node (>= 1). On nodes
            without CUDA (submitit's local executor on a CPU machine) the tasks use gloo.
        time_min (int): the job's time limit in minutes (>= 1); each requeued run gets it again.
        partition (str): Slurm partition; None: the cluster's default.
        job_name (str): Slurm job name.
        account, qos, constraint (str): passed to ``sbatch --account/--qos/--constraint``; None: not set.
        cpus_per_task (int): CPU cores per task (data loading workers run there); None: Slurm's default.
        mem_gb (float): memory per node in GB; None: Slurm's default.
        signal_delay_s (int): how long before the time limit Slurm sends the requeue signal (>= 1).
        max_timeouts (int): how many times a timed-out job is requeued (preemptions do not count).
    """

    nodes: int = 1
    gpus_per_node: int = 8
    time_min: int = 60
    partition: Optional[str] = None
    job_name: str = "afa_d2"
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    signal_delay_s: int = 120
    max_timeouts: int = 3

    def __post_init__(self):
        for name in ("nodes", "gpus_per_node", "time_min", "signal_delay_s"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("max_timeouts", self.max_timeouts, minimum=0)
        if self.cpus_per_task is not None:
            _check_int("cpus_per_task", self.cpus_per_task, minimum=1)
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float)) and self.mem_gb > 0):
            raise ValueError(f"mem_gb={self.mem_gb!r}: expected a positive number of GB")
        if self.signal_delay_s >= 60 * self.time_min:
            raise ValueError(
                f"signal_delay_s={self.signal_delay_s} is not shorter than the time limit ({self.time_min} min)"
            )
        if not self.job_name or any(c.isspace() for c in self.job_name):
            raise ValueError(f"job_name={self.job_name!r}: expected a name without spaces")

    @property
    def world_size(self) -> int:
        """Processes in the job: ``nodes * gpus_per_node``."""
        return self.nodes * self.gpus_per_node

    def executor_parameters(self, python_path: Sequence[str] = ()) -> Dict[str, Any]:
        """Keyword arguments for ``submitit.AutoExecutor.update_parameters``.

        Args:
            python_path (list[str]): folders put in front of ``PYTHONPATH`` in the job (where
                the submitted function's module lives, e.g. the folder that holds ``afa_d2``).
        """
        setup = []
        if python_path:
            joined = os.pathsep.join(os.path.abspath(p) for p in python_path)
            setup.append(f'export PYTHONPATH={shlex.quote(joined)}"${{PYTHONPATH:+:$PYTHONPATH}}"')
        params: Dict[str, Any] = dict(
            name=self.job_name,
            timeout_min=self.time_min,
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            tasks_per_node=self.gpus_per_node,  # one task per GPU
            cpus_per_task=self.cpus_per_task,
            mem_gb=self.mem_gb,
            slurm_partition=self.partition,
            slurm_account=self.account,
            slurm_qos=self.qos,
            slurm_constraint=self.constraint,
            slurm_signal_delay_s=self.signal_delay_s,
            # requeueable even where the cluster's JobRequeue=0 (`scontrol requeue` needs it there)
            slurm_additional_parameters={"requeue": True},
        )
        if setup:
            params.update(slurm_setup=list(setup), local_setup=list(setup))
        return {k: v for k, v in params.items() if v is not None}


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")


# ---------------------------------------------------------------------------------------------
# where each task stands
@dataclass(frozen=True)
class DistributedSetup:
    """One task's place in the job's process group.

    Args:
        global_rank (int): rank in the job, ``node * tasks_per_node + local_rank``.
        local_rank (int): rank on its node; the CUDA device it uses.
        node (int): index of its node (detectron2's ``machine_rank``).
        num_nodes (int): nodes in the job.
        tasks_per_node (int): tasks per node (= GPUs per node).
        dist_url (str): ``tcp://<first host>:<port>``, the rendezvous of ``init_process_group``.
    """

    global_rank: int
    local_rank: int
    node: int
    num_nodes: int
    tasks_per_node: int
    dist_url: str

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.tasks_per_node


def port_for_job(job_id: str) -> int:
    """The rendezvous port of a job: a stable hash of its id into ``PORT_RANGE``.

    Every task computes the same port without communicating, a requeued run of the job gets the
    same one, and two jobs sharing a node almost never collide.

    Args:
        job_id (str): Slurm's job id (``"123456"``, or ``"123456_7"`` for an array task).
    """
    low, high = PORT_RANGE
    return low + zlib.crc32(str(job_id).encode()) % (high - low)


def distributed_setup(job_env: Any, port: Optional[int] = None) -> DistributedSetup:
    """Where this task stands, from submitit's ``JobEnvironment``.

    Args:
        job_env: ``submitit.JobEnvironment()`` in a task, or any object with its attributes
            ``job_id, hostnames, num_nodes, num_tasks, node, global_rank, local_rank``.
        port (int): the rendezvous port; None: :func:`port_for_job` of the job id.

    Raises:
        ValueError: when the tasks are not spread evenly over the nodes, or a task's global rank
            is not ``node * tasks_per_node + local_rank`` (Slurm's default block distribution,
            which detectron2's process groups assume), naming the values.
    """
    num_nodes, num_tasks = int(job_env.num_nodes), int(job_env.num_tasks)
    if num_nodes < 1 or num_tasks < num_nodes or num_tasks % num_nodes:
        raise ValueError(f"{num_tasks} tasks do not spread evenly over {num_nodes} nodes")
    tasks_per_node = num_tasks // num_nodes
    node, local_rank, global_rank = int(job_env.node), int(job_env.local_rank), int(job_env.global_rank)
    if global_rank != node * tasks_per_node + local_rank:
        raise ValueError(
            f"task of global rank {global_rank} is local rank {local_rank} on node {node} with "
            f"{tasks_per_node} tasks per node: expected global rank {node * tasks_per_node + local_rank} "
            "(Slurm's block distribution; do not pass --distribution)"
        )
    hosts = list(job_env.hostnames)
    if not hosts:
        raise ValueError(f"job {job_env.job_id} lists no hosts")
    if port is None:
        port = port_for_job(job_env.job_id)
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not a TCP port")
    return DistributedSetup(
        global_rank=global_rank, local_rank=local_rank, node=node, num_nodes=num_nodes,
        tasks_per_node=tasks_per_node, dist_url=f"tcp://{hosts[0]}:{int(port)}",
    )


def restarted_by_slurm() -> bool:
    """True in a job that Slurm has started again (``SLURM_RESTART_COUNT > 0``)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# what each task runs
class TrainingTask:
    """The function submitit runs in every task of the job; checkpointable (requeued with --resume).

    Args:
        main_func (callable): ``main_func(args)``, e.g. ``afa_d2.train_net.main``; a module-level function
            (it is pickled by reference: its module must be importable in the job, see
            ``python_path`` of :func:`submit`).
        args (argparse.Namespace): ``train_net.py``'s arguments (``config_file``, ``opts``,
            ``resume``, ``eval_only``, ...). Each task sets ``num_gpus``, ``num_machines``,
            ``machine_rank`` and ``dist_url`` from its :class:`DistributedSetup`.
        dist_port (int): the rendezvous port; None: derived from the job id (:func:`port_for_job`).
    """

    def __init__(self, main_func: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
                 dist_port: Optional[int] = None):
        self.main_func = main_func
        self.args = args
        self.dist_port = dist_port

    def task_args(self, setup: DistributedSetup) -> argparse.Namespace:
        """A copy of ``args`` for the task at ``setup``: launch fields filled in, and ``resume``
        set for training when Slurm restarted the job."""
        args = copy.copy(self.args)
        args.num_gpus = setup.tasks_per_node
        args.num_machines = setup.num_nodes
        args.machine_rank = setup.node
        args.dist_url = setup.dist_url
        if restarted_by_slurm() and not getattr(args, "eval_only", False):
            args.resume = True
        return args

    def __call__(self) -> Any:
        submitit = require_submitit()
        import importlib

        job_env = submitit.JobEnvironment()
        setup = distributed_setup(job_env, self.dist_port)
        _exit_at_once_after_requeue(slurm_requeue_signal(job_env))
        args = self.task_args(setup)
        print(f"afa_d2: task {setup.global_rank} of {setup.world_size} (node {setup.node}, local rank "
              f"{setup.local_rank}), rendezvous {setup.dist_url}, resume={args.resume}", flush=True)
        # train_net.py --num-gpus's per-process set-up (afa_d2.compat's on the registry copy)
        d2_launch = importlib.import_module("detectron2.engine.launch")
        results = []
        distributed_worker()(
            setup.local_rank, functools.partial(_run_then_end_process_group, self.main_func, results),
            setup.world_size, setup.tasks_per_node, setup.node, setup.dist_url, (args,),
            timeout=d2_launch.DEFAULT_TIMEOUT,
        )
        return results[0]

    def requeued(self) -> "TrainingTask":
        """This task as it runs again after a requeue: with ``resume=True`` unless ``--eval-only``
        (whose ``--resume`` picks which checkpoint to evaluate)."""
        args = copy.copy(self.args)
        if not getattr(args, "eval_only", False):
            args.resume = True
        return TrainingTask(self.main_func, args, dist_port=self.dist_port)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook (rank 0, on the time-out / preemption signal): a
        ``DelayedSubmission`` of :meth:`requeued`."""
        submitit = require_submitit()
        logger.info("Time-out or preemption: the job is requeued and resumes from its last checkpoint")
        return submitit.helpers.DelayedSubmission(self.requeued())

    def __repr__(self) -> str:
        name = getattr(self.main_func, "__module__", "?") + "." + getattr(self.main_func, "__qualname__", "?")
        return f"TrainingTask({name}, config_file={getattr(self.args, 'config_file', None)!r}, " \
               f"resume={getattr(self.args, 'resume', None)})"


def _run_then_end_process_group(main_func: Callable, results: list, args: argparse.Namespace) -> None:
    results.append(main_func(args))
    from .launch import end_process_group

    end_process_group()


def _exit_at_once_after_requeue(signum: int) -> None:
    """Wrap the handler submitit installed for ``signum`` so that the ``SystemExit`` it raises
    after requeueing the job ends the process at once (:func:`_leave_after_requeue`)."""
    handler = signal.getsignal(signum)
    if callable(handler) and getattr(handler, "func", None) is not _leave_after_requeue:  # not wrapped yet
        signal.signal(signum, functools.partial(_leave_after_requeue, handler))


def _leave_after_requeue(handler: Callable, signum: int, frame: Any) -> None:
    try:
        handler(signum, frame)
    except SystemExit as e:  # submitit requeued the job and asks this task to end
        code = e.code if isinstance(e.code, int) else 1
        logger.warning("Job requeued on signal %s: this task exits now (status %d)", signal.Signals(signum).name,
                       code & 0xFF)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # pragma: no cover - a closed stream
                pass
        os._exit(code & 0xFF)


# ---------------------------------------------------------------------------------------------
# submitting
def build_executor(folder: str, resources: SlurmResources, cluster: str = "slurm",
                   python_path: Sequence[str] = ()):
    """A ``submitit.AutoExecutor`` set up for ``resources``.

    Args:
        folder (str): where submitit writes the job's pickles and logs (``%j``: the job id).
        resources (SlurmResources): what to ask for.
        cluster (str): ``"slurm"``; ``"local"`` runs the job on this machine with submitit's local
            executor (one node; it sends the signal 30 s before ``time_min``, whatever
            ``signal_delay_s`` says).
        python_path (list[str]): folders prepended to ``PYTHONPATH`` in the job.

    Raises:
        ValueError: an unknown ``cluster``, or ``nodes > 1`` with ``cluster="local"``.
        ImportError: submitit is not installed.
    """
    if cluster not in ("slurm", "local"):
        raise ValueError(f"cluster={cluster!r}: expected 'slurm' or 'local'")
    if cluster == "local" and resources.nodes != 1:
        raise ValueError(f"the local executor runs on this machine: nodes must be 1, got {resources.nodes}")
    submitit = require_submitit()
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     **{f"{cluster}_max_num_timeout": resources.max_timeouts})
    executor.update_parameters(**resources.executor_parameters(python_path))
    return executor


def submit(main_func: Callable[[argparse.Namespace], Any], args: argparse.Namespace, resources: SlurmResources,
           folder: str, *, cluster: str = "slurm", python_path: Sequence[str] = (),
           dist_port: Optional[int] = None):
    """Submit ``main_func(args)`` as a job of ``resources.world_size`` tasks; returns the submitit job.

    Args:
        main_func (callable): a module-level ``main_func(args)`` (``afa_d2.train_net.main``).
        args (argparse.Namespace): ``train_net.py``'s arguments; ``config_file`` should be an
            absolute path (the tasks start in the submission's working directory on Slurm).
        resources (SlurmResources): nodes, GPUs, time limit, partition, ...
        folder (str): submitit's folder for the job's pickles and logs.
        cluster (str): ``"slurm"`` (default) or ``"local"`` (:func:`build_executor`).
        python_path (list[str]): folders the job needs on ``PYTHONPATH`` to import ``main_func``.
        dist_port (int): rendezvous port; None: derived from the job id.
    """
    executor = build_executor(folder, resources, cluster=cluster, python_path=python_path)
    return executor.submit(TrainingTask(main_func, args, dist_port=dist_port))
