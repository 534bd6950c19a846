"""Inference seconds per image on the first test batches: what the demo, the zoo trainer and the
operator study report beside AP."""
from __future__ import annotations

import itertools
import time

__all__ = ["first_test_batches", "seconds_per_image"]


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
