#!/usr/bin/env python
"""FLOPs (attention counted; per module and per pyramid level), activations, parameters and structure of a model.

    python tools/analyze_model.py --config COCO/cascade_mask_rcnn_R_50_msca_1x.py --tasks flop parameter
    python tools/analyze_model.py --config configs/shapes/mask_rcnn_R_18_sum.py --op mssa --height 192 --width 256
    python tools/analyze_model.py --config shapes/mask_rcnn_R_18_msca.py --weights model_final.pth --tasks structure

See :mod:`afa_d2.inspection.analysis` (``python tools/analyze_model.py --help``), the command
:func:`afa_d2.inspection.cli.analyze_main`.
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.inspection.cli import analyze_main as main

if __name__ == "__main__":
    sys.exit(main())
