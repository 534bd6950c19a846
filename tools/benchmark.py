#!/usr/bin/env python
"""Parameters, FLOPs, latency and training cost of the aggregation operators, side by side.

    python tools/benchmark.py --height 800 --width 1333 --threads 2 --iters 3
    python tools/benchmark.py --ops sum msca --vs-stock      # afa_d2's CPU settings vs stock detectron2 eager

See :mod:`afa_d2.benchmark` (``python tools/benchmark.py --help``).
"""
import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.benchmark import main

if __name__ == "__main__":
    main()
