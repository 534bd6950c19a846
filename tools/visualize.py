#!/usr/bin/env python
"""Predictions side by side (the paper's Fig. 3), attention maps and pyramid-level energy, as PNG files.

    # ground truth | sum-up | MSCA on 4 validation images
    python tools/visualize.py predictions --model shapes/mask_rcnn_R_18_sum.py=out/sum/model_final.pth \\
        --model shapes/mask_rcnn_R_18_msca.py=out/msca/model_final.pth --dataset shapes_val --num-images 4
    # every head's attention over the pooled key/value tokens, per level, for a query point or a grid
    python tools/visualize.py attention --model mask_rcnn_R_18_msca_shapes-36505fa9.pth --images img.png --point 80 150
    python tools/visualize.py attention --model ... --images img.png --grid 3x3
    # energy of p2..p6 per operator
    python tools/visualize.py energy --model SUM.pth --model MSSA.pth --model MSCA.pth --dataset shapes_val

See :mod:`afa_d2.inspection` (``python tools/visualize.py <command> --help``): predictions, attention and energy
over :func:`afa_d2.inspection.cli.visualize_main`.
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.inspection.cli import visualize_main as main

if __name__ == "__main__":
    sys.exit(main())
