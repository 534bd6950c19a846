"""The paper's Fig. 3: the same images with their ground truth and the predictions of two or more
checkpoints side by side, drawn with detectron2's ``Visualizer`` into one PNG."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import VisualizeInputError
from .models import LoadedModel, predict

__all__ = ["GAP_PX", "HEADER_PX", "draw_predictions"]

HEADER_PX = 32  # the title band of the predictions grid
GAP_PX = 8


def _metadata(name: str):
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get(name) if name else None


def _title_band(width: int, height: int, text: str) -> np.ndarray:
    """A white (height, width, 3) band with ``text`` centred, shrunk to fit."""
    import cv2

    band = np.full((height, width, 3), 255, np.uint8)
    scale = 0.55
    while scale > 0.25:
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        if tw <= width - 4:
            break
        scale -= 0.05
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    org = (max(2, (width - tw) // 2), (height + th) // 2)
    cv2.putText(band, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def _fit(panel: np.ndarray, h: int, w: int) -> np.ndarray:
    """``panel`` resized to exactly (h, w) when the drawing is off by a pixel of rounding."""
    import cv2

    return cv2.resize(panel, (w, h), interpolation=cv2.INTER_AREA) if panel.shape[:2] != (h, w) else panel


def draw_predictions(models: Sequence[LoadedModel], images: Sequence[Tuple[np.ndarray, Optional[dict]]], path: str,
                     *, score_thresh: float = 0.5, scale: float = 1.0, dataset: str = "") -> Dict[str, Any]:
    """One PNG: a row per image; columns ground truth (when the images have it), then each model.

    Args:
        models: the checkpoints to compare (e.g. one per operator), in column order.
        images: (RGB array (H, W, 3) uint8, dataset record with "annotations" or None) per row.
        path (str): the PNG to write.
        score_thresh (float): detections below this score are not drawn.
        scale (float): drawing scale of every panel.
        dataset (str): the dataset whose class names label the boxes (default: the first model's test set).

    Returns:
        dict: "path", "size" (H, W) of the PNG, "cell_width" (the widest panel; narrower ones are
        padded white), "row_heights" (each row's panel height), "columns" (titles), "detections"
        (per row, per model: how many were drawn).
    """
    from detectron2.utils.visualizer import Visualizer

    if not models:
        raise VisualizeInputError("no model given: pass --model at least once (two or more to compare)")
    if not images:
        raise VisualizeInputError("no image given: pass --images FILES or --dataset NAME")
    if not 0.0 <= score_thresh <= 1.0:
        raise VisualizeInputError("--score-thresh {} must be in [0, 1]".format(score_thresh))
    if not scale > 0:
        raise VisualizeInputError("--scale {} must be > 0 (1 draws the images at their size)".format(scale))
    metadata = _metadata(dataset or models[0].dataset)
    with_gt = any(record is not None for _, record in images)
    titles = (["ground truth"] if with_gt else []) + [m.label for m in models]
    cells = [(int(round(rgb.shape[0] * scale)), int(round(rgb.shape[1] * scale))) for rgb, _ in images]
    cell_w = max(c[1] for c in cells)
    rows, detections = [], []
    for (rgb, record), (h, w) in zip(images, cells):
        cell_h = h
        panels, counts = [], []
        if with_gt:
            gt = Visualizer(rgb, metadata, scale=scale)
            panels.append(gt.draw_dataset_dict(record).get_image() if record is not None else rgb.copy())
        for m in models:
            inst = predict(m, rgb)
            inst = inst[inst.scores >= score_thresh]
            counts.append(len(inst))
            panels.append(Visualizer(rgb, metadata, scale=scale).draw_instance_predictions(inst).get_image())
        detections.append(counts)
        row = []
        for k, panel in enumerate(panels):
            cell = np.full((cell_h, cell_w, 3), 255, np.uint8)
            cell[:h, :w] = _fit(panel, h, w)
            row += [cell] if k == 0 else [np.full((cell_h, GAP_PX, 3), 255, np.uint8), cell]
        rows.append(np.concatenate(row, axis=1))
    width = rows[0].shape[1]
    header = [_title_band(cell_w, HEADER_PX, t) for t in titles]
    header = np.concatenate(sum(([np.full((HEADER_PX, GAP_PX, 3), 255, np.uint8), b] for b in header[1:]),
                                [header[0]]), axis=1)
    parts = [header]
    for row in rows:
        parts += [row, np.full((GAP_PX, width, 3), 255, np.uint8)]
    grid = np.concatenate(parts[:-1], axis=0)
    _write_png(path, grid)
    return {"path": path, "size": grid.shape[:2], "cell_width": cell_w, "row_heights": [c[0] for c in cells],
            "columns": titles, "detections": detections}


def _write_png(path: str, rgb: np.ndarray) -> None:
    import cv2

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError("could not write {}".format(path))
