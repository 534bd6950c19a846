"""What the command-line tools that train on the CPU share: a log file, loader workers, timing; and
the one reader of a run's ``metrics.json``.

Used by the demo (``python -m afa_d2.demo``), the operator study (``afa_d2.study``) and
``tools/train_model_zoo.py``; ``train_net.py`` logs through detectron2's ``default_setup``.
:func:`read_metrics` serves ``tools/make_tables.py`` and ``tools/publish_model.py``.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from typing import Any, Dict, List

__all__ = ["cpu_loader_workers", "first_test_batches", "log_to_file", "read_metrics", "seconds_per_image"]

logger = logging.getLogger(__name__)


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """The rows of a run's ``metrics.json`` (detectron2's ``JSONWriter``: one JSON object per line, appended
    as the run goes), in order.

    A last line cut short (the run was killed while writing it) is left out with a warning: every row
    before it is whole. A bad line anywhere else means the file is not such a log, or was damaged.

    Raises:
        ValueError: naming the file, the line and what was expected.
    """
    with open(path) as f:
        lines = f.read().split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines[:last + 1]):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if i == last and not lines[i + 1:]:  # no newline after it: the write was cut short
                logger.warning("%s: the last line (%d) is cut short (%s); read the %d rows before it", path,
                               i + 1, e, len(rows))
                break
            raise ValueError("{} line {} is not JSON ({}): expected one JSON object per line, as detectron2's "
                             "JSONWriter writes metrics.json".format(path, i + 1, e)) from None
        if not isinstance(row, dict):
            raise ValueError("{} line {} is a JSON {}, expected one JSON object per line, as detectron2's "
                             "JSONWriter writes metrics.json".format(path, i + 1, type(row).__name__))
        rows.append(row)
    return rows


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
