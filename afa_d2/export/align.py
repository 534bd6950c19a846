"""Near-tied scores: the detections of an export put in PyTorch's order before they are compared.

Two detections whose scores differ by float rounding can come out of NMS in either order, in PyTorch and
in onnxruntime alike (onnxruntime's scores differ from PyTorch's by float rounding); with a hundred
detections of a random RetinaNet or FCOS, whose scores crowd around the head's prior, a swapped pair turns
up. The check of an export (``verify``) and the tests compare detection by detection after
:func:`align_detections`, which pairs the detections within such a tie by class and box; everything else
is compared in place. What no pairing can undo: where a hard cut (a level's top-k, the score threshold)
falls between two candidates that close, either may be kept; the tests keep such cuts far below the
detections they compare (``tests/test_export.py``).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch
from torch import Tensor

__all__ = ["align_detections"]


def align_detections(reference: Dict[str, Any], outputs: Dict[str, Any], tolerance: float = 1e-3) -> Dict[str, Any]:
    """``outputs`` with its detections put in ``reference``'s order where the two differ only in the order of
    near-tied scores.

    Both list their detections by decreasing score (NMS's order), and two detections whose scores are
    within float rounding of each other can come out in either order (the tests' random FCOS swaps a pair
    in onnxruntime at 150x203; see this module's doc). Within each run of reference scores whose neighbours
    are at most ``tolerance`` apart, every reference detection (in order) is paired with the free exported
    one of its class nearest in box and score, its own place first when that is as near; detections
    outside such runs keep their places. Every output whose first dimension is the number of detections
    is reordered alike (masks too).

    Args:
        reference, outputs: output name -> array or tensor (as :meth:`ExportedModel.run_tensor` returns),
            with ``scores`` (N,), ``pred_classes`` (N,) and ``pred_boxes`` (N, 4).
        tolerance (float): scores at most this far apart are tied.

    Returns:
        dict: ``outputs`` reordered (each value of the type it had), or ``outputs`` itself when either has
        no ``scores`` / ``pred_classes`` / ``pred_boxes`` or the numbers of detections differ (a comparison of
        shapes then reports it).
    """
    keys = ("scores", "pred_classes", "pred_boxes")
    if not all(k in reference and k in outputs for k in keys):
        return outputs

    def as_float64(value) -> np.ndarray:
        return np.asarray(torch.as_tensor(value).detach().cpu().double())

    ref_scores, ref_classes, ref_boxes = (as_float64(reference[k]) for k in keys)
    scores, classes, boxes = (as_float64(outputs[k]) for k in keys)
    n = len(ref_scores)
    if len(scores) != n or ref_boxes.shape != boxes.shape:
        return outputs
    order = np.arange(n)
    start = 0
    while start < n:
        end = start + 1
        while end < n and abs(ref_scores[end] - ref_scores[end - 1]) <= tolerance:
            end += 1
        if end - start > 1:  # a run of tied scores: pair by class, box and score
            cost = np.maximum(np.abs(boxes[None, start:end] - ref_boxes[start:end, None]).max(axis=-1),
                              np.abs(scores[None, start:end] - ref_scores[start:end, None]))  # (run, run)
            cost[classes[None, start:end] != ref_classes[start:end, None]] = np.inf
            free = np.ones(end - start, dtype=bool)
            for i in range(end - start):
                row = np.where(free, cost[i], np.inf)
                if free[i] and row[i] <= row.min():
                    j = i
                elif np.isfinite(row.min()):
                    j = int(np.argmin(row))
                else:  # nothing of its class is left: any free one, which the comparison then reports
                    j = int(np.flatnonzero(free)[0])
                free[j] = False
                order[start + i] = start + j
        start = end
    if (order == np.arange(n)).all():
        return outputs
    aligned = dict(outputs)
    for name, value in outputs.items():
        if name != "image_size" and len(getattr(value, "shape", ())) > 0 and value.shape[0] == n:
            aligned[name] = value[torch.as_tensor(order)] if isinstance(value, Tensor) else np.asarray(value)[order]
    return aligned
