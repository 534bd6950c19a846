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
import sys

from afa_d2.export.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())
