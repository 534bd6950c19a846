#!/usr/bin/env python
"""Convert an ImageNet Swin checkpoint (official or timm layout) into afa_d2's Swin bottom-up.

    python tools/convert_swin.py swin_tiny_patch4_window7_224.pth out/swin_T_bottom_up.pth \\
        --config COCO/cascade_mask_rcnn_swin_T_mssa_1x.py

See :mod:`afa_d2.model_zoo.convert.swin` (``python tools/convert_swin.py --help``).
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert.swin import main

if __name__ == "__main__":
    sys.exit(main())
