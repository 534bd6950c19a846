"""What the command-line tools that train on the CPU share: a log file, loader workers, timing.

Used by the demo (``python -m afa_d2.demo``), ``tools/table1_shapes.py`` and
``tools/train_model_zoo.py``; ``train_net.py`` logs through detectron2's ``default_setup``.
"""
from __future__ import annotations

import itertools
import logging
import os
import time

__all__ = ["cpu_loader_workers", "first_test_batches", "log_to_file", "seconds_per_image"]


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

    On a 2-core machine, the workers' decoding competes with the training step's two threads:
    a step of the demo's model took 0.39 s with the images loaded in the main process and
    0.47 s with 2 workers (measured on the CI-like machine, 2 threads).
    """
    return max(0, min(2, (os.cpu_count() or 1) - 2))


def first_test_batches(cfg, n: int) -> list:
    """The first ``n`` batches of ``cfg.dataloader.test`` (one image each), fewer if it has fewer."""
    from detectron2.config import instantiate

    return list(itertools.islice(instantiate(cfg.dataloader.test), n))


def seconds_per_image(model, inputs: list) -> float:
    """Inference seconds per image of ``model`` (in eval mode) on ``inputs``, after one untimed
    call on the first (kernels for the inference shapes); a one-batch list is timed after it."""
    import torch

    timed = inputs[1:] or inputs
    with torch.no_grad():
        model(inputs[0])
        t0 = time.perf_counter()
        for x in timed:
            model(x)
        return (time.perf_counter() - t0) / sum(len(x) for x in timed)
