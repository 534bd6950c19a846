#!/usr/bin/env python
"""Convert a detectron2 FPN checkpoint into the weights of an afa_d2 AttentionFPN detector.

    python tools/convert_detectron2_fpn.py model_final_a54504.pkl out/mask_rcnn_R_50_mssa_from_fpn.pth \\
        --config COCO/mask_rcnn_R_50_mssa_1x.py --start-as-fpn +model.backbone.upsample_mode=nearest

See :mod:`afa_d2.model_zoo.convert.detectron2_fpn` (``python tools/convert_detectron2_fpn.py --help``).
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert.detectron2_fpn import main

if __name__ == "__main__":
    sys.exit(main())
