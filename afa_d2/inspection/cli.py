"""The three commands over the inspection package: ``python tools/visualize.py``, ``tools/analyze_model.py`` and
``tools/make_tables.py``. Each is ``<command>_main(argv)``: argument parsing, then the package functions; bad
input is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from afa_d2.cli import run_command
from afa_d2.model_zoo.build import build_model, default_image_size, is_yacs, load_any_config
from afa_d2.modeling.aggregation import AGGREGATION_OPS, attention_operators

from .analysis import TASKS, ModelAnalysis, analyze_model
from .attention import attention_maps, grid_points
from .drawing import draw_attention, draw_attention_overview
from .energy import ENERGY_METRICS, draw_energy, pyramid_energy
from .errors import AnalysisInputError, RunError, VisualizeInputError
from .models import LoadedModel, dataset_records, load_model, read_image
from .predictions import draw_predictions
from .blocks import update_markdown
from .tables import make_tables

__all__ = [
    "analyze_main",
    "make_tables_main",
    "parse_analyze_args",
    "parse_make_tables_args",
    "parse_visualize_args",
    "run_analyze",
    "run_make_tables",
    "run_visualize",
    "visualize_main",
]


# ----------------------------------------------------------------------------------- tools/visualize.py
#: What ``predictions --output`` may end in: the formats OpenCV writes a picture in.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")

def _add_models(p: argparse.ArgumentParser, many: bool) -> None:
    p.add_argument("--model", action="append", required=True, metavar="SPEC",
                   help="CONFIG=WEIGHTS (a zoo name or config file, and a checkpoint), a published WEIGHTS.pth "
                   "(its metadata names the config) or CONFIG (random weights)" + (
                       "; repeat to compare (e.g. one checkpoint per operator)" if many else ""))
    p.add_argument("--label", action="append", default=None, help="a figure label per --model, in order")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")


def _add_images(p: argparse.ArgumentParser, single: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--images", nargs="+", metavar="FILE", help="image files (no ground truth)")
    g.add_argument("--dataset", help="a registered dataset (with ground truth), e.g. shapes_val")
    p.add_argument("--num-images", type=int, default=1 if single else 4, help="images from --dataset" + (
        " (each gets its own files)" if single else ""))
    p.add_argument("--start", type=int, default=0, help="first image of --dataset")


def parse_visualize_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python tools/visualize.py",
        description="Predictions side by side (the paper's Fig. 3), attention maps of the MS-Att blocks, and the "
        "energy of the pyramid levels, as PNG files.")
    sub = p.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predictions", help="ground truth and each model's predictions, side by side",
                          description="Ground truth and the predictions of each --model on the same images.")
    _add_models(pred, many=True)
    _add_images(pred)
    pred.add_argument("--score-thresh", type=float, default=0.5)
    pred.add_argument("--scale", type=float, default=1.0, help="drawing scale of each panel")
    pred.add_argument("--output", default="output/visualize/predictions.png")
    pred.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value (every model)")

    att = sub.add_parser("attention", help="attention weights of each head over the pooled tokens, per level",
                         description="For query points of one image: every MS-Att block's attention per head and "
                         "pool, painted on the image. One PNG per point, plus an overview for a grid.")
    _add_models(att, many=False)
    _add_images(att, single=True)
    where = att.add_mutually_exclusive_group()
    where.add_argument("--point", nargs=2, type=float, action="append", metavar=("X", "Y"),
                       help="a query point in image pixels (repeatable); default: the image centre")
    where.add_argument("--grid", default=None, metavar="RxC", help="a grid of query points, e.g. 3x3")
    att.add_argument("--levels", nargs="+", default=None, help="levels to show (default: every attention level)")
    att.add_argument("--output-dir", default="output/visualize/attention")
    att.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")

    en = sub.add_parser("energy", help="energy of each pyramid level per model",
                        description="Energy of the pyramid outputs p2..p6 of each --model, averaged over the images.")
    _add_models(en, many=True)
    _add_images(en)
    en.add_argument("--metric", default="mean_square", help="mean_square or l2")
    en.add_argument("--output", default="output/visualize/energy.png")
    en.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value (every model)")
    args = p.parse_args(argv)
    if args.command == "predictions" and os.path.splitext(args.output)[1].lower() not in PICTURE_SUFFIXES:
        p.error("--output {!r}: expected a picture file name ending in {}".format(
            args.output, " or ".join(PICTURE_SUFFIXES)))
    if args.images:  # "--images a.png key=value": the override is not an image
        moved = [f for f in args.images if "=" in f and not os.path.isfile(f)]
        args.images = [f for f in args.images if f not in moved]
        args.opts = moved + list(args.opts or [])
    return args


def _models(args: argparse.Namespace) -> List[LoadedModel]:
    labels = args.label or []
    if labels and len(labels) != len(args.model):
        raise VisualizeInputError("{} --label for {} --model: give one label per model, or none".format(
            len(labels), len(args.model)))
    models = [load_model(spec, list(args.opts or []), label=labels[k] if labels else None, device=args.device,
                         seed=args.seed) for k, spec in enumerate(args.model)]
    seen: Dict[str, int] = {}
    for m in models:  # two checkpoints of one operator: tell them apart by their config
        seen[m.label] = seen.get(m.label, 0) + 1
    for m in models:
        if seen[m.label] > 1 and not labels:
            m.label = "{} ({})".format(m.label, os.path.splitext(os.path.basename(m.config_name))[0])
    return models


def _images(args: argparse.Namespace) -> List[Tuple[np.ndarray, Optional[dict], str]]:
    if args.images:
        return [(read_image(f), None, f) for f in args.images]
    return [(read_image(r["file_name"]), r, r["file_name"])
            for r in dataset_records(args.dataset, args.num_images, args.start)]


def _parse_grid(text: str) -> Tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VisualizeInputError("--grid {!r}: write ROWSxCOLS, e.g. 3x3".format(text)) from None
    return r, c


def run_visualize(args: argparse.Namespace) -> Dict[str, Any]:
    """What ``tools/visualize.py`` does with parsed ``args``; returns what was written (errors raised)."""
    if args.command == "energy" and args.metric not in ENERGY_METRICS:
        raise VisualizeInputError("unknown --metric {!r}; valid: {}".format(args.metric, ", ".join(ENERGY_METRICS)))
    if args.command == "attention" and len(args.model) != 1:
        raise VisualizeInputError("attention takes one --model (got {})".format(len(args.model)))
    images = _images(args)
    models = _models(args)
    if args.command == "predictions":
        return draw_predictions(models, [(rgb, rec) for rgb, rec, _ in images], args.output,
                                score_thresh=args.score_thresh, scale=args.scale,
                                dataset=args.dataset or "")
    if args.command == "energy":
        energies = OrderedDict((m.label, pyramid_energy(m, [rgb for rgb, _, _ in images], args.metric))
                               for m in models)
        out = draw_energy(energies, args.output, args.metric,
                          "energy of the pyramid levels ({}, {} image(s))".format(args.metric, len(images)))
        out["energies"] = energies
        return out
    grid = _parse_grid(args.grid) if args.grid else None
    out: Dict[str, Any] = {"paths": []}
    for rgb, _, name in images:
        h, w = rgb.shape[:2]
        if grid:
            points = grid_points((h, w), *grid)
        else:
            points = [tuple(p) for p in args.point] if args.point else [(w / 2.0, h / 2.0)]
        qas = attention_maps(models[0], rgb, points, args.levels, image_name=name)
        # one image: attention_x.._y...png; several: each image's name in front
        prefix = "" if len(images) == 1 else os.path.splitext(os.path.basename(name))[0] + "_"
        for qa in qas:
            path = os.path.join(args.output_dir, "{}attention_x{:.0f}_y{:.0f}.png".format(prefix, *qa.point))
            out["paths"].append(draw_attention(rgb, qa, path, "{}: query ({:.0f}, {:.0f}) of {}".format(
                models[0].label, qa.point[0], qa.point[1], os.path.basename(name)))["path"])
        if len(qas) > 1:
            out["paths"].append(draw_attention_overview(
                rgb, qas, os.path.join(args.output_dir, "{}attention_overview.png".format(prefix)),
                "{}: mean attention over heads and pools, {}".format(models[0].label, os.path.basename(name)))["path"])
    return out


def _print_visualize(out: Dict[str, Any]) -> None:
    if "path" in out:
        print("wrote {}".format(out["path"]))
    for path in out.get("paths", []):
        print("wrote {}".format(path))
    if "energies" in out:
        for label, values in out["energies"].items():
            print("{}: {}".format(label, ", ".join("{} {:.4g}".format(k, v) for k, v in values.items())))


def visualize_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/visualize.py``; bad input is one line on stderr, exit 2 (:func:`afa_d2.cli.run_command`)."""
    args = parse_visualize_args(argv)
    return run_command("visualize", lambda _: _print_visualize(run_visualize(args)))


