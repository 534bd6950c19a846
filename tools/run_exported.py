#!/usr/bin/env python
"""Run a model written by tools/export_model.py on one image; write its detections.

    python tools/run_exported.py out/export/model.onnx image.jpg --output out/image.json   # + out/image.png
    python tools/run_exported.py out/model.ts image.jpg --output out/image.json

The JSON holds each detection's box (XYXY, the image's pixels), score, class (and its name, which the
exported file carries) and, for a model with masks (Mask / Cascade Mask R-CNN), its mask (COCO RLE); the
PNG beside it is the image with the detections drawn (class names and scores), and, with masks,
``<stem>_ids.png`` the instance-id map (uint16: 1 + the detection's index, 0 for background; for
programs). RetinaNet and FCOS give boxes, scores and classes only.
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


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        dets = export.run_exported(args.model, args.image, args.output, mask_threshold=args.mask_threshold,
                                   device=args.device, draw_threshold=args.draw_threshold)
    except (export.ExportError, export.MissingExportDependencyError) as e:
        print("run_exported.py: error: {}".format(e), file=sys.stderr)
        return 2
    n = len(dets["scores"])
    stem = args.output[:-len(".json")] if args.output.endswith(".json") else args.output
    print("{} detections on {} ({}x{}) -> {}, {}.png (drawn){}".format(
        n, args.image, *dets["image_size"], args.output, stem, ", {}_ids.png".format(stem) if "masks" in dets else ""))
    names = dets.get("class_names") or []
    for i in range(min(n, 5)):
        c = int(dets["classes"][i])
        print("  {:>14}  score {:.3f}  box {}".format(
            names[c] if 0 <= c < len(names) else "class {}".format(c), float(dets["scores"][i]),
            [round(float(v), 1) for v in dets["boxes"][i]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
