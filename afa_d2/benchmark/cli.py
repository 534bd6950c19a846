"""The command line of ``python tools/benchmark.py`` (and ``python -m afa_d2.benchmark``): its flags, and the
mode each selects (docs/DESIGN.md, "What is measured")."""
import argparse
import json
import os
from typing import Any, Dict, Optional, Sequence

import torch

from afa_d2.engine.precision import PRECISIONS, PrecisionError, check_precision
from afa_d2.modeling.aggregation import operator_label

from .inference import measure_inference
from .kernels import format_kernels, measure_kernels
from .models import MODELS, ONE_STAGE, _build
from .profiling import format_profile, profile_inference
from .report import (
    add_ratios, cpu_settings_line, format_build_info, format_table, inference_lines, training_line, write_json,
)
from .stock import SETTINGS, format_vs_stock, measure_vs_stock, serve
from .training import measure_train_step, measure_training
from .variants import ATTENTION_OPS, BASE, CKPT_SUFFIX, OPS, PRECISION_SEP, variant_names

#: the example LazyConfig of --train-config's help (the shapes recipe of the baseline operator)
_EXAMPLE_TRAIN_CONFIG = "configs/shapes/mask_rcnn_R_18_{}.py".format(BASE)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line's arguments, checked: a refusal is a one-line parse error (exit 2)."""
    p = _parser()
    args = p.parse_args(argv)
    if args.train_only:
        args.train = True
    _check(p, args)
    return args


