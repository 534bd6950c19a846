"""``train_net.py``: train or evaluate an afa_d2 model (the command's parser, checks and per-worker flow).

    python train_net.py --config-file configs/COCO/cascade_mask_rcnn_R_50_mssa_1x.py --num-gpus 8
    python train_net.py --config-file ... --eval-only train.init_checkpoint=model_final.pth
    python train_net.py --config-file ... --resume                  # continue output_dir's run
    python train_net.py --config-file ... model.backbone.aggregation=msca train.output_dir=out/

``--config-file`` is a LazyConfig ``.py`` (see ``docs/DESIGN.md``; the schedule is in epochs and
is converted to iterations at start-up, the arithmetic is logged) or a yacs ``.yaml`` using the
registered backbone. Several GPUs or machines go through detectron2's ``launch``
(torch.distributed; gloo when there is no CUDA), through :func:`afa_d2.engine.launch`, which
ends every worker's process group after a successful run so that it exits 0. Without CUDA,
``train.device`` becomes ``cpu``. The loop itself is :mod:`afa_d2.engine`; the script at the
repository root is ``sys.exit(run(parse_args()))``, and ``tools/slurm_train.py`` submits :func:`main`
(:mod:`afa_d2.slurm_train`).
"""
import logging
import os
import sys

import torch
from detectron2.config import instantiate
from detectron2.engine import default_argument_parser

from afa_d2.cli import known_errors, one_line
from afa_d2.engine import do_eval_only, do_train, launch, load_config, resolve_epoch_schedule
from afa_d2.engine.overrides import UnknownConfigKeyError
from afa_d2.engine.precision import PRECISIONS, PrecisionError, check_precision
from afa_d2.engine.train_loop import default_setup

__all__ = ["argument_parser", "fall_back_to_cpu", "is_yacs_file", "main", "parse_args", "run"]

logger = logging.getLogger("afa_d2.train_net")

YAML_SUFFIXES = (".yaml", ".yml")


def is_yacs_file(path: str) -> bool:
    """A yacs config (upper-case keys), not a run's dumped LazyConfig ``config.yaml`` (which trains and
    evaluates as its ``.py`` did)."""
    from afa_d2.model_zoo.build import looks_like_yacs

    return path.endswith(YAML_SUFFIXES) and looks_like_yacs(path)


def fall_back_to_cpu(cfg):
    """Set ``train.device=cpu`` when it asks for CUDA and there is none; returns a note or None."""
    if str(cfg.train.device).startswith("cuda") and not torch.cuda.is_available():
        cfg.train.device = "cpu"
        return "CUDA is not available: train.device set to cpu"
    return None


def main(args):
    """Train, or with ``--eval-only`` evaluate, in one worker (``launch`` runs it in each); returns the
    evaluation results."""
    if is_yacs_file(args.config_file):
        from afa_d2.engine.yacs_trainer import run_yacs

        return run_yacs(args)
    cfg = load_config(args.config_file, args.opts)
    device_note = fall_back_to_cpu(cfg)
    schedule = resolve_epoch_schedule(cfg)
    default_setup(cfg, args)
    if device_note:
        logger.info(device_note)
    if str(cfg.train.device) == "cpu":
        from afa_d2.execution.runtime import configure_cpu_runtime

        configure_cpu_runtime("evaluation" if args.eval_only else "training")
    logger.info(str(schedule))
    if args.eval_only:
        return do_eval_only(cfg, resume=args.resume, precision=args.precision, force_precision=args.force_precision)
    return do_train(cfg, resume=args.resume, progress_bar=args.progress)


def argument_parser():
    """train_net.py's command line: detectron2's ``default_argument_parser`` plus ``--progress``."""
    parser = default_argument_parser()
    parser.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="with --eval-only: run the model in this precision under autocast (bf16 on CPUs with "
                        "native bf16 and on GPUs, fp16 on GPUs); outputs are fp32")
    parser.add_argument("--force-precision", action="store_true",
                        help="run --precision even where the host has no fast path for it")
    return parser


def parse_args(argv=None, parser=None):
    """Parse ``argv`` with ``parser`` (default: :func:`argument_parser`) and check the config
    file and its overrides before any worker starts (``parser.error`` otherwise)."""
    parser = parser or argument_parser()
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file is required")
    if not os.path.isfile(args.config_file):
        parser.error("--config-file {!r}: no such file (cwd: {})".format(args.config_file, os.getcwd()))
    if not is_yacs_file(args.config_file):
        try:  # fail before launching workers: unknown override keys, bad config files
            cfg = load_config(args.config_file, args.opts)
        except UnknownConfigKeyError as e:
            parser.error(str(e))
        try:  # and bad values (an unknown operator, levels the pyramid lacks): the model says which
            instantiate(cfg.model)
        except ValueError as e:
            parser.error("the model of {} cannot be built: {}".format(args.config_file, one_line(e)))
        if args.precision != "fp32":
            if not args.eval_only:
                parser.error("--precision {} is for --eval-only (training precision: train.amp.enabled)".format(
                    args.precision))
            fall_back_to_cpu(cfg)
            try:
                check_precision(args.precision, cfg.train.device, force=args.force_precision)
            except PrecisionError as e:
                parser.error(str(e))
    return args


def run(args) -> int:
    """Launch :func:`main` on every worker; in this process, a known error (a corrupt or mismatching
    checkpoint, a failed fetch, ...) is one line on stderr and exit status 2 (afa_d2.cli)."""
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except known_errors() as e:
        print("train_net.py: error: {}".format(one_line(e)), file=sys.stderr)
        return 2
    return 0
