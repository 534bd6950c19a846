"""The runner's detections as files: a JSON record, the image with the detections drawn, an instance-id map."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from afa_d2.export.backend import ExportError

__all__ = ["draw_detections", "write_detections"]


def class_name(dets: Dict[str, Any], i: int) -> Optional[str]:
    """The name of detection ``i``'s class from the exported file's class names; None where it has none."""
    names = dets.get("class_names") or []
    c = int(dets["classes"][i])
    return names[c] if 0 <= c < len(names) else None


def draw_detections(rgb: np.ndarray, dets: Dict[str, Any]) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with the detections drawn: boxes, masks (when ``dets`` has them),
    "<class name> <score>%" labels."""
    from detectron2.data.catalog import Metadata
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    inst = Instances(tuple(dets["image_size"]))
    inst.pred_boxes = Boxes(torch.as_tensor(dets["boxes"]))
    inst.scores = torch.as_tensor(dets["scores"])
    inst.pred_classes = torch.as_tensor(dets["classes"])
    if dets.get("masks") is not None:
        inst.pred_masks = torch.as_tensor(dets["masks"])
    names = list(dets.get("class_names") or [])
    if not names:  # an export without names: the class numbers
        names = [str(c) for c in range(int(max(dets["classes"], default=-1)) + 1)]
    return Visualizer(rgb, metadata=Metadata(thing_classes=names)).draw_instance_predictions(inst).get_image()


def write_detections(dets: Dict[str, Any], output: str, source: str = "",
                     image: Optional[np.ndarray] = None, draw_threshold: float = 0.5) -> Tuple[str, Optional[str]]:
    """Write :func:`afa_d2.export.run_exported`'s detections: a JSON file, and pictures beside it.

    JSON: ``image_size``, ``model``, and per detection ``box`` (XYXY), ``score``, ``class`` (and
    ``class_name`` when the export carries the names), and, when ``dets`` has ``masks``, ``mask`` (COCO RLE
    of the pasted mask, ``{"size": [H, W], "counts": str}``). ``<output stem>.png``: the detections drawn on
    ``image`` (an RGB array), boxes, masks if any, class names and scores (detectron2's ``Visualizer``). With masks,
    ``<output stem>_ids.png``: the instance-id map, uint16, pixel = 1 + the index of the highest-scoring
    detection covering it, 0 for none (for programs; it looks black in a viewer).

    Returns:
        (json path, drawing path or None).
    """
    if not str(output).endswith(".json"):
        raise ExportError("the detections file must be a .json file, got {!r}".format(output))
    height, width = dets["image_size"]
    masks = dets.get("masks")
    records = []
    for i in range(len(dets["scores"])):
        rec = {"box": [round(float(v), 3) for v in dets["boxes"][i]], "score": round(float(dets["scores"][i]), 6),
               "class": int(dets["classes"][i])}
        name = class_name(dets, i)
        if name is not None:
            rec["class_name"] = name
        if masks is not None:
            from pycocotools import mask as mask_util

            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            rec["mask"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        records.append(rec)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump({"model": source, "image_size": [int(height), int(width)], "detections": records}, f, indent=1)
    drawing = None
    import cv2

    stem = os.path.splitext(output)[0]
    if masks is not None:
        ids = np.zeros((height, width), dtype=np.uint16)
        for i in reversed(np.argsort(dets["scores"], kind="stable")[::-1]):  # the best-scoring last, so on top
            ids[masks[i]] = i + 1
        if not cv2.imwrite(stem + "_ids.png", ids):
            raise ExportError("could not write {!r}".format(stem + "_ids.png"))
    if image is not None:
        drawing = stem + ".png"
        shown = dets["scores"] >= float(draw_threshold)
        kept = {k: (v[shown] if k in ("boxes", "scores", "classes", "masks") else v) for k, v in dets.items()
                if k != "mask_probs"}
        if not cv2.imwrite(drawing, draw_detections(image, kept)[:, :, ::-1]):
            raise ExportError("could not write {!r}".format(drawing))
    return output, drawing
