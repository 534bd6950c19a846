#!/usr/bin/env python
"""Export an afa_d2 detector to ONNX or TorchScript (detectron2's tools/deploy/export_model.py, tracing).

Mask R-CNN, Cascade Mask R-CNN, RetinaNet and FCOS, with any aggregation operator; Panoptic FPN and keypoint
heads are refused in one line.

    # ONNX (opset 17) of a trained checkpoint, traced on a sample image resized as at test time
    python tools/export_model.py --config shapes/mask_rcnn_R_18_msca.py --weights out/model_final.pth \\
        --format onnx --output out/export/ --sample-image image.jpg
    # TorchScript for 480x640 images, with a config override
    python tools/export_model.py --config configs/COCO/cascade_mask_rcnn_R_50_msca_1x.py --weights model.pth \\
        --output out/model.ts --height 480 --width 640 model.roi_heads.box_predictors.2.test_score_thresh=0.3
    # a one-stage detector: boxes, scores and classes, no masks
    python tools/export_model.py --config shapes/retinanet_R_18_msca.py --weights out/model_final.pth \\
        --output out/retinanet.onnx --height 480 --width 640

One exported file serves every input the model pads to at least the smallest size it records (a sample
padded below it, adaptive pooling or a square pad: the sample's padded size only; see ``afa_d2.export``);
run it with ``python tools/run_exported.py``.
"""
import argparse
import os
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2 import export


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python tools/export_model.py",
        description="Export an afa_d2 Mask R-CNN / Cascade Mask R-CNN / RetinaNet / FCOS (any operator) to ONNX or "
        "TorchScript by tracing (detectron2's TracingAdapter); the file is run on the sample and compared with "
        "PyTorch.")
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                   help="a zoo config name (shapes/mask_rcnn_R_18_msca.py) or a LazyConfig file")
    p.add_argument("--weights", default=None,
                   help="checkpoint path or URL (default: the config's train.init_checkpoint; none: random weights)")
    p.add_argument("--format", choices=list(export.EXPORT_FORMATS), default=None,
                   help="default: from the --output suffix (.onnx; .ts/.pt), onnx for a folder")
    p.add_argument("--output", required=True, help="the file to write, or a folder (model.onnx / model.ts in it)")
    p.add_argument("--sample-image", default=None, help="an image to trace on (resized as at test time)")
    p.add_argument("--height", type=int, default=None, help="with --width: trace on a random image of this size")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--opset", type=int, default=export.DEFAULT_OPSET,
                   help="ONNX opset, {}..{} (default {})".format(export.MIN_OPSET, export.MAX_OPSET,
                                                                export.DEFAULT_OPSET))
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


def main(argv=None) -> int:
    args = parse_args(argv)
    from afa_d2.engine.overrides import UnknownConfigKeyError
    from afa_d2.model_zoo import CheckpointMismatchError, UnknownConfigError

    try:
        info = export.export_config(
            args.config, args.output, weights=args.weights, overrides=args.opts, format=args.format,
            sample_image=args.sample_image, height=args.height, width=args.width, opset=args.opset,
            device=args.device, verify=not args.no_verify)
    except (export.ExportError, export.MissingExportDependencyError, CheckpointMismatchError, UnknownConfigError,
            UnknownConfigKeyError, FileNotFoundError) as e:
        print("export_model.py: error: {}".format(e), file=sys.stderr)
        return 2
    mb = os.path.getsize(info.path) / 2 ** 20
    what = "ONNX opset {}".format(info.opset) if info.format == "onnx" else "TorchScript (traced)"
    print("Wrote {} ({}, {:.1f} MiB, {} with {}, operators {}) in {:.1f} s".format(
        info.path, what, mb, info.meta_architecture, info.head, info.operators, info.seconds))
    resize = info.resize
    print("Input '{}': (3, H, W) float 0-255 {} with {}{}".format(
        info.input_name, info.input_format, export.describe_sizes(info.metadata()),
        "; images are first resized to short edge {} (max {}) by run_exported".format(
            resize["short_edge_length"][0], resize["max_size"]) if resize else ""))
    print("Outputs: {}; masks: {}".format(", ".join(info.output_names), info.masks))
    if info.max_abs_diff:
        print("Max |exported - PyTorch| on the sample ({} detections): {}".format(info.detections_on_sample, ", ".join(
            "{} {:.2e}".format(k, v) for k, v in info.max_abs_diff.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
