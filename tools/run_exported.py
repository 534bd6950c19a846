#!/usr/bin/env python
"""Run a model written by tools/export_model.py on one image; write its detections.

    python tools/run_exported.py out/export/model.onnx image.jpg --output out/image.json   # + out/image.png
    python tools/run_exported.py out/model.ts image.jpg --output out/image.json

The JSON holds each detection's box (XYXY, the image's pixels), score, class and mask (COCO RLE);
the PNG beside it is the instance map (uint16: 1 + the detection's index, 0 for background).
See ``afa_d2.export.run_exported``.
"""
import argparse
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2 import export


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python tools/run_exported.py",
        description="Detections of an exported afa_d2 model (.onnx via onnxruntime, .ts/.pt via TorchScript) on "
        "one image, as a JSON file and a PNG instance map.")
    p.add_argument("model", help="a file written by tools/export_model.py")
    p.add_argument("image", help="an image file")
    p.add_argument("--output", required=True, help="the .json file to write (the .png goes beside it)")
    p.add_argument("--mask-threshold", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        dets = export.run_exported(args.model, args.image, args.output, mask_threshold=args.mask_threshold,
                                   device=args.device)
    except (export.ExportError, export.MissingExportDependencyError) as e:
        print("run_exported.py: error: {}".format(e), file=sys.stderr)
        return 2
    n = len(dets["scores"])
    print("{} detections on {} ({}x{}) -> {}{}".format(
        n, args.image, *dets["image_size"], args.output,
        " and {}".format(args.output[:-len(".json")] + ".png") if "masks" in dets else ""))
    for i in range(min(n, 5)):
        print("  class {:3d}  score {:.3f}  box {}".format(
            int(dets["classes"][i]), float(dets["scores"][i]), [round(float(v), 1) for v in dets["boxes"][i]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
