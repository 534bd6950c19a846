#!/usr/bin/env python
"""Convert torchvision ResNet weights (e.g. resnet50-0676ba61.pth) to detectron2's ResNet names.

    python tools/convert_torchvision_resnet.py resnet50-0676ba61.pth out/R-50-torchvision.pth

See :mod:`afa_d2.model_zoo.convert.torchvision_resnet` (``python tools/convert_torchvision_resnet.py --help``).
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert.torchvision_resnet import main

if __name__ == "__main__":
    sys.exit(main())
