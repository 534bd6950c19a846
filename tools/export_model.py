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
import sys

from afa_d2.export.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
