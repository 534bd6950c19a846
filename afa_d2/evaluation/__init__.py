"""COCO and LVIS evaluators on faster-coco-eval (detectron2 ``DatasetEvaluator`` API)."""
from __future__ import annotations

from typing import Dict, Optional

from .coco import COCOEvaluator, evaluate_coco_results, instances_to_coco_json
from .lvis import LVISEvaluator

__all__ = ["COCOEvaluator", "LVISEvaluator", "build_evaluator", "instances_to_coco_json", "evaluate_coco_results",
           "summarize_results"]

_EVALUATORS = {"coco": COCOEvaluator, "lvis": LVISEvaluator}


def build_evaluator(dataset_name: str, output_dir: Optional[str] = None, **kwargs):
    """The evaluator for ``dataset_name``, chosen by its metadata's ``evaluator_type``.

    Args:
        dataset_name (str): a registered dataset ("coco_2017_val", "lvis_v1_val", "shapes_val", ...).
        output_dir (str or None): where results files go.
        **kwargs: passed to the evaluator (``tasks``, ``distributed``, ``max_dets_per_image``, ...).
    """
    from detectron2.data import MetadataCatalog

    kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if kind not in _EVALUATORS:
        raise ValueError("dataset '{}' has evaluator_type {!r}; afa_d2 evaluates {}".format(
            dataset_name, kind, sorted(_EVALUATORS)))
    return _EVALUATORS[kind](dataset_name, output_dir=output_dir, **kwargs)


def summarize_results(results: Dict) -> Dict[str, float]:
    """Box and mask AP / AP50 / AP75 from detectron2's nested results (``{"bbox": {"AP": ..}}``),
    as ``{"box_AP": .., "box_AP50": .., "mask_AP": ..}``; metrics that are absent are left out."""
    out = {}
    for task, key in (("bbox", "box"), ("segm", "mask")):
        for metric in ("AP", "AP50", "AP75"):
            value = (results or {}).get(task, {}).get(metric)
            if value is not None:
                out["{}_{}".format(key, metric)] = float(value)
    return out
