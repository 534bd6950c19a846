"""``tools/slurm_train.py``: submit train_net.py's training to a Slurm cluster (the command's parser,
its checks, the submission and ``--wait``'s report).

    python tools/slurm_train.py --config-file configs/COCO/cascade_mask_rcnn_R_50_msca_1x.py \\
        --nodes 2 --gpus-per-node 8 --partition gpu --time 3-00:00:00 train.output_dir=out/msca

Everything after the Slurm options is train_net.py's (``--resume``, ``--eval-only``, ``--progress``,
config overrides); ``--num-gpus``, ``--num-machines``, ``--machine-rank`` and ``--dist-url`` are set
per task from the job. The job's submitit logs and pickles go to ``--folder`` (default
``<train.output_dir>/submitit``), the training's own logs and checkpoints to ``train.output_dir``.
``--cluster local`` runs the same job on this machine (submitit's local executor, one node).
Each task runs :func:`afa_d2.train_net.main`; the mechanics are in :mod:`afa_d2.engine.slurm`.
"""
import argparse
import os
import shutil
import sys

from afa_d2 import train_net
from afa_d2.engine import load_config, slurm

__all__ = ["argument_parser", "main", "parse_args"]

# printed as it is written (detectron2's parser keeps the description's line breaks)
DESCRIPTION = ("Submit train_net.py's training to a Slurm cluster: nodes x GPUs per node, one task per GPU,\n"
               "requeued on time-out or preemption and resumed from the last checkpoint.")

# the folder that holds the afa_d2 package (the repository in a checkout): the job's tasks import
# afa_d2.train_net.main from it, installed or not
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# train_net.py's launch options: each task sets them from its place in the job.
LAUNCH_OPTIONS = {
    "num_gpus": ("--num-gpus", "--gpus-per-node"),
    "num_machines": ("--num-machines", "--nodes"),
    "machine_rank": ("--machine-rank", "nothing (each task knows its node)"),
    "dist_url": ("--dist-url", "--dist-port (the host is the job's first node)"),
}


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {minimum}")
        return value

    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _time_limit(text):
    try:
        return slurm.parse_time_limit(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def argument_parser():
    """train_net.py's parser plus the Slurm options; every error is one line."""
    parser = train_net.argument_parser()
    parser.prog = "slurm_train.py"
    parser.description = DESCRIPTION
    parser.epilog = None
    g = parser.add_argument_group("Slurm")
    g.add_argument("--nodes", type=_int_at_least(1), default=1, help="number of nodes (default: 1)")
    g.add_argument("--gpus-per-node", type=_int_at_least(1), default=8,
                   help="GPUs per node, one task (process) each (default: 8)")
    g.add_argument("--time", type=_time_limit, required=True, metavar="TIME",
                   help="time limit of each run of the job: minutes, HH:MM:SS or D-HH:MM:SS")
    g.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    g.add_argument("--job-name", help="Slurm job name (default: afa_d2-<config name>)")
    g.add_argument("--account", help="sbatch --account")
    g.add_argument("--qos", help="sbatch --qos")
    g.add_argument("--constraint", help="sbatch --constraint, e.g. a GPU type")
    g.add_argument("--cpus-per-task", type=_int_at_least(1), help="CPU cores per task (data loading)")
    g.add_argument("--mem-gb", type=_positive_float, help="memory per node, GB")
    g.add_argument("--signal-delay", type=_int_at_least(1), default=120, metavar="SECONDS",
                   help="the requeue signal comes this long before the time limit (default: 120)")
    g.add_argument("--max-timeouts", type=_int_at_least(0), default=3,
                   help="how many times a timed-out job is requeued; preemptions do not count (default: 3)")
    g.add_argument("--folder", help="submitit's logs and pickles (default: <train.output_dir>/submitit)")
    g.add_argument("--dist-port", type=_int_at_least(1), help="rendezvous port (default: from the job id)")
    g.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="'local': run the job on this machine with submitit's local executor")
    g.add_argument("--wait", action="store_true", help="wait for the job to end and report how it ended")

    def one_line_error(message):
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    parser.error = one_line_error
    return parser


