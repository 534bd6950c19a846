"""What the command-line tools that train on the CPU share: the full log in a file, and loader workers.

Used by the demo (``python -m afa_d2.demo``) and the zoo trainer (``tools/train_model_zoo.py``, whose
set-up the operator study's runs take); ``train_net.py`` logs through detectron2's ``default_setup``.
"""
from __future__ import annotations

import logging
import os

__all__ = ["cpu_loader_workers", "log_to_file"]


def log_to_file(path: str) -> None:
    """Send the full log (detectron2, fvcore, afa_d2, INFO and up) to ``path`` as well; the
    console keeps what it had (progress bars, summaries, warnings). Idempotent per file."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S"))
    handler.setLevel(logging.DEBUG)
    for name in ("detectron2", "fvcore", "afa_d2"):
        log = logging.getLogger(name)
        log.setLevel(logging.INFO)
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == handler.baseFilename
                   for h in log.handlers):
            log.addHandler(handler)


def cpu_loader_workers() -> int:
    """Data-loader workers for CPU training: none on 2 cores or fewer, else up to 2.

    On 2 cores the workers' image decoding competes with the training step's two threads and makes
    each step slower than loading the images in the main process.
    """
    return max(0, min(2, (os.cpu_count() or 1) - 2))
