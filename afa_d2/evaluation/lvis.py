"""LVIS v1 box and mask AP (with APr / APc / APf) on faster-coco-eval (docs/DESIGN.md, "The recipe" and
"detectron2 where only PyPI is reachable").

The official ``lvis`` package (0.5.3) evaluates with ``np.float``, gone since NumPy 1.24,
and detectron2's ``LVISEvaluator`` calls it. This evaluator follows the LVIS protocol
through ``faster_coco_eval`` with ``lvis_style=True``: the federated rules (a detection of
a category neither annotated in an image nor among its ``neg_category_ids`` is ignored;
unmatched detections of a ``not_exhaustive_category_ids`` category are not false
positives), at most 300 detections per image (the top-scoring ones over all categories,
as ``lvis.LVISResults``), and AP per frequency group of the categories' ``frequency``.
tests/test_evaluation.py checks its numbers against the official ``LVISEval``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import List, Optional, Sequence

from .coco import COCOEvaluator

__all__ = ["LVISEvaluator", "limit_dets_per_image"]

_LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def limit_dets_per_image(results: Sequence[dict], max_dets: int) -> List[dict]:
    """Keep the ``max_dets`` highest-scoring results of each image (all categories together)."""
    per_image = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    out = []
    for img_id in sorted(per_image):
        rs = per_image[img_id]
        if len(rs) > max_dets:
            rs = sorted(rs, key=lambda r: r["score"], reverse=True)[:max_dets]
        out.extend(rs)
    return out


class LVISEvaluator(COCOEvaluator):
    """LVIS v1 box / mask AP with APr, APc, APf; a drop-in for detectron2's ``LVISEvaluator``.

    Args:
        dataset_name (str): a registered dataset in LVIS v1 format (``json_file`` with
            categories carrying ``frequency``, images with ``neg_category_ids`` and
            ``not_exhaustive_category_ids``).
        tasks, distributed, output_dir: as :class:`~afa_d2.evaluation.COCOEvaluator`.
        max_dets_per_image (int): LVIS: 300.

    Returns from ``evaluate()``: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl",
    "APr", "APc", "APf", "AP-<class>"}, "segm": {...}}`` in percent.
    """

    _lvis_style = True
    _metric_names: Sequence[str] = _LVIS_METRICS

    def __init__(self, dataset_name: str, tasks: Sequence[str] = ("bbox", "segm"), distributed: bool = True,
                 output_dir: Optional[str] = None, *, max_dets_per_image: int = 300, **kwargs):
        super().__init__(dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image,
                         **kwargs)

    def _evaluate_results(self, results, img_ids=None):
        return super()._evaluate_results(limit_dets_per_image(results, self._max_dets), img_ids)

    def _max_dets_list(self) -> List[int]:
        return [self._max_dets]