def _output_dir_and_batch(config_file, opts):
    """``(output dir, total batch)`` of a LazyConfig ``.py`` or a yacs ``.yaml`` config."""
    if config_file.endswith(train_net.YAML_SUFFIXES):
        from detectron2.config import get_cfg

        from afa_d2.config import add_afa_config

        cfg = get_cfg()
        add_afa_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts or []))
        return cfg.OUTPUT_DIR, cfg.SOLVER.IMS_PER_BATCH
    cfg = load_config(config_file, opts)
    return cfg.train.output_dir, cfg.dataloader.train.get("total_batch_size", None)


def parse_args(argv=None):
    """train_net.py's checks (config file, overrides), then the job's; returns ``(args, resources)``."""
    parser = argument_parser()
    try:
        args = train_net.parse_args(argv, parser)
    except ValueError as e:  # an override that is not key=value, e.g. an option written after the overrides
        parser.error(f"{e} (options go before the config overrides)")
    for dest, (option, instead) in LAUNCH_OPTIONS.items():
        if getattr(args, dest) != parser.get_default(dest):
            parser.error(f"{option} is train_net.py's launch option; with Slurm use {instead}")
    try:
        slurm.require_submitit()
    except ImportError as e:
        parser.error(str(e))
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None] if args.cluster == "slurm" else []
    if missing:
        parser.error(f"{', '.join(missing)} not found: run this on a Slurm login node, or add --cluster local "
                     "to run the job here")
    args.config_file = os.path.abspath(args.config_file)
    name = os.path.splitext(os.path.basename(args.config_file))[0]
    try:
        resources = slurm.SlurmResources(
            nodes=args.nodes, gpus_per_node=args.gpus_per_node, time_min=args.time, partition=args.partition,
            job_name=args.job_name or f"afa_d2-{name}", account=args.account, qos=args.qos,
            constraint=args.constraint, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
            signal_delay_s=args.signal_delay, max_timeouts=args.max_timeouts,
        )
    except ValueError as e:
        parser.error(str(e))
    if args.cluster == "local" and resources.nodes != 1:
        parser.error(f"--cluster local runs on this machine: --nodes must be 1, got {resources.nodes}")
    output_dir, total_batch = _output_dir_and_batch(args.config_file, args.opts)
    if total_batch is not None and int(total_batch) % resources.world_size:
        parser.error(
            f"the total batch {total_batch} does not split over {resources.nodes} x {resources.gpus_per_node} = "
            f"{resources.world_size} processes: change --nodes/--gpus-per-node or the config's total batch"
        )
    if args.folder is None:
        args.folder = os.path.join(os.path.abspath(output_dir), "submitit")
    return args, resources


def main(argv=None) -> int:
    """Submit the job; with ``--wait``, wait for it and report how it ended (exit status 1 if it failed)."""
    args, resources = parse_args(argv)
    job = slurm.submit(train_net.main, args, resources, args.folder, cluster=args.cluster,
                       python_path=[IMPORT_ROOT], dist_port=args.dist_port)
    print(f"Submitted job {job.job_id} ({args.cluster}): {resources.nodes} node(s) x {resources.gpus_per_node} "
          f"GPU(s), {resources.time_min} min per run; submitit logs in {args.folder}", flush=True)
    if not args.wait:
        return 0
    try:
        job.results()
    except Exception as e:  # submitit's FailedJobError / UncompletedJobError carry the task's traceback
        lines = [line for line in str(e).splitlines() if line.strip()]
        print(f"job {job.job_id} failed: {lines[-1] if lines else type(e).__name__}; see {args.folder}",
              file=sys.stderr)
        return 1
    print(f"job {job.job_id} finished", flush=True)
    return 0