# ----------------------------------------------------------------------------------- tools/analyze_model.py
def parse_analyze_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python tools/analyze_model.py",
        description="FLOPs (attention counted; per module and per pyramid level), activations, parameters "
        "and structure of an afa_d2 model, as detectron2's tools/analyze_model.py.",
        epilog="e.g. python tools/analyze_model.py --config COCO/cascade_mask_rcnn_R_50_msca_1x.py --tasks flop "
        "parameter; python tools/analyze_model.py --config configs/shapes/mask_rcnn_R_18_sum.py --op {} "
        "--weights out/model_final.pth --height 192 --width 256".format(_attention_operator()),
    )
    p.add_argument("--config", "--config-file", dest="config", required=True,
                   help="a zoo name (afa_d2.model_zoo.list_configs()), a LazyConfig .py, a run's config.yaml "
                   "or a yacs .yaml")
    p.add_argument("--tasks", nargs="+", default=["flop"], metavar="TASK",
                   help="any of {} (default: flop)".format(" ".join(TASKS)))
    p.add_argument("--op", default=None, help="set the aggregation operator (model.backbone.aggregation): "
                   "one of {}".format(", ".join(AGGREGATION_OPS)))
    p.add_argument("--weights", default=None, help="a checkpoint (path or URL); default: random weights")
    p.add_argument("--height", type=int, default=None, help="input image height (default: the config's test "
                   "resize, 800 for COCO)")
    p.add_argument("--width", type=int, default=None, help="input image width (default: its max size, 1333)")
    p.add_argument("--max-depth", type=int, default=3, help="module depth of the per-module tables")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and image")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")
    args = p.parse_args(argv)
    moved = [t for t in args.tasks if "=" in t]  # "--tasks flop key=value": the override is no task
    args.tasks = [t for t in args.tasks if t not in moved]
    args.opts = moved + list(args.opts or [])
    return args


