#!/usr/bin/env python
"""The checks only a GPU can make, as one prepared script (``--smoke``: the same code on the CPU, tiny).

    python tools/gpu_check.py --out gpu_check.json

See :mod:`afa_d2.benchmark.gpu_check` (``python tools/gpu_check.py --help``).
"""
import sys

from afa_d2.benchmark.gpu_check import run

if __name__ == "__main__":
    sys.exit(run())
