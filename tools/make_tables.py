#!/usr/bin/env python
"""The paper's Tables 1, 3, 4, 5 and 6 in markdown from train_net.py runs, our AP beside the paper's.

    python tools/make_tables.py output/COCO/*                      # every run found, placed by its config
    python tools/make_tables.py --run COCO/mask_rcnn_R_50_msca_1x.py=out/my_msca --tables 3
    python tools/make_tables.py --update configs/README.md         # the paper-only tables of configs/README.md

See :mod:`afa_d2.inspection.tables` (``python tools/make_tables.py --help``), the command
:func:`afa_d2.inspection.cli.make_tables_main`.
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.inspection.cli import make_tables_main as main

if __name__ == "__main__":
    sys.exit(main())
