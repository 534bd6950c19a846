"""The two commands: ``python tools/export_model.py`` (:func:`export_main`) and ``python tools/run_exported.py``
(:func:`run_main`), argument parsing and a summary over :func:`afa_d2.export.export_config` and
:func:`afa_d2.export.run_exported`. Bad input is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys

from afa_d2.export.backend import ExportError, MissingExportDependencyError
from afa_d2.export.detections import class_name
from afa_d2.export.exporter import export_config
from afa_d2.export.formats import EXPORT_FORMATS
from afa_d2.export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from afa_d2.export.runner import run_exported
from afa_d2.export.sizes import describe_sizes

__all__ = ["export_main", "parse_export_args", "parse_run_args", "run_main"]


def parse_export_args(argv=None) -> argparse.Namespace:
    """``tools/export_model.py``'s arguments."""
    p = argparse.ArgumentParser(
        prog="python tools/export_model.py",
        description="Export an afa_d2 Mask R-CNN / Cascade Mask R-CNN / RetinaNet / FCOS (any operator) to ONNX or "
        "TorchScript by tracing (detectron2's TracingAdapter); the file is run on the sample and compared with "
        "PyTorch.")
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                   help="a zoo config name (shapes/mask_rcnn_R_18_msca.py) or a LazyConfig file")
    p.add_argument("--weights", default=None,
                   help="checkpoint path or URL (default: the config's train.init_checkpoint; none: random weights)")
    p.add_argument("--format", choices=list(EXPORT_FORMATS), default=None,
                   help="default: from the --output suffix (.onnx; .ts/.pt), onnx for a folder")
    p.add_argument("--output", required=True, help="the file to write, or a folder (model.onnx / model.ts in it)")
    p.add_argument("--sample-image", default=None, help="an image to trace on (resized as at test time)")
    p.add_argument("--height", type=int, default=None, help="with --width: trace on a random image of this size")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset, {}..{} (default {})".format(MIN_OPSET, MAX_OPSET, DEFAULT_OPSET))
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-verify", action="store_true", help="do not run the written file against PyTorch")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")
    args = p.parse_args(argv)
    if args.sample_image is not None and (args.height is not None or args.width is not None):
        p.error("give --sample-image or --height/--width, not both")
    if args.sample_image is None and (args.height is None or args.width is None):
        p.error("give --sample-image, or both --height and --width (got height={}, width={})".format(
            args.height, args.width))
    if args.format is None and not os.path.splitext(args.output)[1]:
        args.format = "onnx"
    return args


def export_main(argv=None) -> int:
    """``python tools/export_model.py``: export, then print what was written. Returns the exit status."""
    args = parse_export_args(argv)
    from afa_d2.engine.overrides import UnknownConfigKeyError
    from afa_d2.model_zoo import CheckpointMismatchError, UnknownConfigError

    try:
        info = export_config(
            args.config, args.output, weights=args.weights, overrides=args.opts, format=args.format,
            sample_image=args.sample_image, height=args.height, width=args.width, opset=args.opset,
            device=args.device, verify=not args.no_verify)
    except (ExportError, MissingExportDependencyError, CheckpointMismatchError, UnknownConfigError,
            UnknownConfigKeyError, FileNotFoundError) as e:
        print("export_model.py: error: {}".format(e), file=sys.stderr)
        return 2
    mb = os.path.getsize(info.path) / 2 ** 20
    what = "ONNX opset {}".format(info.opset) if info.format == "onnx" else "TorchScript (traced)"
    print("Wrote {} ({}, {:.1f} MiB, {} with {}, operators {}) in {:.1f} s".format(
        info.path, what, mb, info.meta_architecture, info.head, info.operators, info.seconds))
    resize = info.resize
    print("Input '{}': (3, H, W) float 0-255 {} with {}{}".format(
        info.input_name, info.input_format, describe_sizes(info.metadata()),
        "; images are first resized to short edge {} (max {}) by run_exported".format(
            resize["short_edge_length"][0], resize["max_size"]) if resize else ""))
    print("Outputs: {}; masks: {}".format(", ".join(info.output_names), info.masks))
    if info.max_abs_diff:
        print("Max |exported - PyTorch| on the sample ({} detections): {}".format(info.detections_on_sample, ", ".join(
            "{} {:.2e}".format(k, v) for k, v in info.max_abs_diff.items())))
    return 0


def parse_run_args(argv=None) -> argparse.Namespace:
    """``tools/run_exported.py``'s arguments."""
    p = argparse.ArgumentParser(
        prog="python tools/run_exported.py",
        description="Detections of an exported afa_d2 model (.onnx via onnxruntime, .ts/.pt via TorchScript) on "
        "one image, as a JSON file, a picture of the detections and, for a model with masks, an instance-id map.")
    p.add_argument("model", help="a file written by tools/export_model.py")
    p.add_argument("image", help="an image file")
    p.add_argument("--output", required=True, help="the .json file to write (the .png goes beside it)")
    p.add_argument("--mask-threshold", type=float, default=0.5,
                   help="probability above which a pasted mask pixel is on (models with masks)")
    p.add_argument("--draw-threshold", type=float, default=0.5,
                   help="the least score drawn in the picture (the JSON keeps every detection)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def run_main(argv=None) -> int:
    """``python tools/run_exported.py``: detections of an exported file on one image, written and summed up.
    Returns the exit status."""
    args = parse_run_args(argv)
    try:
        dets = run_exported(args.model, args.image, args.output, mask_threshold=args.mask_threshold,
                            device=args.device, draw_threshold=args.draw_threshold)
    except (ExportError, MissingExportDependencyError) as e:
        print("run_exported.py: error: {}".format(e), file=sys.stderr)
        return 2
    n = len(dets["scores"])
    stem = args.output[:-len(".json")] if args.output.endswith(".json") else args.output
    print("{} detections on {} ({}x{}) -> {}, {}.png (drawn){}".format(
        n, args.image, *dets["image_size"], args.output, stem, ", {}_ids.png".format(stem) if "masks" in dets else ""))
    for i in range(min(n, 5)):
        name = class_name(dets, i)
        print("  {:>14}  score {:.3f}  box {}".format(
            "class {}".format(int(dets["classes"][i])) if name is None else name, float(dets["scores"][i]),
            [round(float(v), 1) for v in dets["boxes"][i]]))
    return 0