def _parser() -> argparse.ArgumentParser:
    """The flags; operator names and the baseline come from the registry (:mod:`.variants`)."""
    attention = "/".join(ATTENTION_OPS)
    p = argparse.ArgumentParser(
        prog="python tools/benchmark.py",
        description="Params, FLOPs, latency (and training cost) of the aggregation operators, "
        "side by side (docs/DESIGN.md, 'What is measured').",
    )
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--reference", action="store_true",
                   help="also run {} on the straightforward path (\"<op>:ref\"), same weights".format(attention))
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--iters", type=int, default=5,
                   help="timed repetitions, each running every variant once (median reported)")
    p.add_argument("--train-rounds", type=int, default=1,
                   help="with --train: rounds of one worker per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model", choices=list(MODELS), default="mask_rcnn",
                   help="the detector around the neck, detectron2's config of it (R-CNNs: p2..p6; RetinaNet, "
                   "FCOS: p3..p7)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--norm", default="GN", help="bottom-up norm (random weights: not FrozenBN/BN)")
    p.add_argument("--detections-per-image", type=int, default=100,
                   help="detections kept per image (R-CNNs: test_topk_per_image; RetinaNet, FCOS: "
                   "max_detections_per_image); the score threshold is 0")
    p.add_argument("--proposals", type=int, default=1000,
                   help="R-CNNs: RPN proposals kept at test time (post_nms_topk); RetinaNet, FCOS: candidates "
                   "kept per level before the final NMS (test_topk_candidates)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-mlp", action="store_true",
                   help="with --train: also \"<op>:ckpt\", {} with checkpoint_mlp=True (the DW-MLP "
                   "recomputed in backward)".format(attention))
    p.add_argument("--train", action="store_true", help="also time a training step, peak memory")
    p.add_argument("--amp", action="store_true", help="train with fp16 autocast and a grad scaler (CUDA)")
    p.add_argument("--train-only", action="store_true",
                   help="only the training step time and peak memory (implies --train)")
    p.add_argument("--train-config", default=None,
                   help="with --train: measure training on this LazyConfig's model, optimizer and data "
                   "(e.g. {}; aggregation set per variant) instead of "
                   "--model on a synthetic --height x --width image".format(_EXAMPLE_TRAIN_CONFIG))
    p.add_argument("--skip-model-flops", action="store_true", help="skip tracing the whole model")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS),
                   help="inference precisions side by side: e.g. --precision fp32 bf16 adds \"<op>@bf16\", the "
                   "same models under autocast, each timed against the {} model in its own precision".format(
                       operator_label(BASE)))
    p.add_argument("--force-precision", action="store_true",
                   help="run a --precision even where the host has no fast path for it")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing: profile one whole-model inference of each --ops variant (CPU) and "
                   "print its N most expensive ops by self time, with the library behind each")
    p.add_argument("--kernels", action="store_true",
                   help="time the kernels behind the neck figures on MS-Att's p2 level of the R-CNNs (3x3 conv, "
                        "token linear as BLAS GEMM and as 1x1 conv, attention three ways, softmax), side by side; CPU")
    p.add_argument("--vs-stock", action="store_true",
                   help="whole-model inference of --ops with afa_d2's CPU settings (allocator, measured kernels) "
                   "and as stock detectron2 eager (glibc's allocator, plain kernels, detectron2's FPN for {}), "
                   "in two worker processes timed side by side".format(BASE))
    p.add_argument("--serve", choices=list(SETTINGS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-measure", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``p.error``) what the flags cannot measure together, or at all on this device."""
    if args.train_config is not None and not os.path.isfile(args.train_config):
        p.error("--train-config {!r}: no such file (a LazyConfig .py, e.g. "
                "{})".format(args.train_config, _EXAMPLE_TRAIN_CONFIG))
    if args.iters < 1:
        p.error("--iters must be >= 1, got {}".format(args.iters))
    if args.profile < 0:
        p.error("--profile must be a number of ops >= 1, got {}".format(args.profile))
    if args.profile and args.device != "cpu":
        p.error("--profile measures the CPU path, got --device {}".format(args.device))
    if args.kernels and args.device != "cpu":
        p.error("--kernels measures the CPU kernels, got --device {}".format(args.device))
    if args.kernels and args.model in ONE_STAGE:
        p.error("--kernels times the R-CNNs' kernels (MS-Att on p2, the RoI heads' fc1 and mask convs), which "
                "--model {} does not have; use --model mask_rcnn or cascade_mask_rcnn".format(args.model))
    for name in ("proposals", "detections_per_image"):
        if getattr(args, name) < 1:
            p.error("--{} must be >= 1, got {}".format(name.replace("_", "-"), getattr(args, name)))
    for precision in args.precision:
        try:
            check_precision(precision, args.device, force=args.force_precision)
        except PrecisionError as e:
            p.error(str(e))
    if args.precision != ["fp32"] and (args.train_only or args.profile or args.kernels or args.vs_stock):
        p.error("--precision {} measures inference: not with --train-only, --profile, --kernels or "
                "--vs-stock".format(" ".join(args.precision)))
    if args.amp and not str(args.device).startswith("cuda"):
        p.error("--amp needs --device cuda (fp16 autocast training, as detectron2's AMPTrainer), got {}".format(
            args.device))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Run the mode the command line ``argv`` selects, print its report, and return its results (also written
    to ``--json``); the workers (``--train-worker``, ``--serve``) print their replies and return ``{}``."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.train_worker:
        if args.device == "cpu" and args.train_measure == "time":  # the memory worker keeps its own malloc setup
            from afa_d2.execution.runtime import configure_cpu_runtime

            configure_cpu_runtime("the benchmark's training step")
        print(json.dumps(measure_train_step(args.train_worker, args, args.train_measure)))
        return {}
    if args.serve:
        serve(args)
        return {}
    if args.vs_stock:
        results = _run_vs_stock(args)
    else:
        runtime = None
        if args.device == "cpu":
            from afa_d2.execution.runtime import configure_cpu_runtime

            runtime = configure_cpu_runtime("the benchmark")
        if args.kernels:
            results = _run_kernels(args)
        elif args.profile:
            results = _run_profile(args)
        else:
            results = _run_side_by_side(args, runtime)
    write_json(args, results)
    return results


def _run_vs_stock(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """``--vs-stock``: :func:`~.stock.measure_vs_stock`, printed."""
    results = measure_vs_stock(args)
    print("whole-model inference, {} {}x{}, batch 1, {} threads, {}: stock detectron2 eager vs afa_d2's CPU "
          "settings, two worker processes, {} interleaved iters (median, ±half the max-min spread)".format(
              args.model, args.height, args.width, args.threads or torch.get_num_threads(), args.device,
              args.iters))
    print(format_vs_stock(results, args.ops))
    return results


def _run_kernels(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """``--kernels``: :func:`~.kernels.measure_kernels`, printed."""
    results = measure_kernels(args)
    r = next(iter(results.values()))
    print("build: " + format_build_info())
    print("kernels on p2 of {}x{} ({}x{} = {} tokens, 256 channels, 4 heads, {} pooled keys), {} threads, "
          "{} interleaved iters (median, ±half the max-min spread); each product's kernels agree within "
          "1e-4".format(args.height, args.width, r["map"][0], r["map"][1], r["tokens"], r["keys"],
                        torch.get_num_threads(), args.iters))
    print(format_kernels(results))
    return results


def _run_profile(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """``--profile N``: :func:`~.profiling.profile_inference` of every inference variant, printed."""
    names = variant_names(args.ops, args.reference, args.checkpoint_mlp, args.precision)
    results: Dict[str, Dict[str, Any]] = {name: {"op": name} for name in names}
    print("build: " + format_build_info())
    print("profile: {} {}x{}, batch 1, {} threads, afa_d2's CPU settings, one inference after {} warm-up".format(
        args.model, args.height, args.width, torch.get_num_threads(), max(1, args.warmup)))
    base_model = _build(BASE, args)
    for name, res in profile_inference([n for n in names if not n.endswith(CKPT_SUFFIX)], args,
                                       base_model.state_dict(), base_model, top=args.profile).items():
        results[name].update(res)
    print(format_profile(results))
    return results


def _run_side_by_side(args: argparse.Namespace, runtime) -> Dict[str, Dict[str, Any]]:
    """The default mode: :func:`~.inference.measure_inference` (unless ``--train-only``) and, with ``--train``,
    :func:`~.training.measure_training` of every variant, as one table."""
    names = variant_names(args.ops, args.reference, args.checkpoint_mlp, args.precision)
    results: Dict[str, Dict[str, Any]] = {name: {"op": name} for name in names}
    if not args.train_only:
        base_model = _build(BASE, args)  # its weights are shared by every variant
        # ":ckpt" changes nothing at inference (no gradients): trained only
        results.update(measure_inference([n for n in names if not n.endswith(CKPT_SUFFIX)], args,
                                         base_model.state_dict(), base_model))
    if args.train:
        for name, res in measure_training([n for n in names if PRECISION_SEP not in n], args).items():
            results[name].update(res)
    add_ratios(results, BASE if BASE in results else args.ops[0])
    if args.device == "cpu":
        print(cpu_settings_line(runtime))
    if not args.train_only:
        print("\n".join(inference_lines(args, results)))
    if args.train:
        print(training_line(args, results))
    print(format_table(results))
    return results