def _attention_operator() -> str:
    """The first operator of the registry that uses attention (for examples)."""
    return attention_operators()[0]


def _check_args(args: argparse.Namespace) -> None:
    bad = [t for t in args.tasks if t not in TASKS]
    if not args.tasks:
        raise AnalysisInputError("no --tasks given; valid: {}".format(" ".join(TASKS)))
    if bad:
        raise AnalysisInputError("unknown task {!r}; valid: {}".format(bad[0], " ".join(TASKS)))
    if args.op is not None and args.op not in AGGREGATION_OPS:
        raise AnalysisInputError("unknown operator --op {!r}; valid: {}".format(args.op, ", ".join(AGGREGATION_OPS)))
    for name in ("height", "width"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise AnalysisInputError("--{} {} must be a positive number of pixels".format(name, v))


def run_analyze(args: argparse.Namespace) -> ModelAnalysis:
    """What ``tools/analyze_model.py`` does with parsed ``args`` (errors raised, not printed)."""
    _check_args(args)
    opts = list(args.opts or [])
    cfg = load_any_config(args.config, [])
    if args.op is not None:
        opts.insert(0, ("MODEL.AFA.AGGREGATION=" if is_yacs(cfg) else "model.backbone.aggregation=") + args.op)
    cfg = load_any_config(args.config, opts)
    h, w = default_image_size(cfg)
    size = (args.height or h, args.width or w)
    model = build_model(cfg, args.weights, args.device, args.seed, config_name=args.config)
    return analyze_model(model, args.tasks, size, max_depth=args.max_depth, config_name=args.config,
                         seed=args.seed)


def analyze_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/analyze_model.py``: prints the report; bad input is one line on stderr, exit 2
    (:func:`afa_d2.cli.run_command`)."""
    args = parse_analyze_args(argv)
    return run_command("analyze_model", lambda _: print(run_analyze(args).text()))


# ----------------------------------------------------------------------------------- tools/make_tables.py
def parse_make_tables_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python tools/make_tables.py",
        description="The paper's Tables 1, 3, 4, 5, 6 in markdown from train_net.py runs' output folders, our "
        "AP beside the paper's; with no runs, the paper's numbers only (what configs/README.md shows).",
        epilog="e.g. python tools/make_tables.py output/COCO/* ; python tools/make_tables.py --run "
        "COCO/mask_rcnn_R_50_msca_1x.py=out/my_msca --tables 3 ; python tools/make_tables.py --update "
        "configs/README.md")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders (config.yaml + metrics.json)")
    p.add_argument("--run", action="append", default=[], metavar="CONFIG=DIR",
                   help="place a run in a config's row explicitly (repeatable)")
    p.add_argument("--tables", nargs="+", default=None, help="table numbers (default: 1 3 4 5 6)")
    p.add_argument("--output", default=None, help="write the tables to this markdown file")
    p.add_argument("--update", default=None, metavar="MARKDOWN",
                   help="rewrite the make_tables blocks of this file (e.g. configs/README.md) in place")
    return p.parse_args(argv)


def run_make_tables(args: argparse.Namespace) -> Dict[str, Any]:
    """What ``tools/make_tables.py`` does with parsed ``args`` (errors raised)."""
    explicit: Dict[str, str] = {}
    for item in args.run:
        if "=" not in item:
            raise RunError("--run {!r}: write CONFIG=DIR, e.g. COCO/mask_rcnn_R_50_msca_1x.py=output/msca".format(item))
        config, run_dir = item.split("=", 1)
        explicit[config.strip()] = run_dir.strip()
    out = make_tables(args.runs, explicit, args.tables)
    text = "\n\n".join(out["blocks"].values()) + "\n"
    if args.update:
        if not os.path.isfile(args.update):
            raise RunError("--update {!r}: no such file".format(args.update))
        with open(args.update) as f:
            old = f.read()
        new = update_markdown(old, out["blocks"])
        if new != old:
            with open(args.update, "w") as f:
                f.write(new)
        out["updated"] = new != old
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
    out["text"] = text
    return out


def make_tables_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/make_tables.py``: prints the tables; bad input is one line on stderr, exit 2."""
    args = parse_make_tables_args(argv)
    try:
        out = run_make_tables(args)
    except (RunError, FileNotFoundError) as e:
        print("make_tables: error: {}".format(" ".join(str(e).split())), file=sys.stderr)
        return 2
    for run_dir, why in out["unplaced"]:
        print("make_tables: warning: run {} not placed: {}".format(run_dir, why), file=sys.stderr)
    if args.update:
        print("{} {}".format("updated" if out["updated"] else "already up to date:", args.update))
    if not args.update and not args.output:
        print(out["text"], end="")
    elif args.output:
        print("wrote {}".format(args.output))
    return 0
