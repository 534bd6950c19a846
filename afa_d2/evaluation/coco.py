"""COCO box and mask AP on faster-coco-eval, as a detectron2 ``DatasetEvaluator`` (docs/DESIGN.md, "The recipe").

detectron2's ``COCOEvaluator`` evaluates with its C++ ``COCOeval_opt``, which the registry
copy of v0.6 lacks (docs/DESIGN.md, "detectron2 where only PyPI is reachable"). This evaluator keeps its
interface and its numbers
(``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>"}, "segm": {...}}``,
in percent, NaN where undefined) and evaluates with ``faster_coco_eval.COCOeval_faster``,
whose results equal pycocotools' (tests/test_evaluation.py checks all 12 stats).

A dataset without annotations (COCO test-dev) is not evaluated: the detections are
written as the file the evaluation server takes, ``detections_<testset>_<alg>_results.json``
(and a ``.zip`` of it to upload), and ``evaluate()`` returns ``{}``.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import zipfile
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

__all__ = ["COCOEvaluator", "instances_to_coco_json", "evaluate_coco_results"]

logger = logging.getLogger(__name__)

_COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# faster-coco-eval's stats_as_dict labels for the metrics above (and LVIS's frequency groups)
_STAT_LABELS = {
    "AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium",
    "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf",
}
_VALID_TASKS = ("bbox", "segm")


def instances_to_coco_json(instances, img_id: int) -> List[dict]:
    """Convert one image's ``Instances`` to COCO result dicts (contiguous category ids).

    Args:
        instances (Instances): with ``pred_boxes`` (XYXY_ABS), ``scores``, ``pred_classes``
            and optionally ``pred_masks`` (Tensor of shape (N, H, W), bool), on CPU.
        img_id (int): the image id.

    Returns:
        list[dict]: ``{"image_id", "category_id", "bbox" (XYWH), "score"[, "segmentation" (RLE)]}``;
        RLE ``counts`` are str, so the list is json-serializable.
    """
    n = len(instances)
    if n == 0:
        return []
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    rles = None
    if instances.has("pred_masks"):
        masks = instances.pred_masks.numpy().astype(np.uint8)  # (N, H, W)
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))  # one RLE per mask
        for rle in rles:
            rle["counts"] = rle["counts"].decode("utf-8")
    results = []
    for k in range(n):
        r = {"image_id": img_id, "category_id": classes[k], "bbox": boxes[k], "score": scores[k]}
        if rles is not None:
            r["segmentation"] = rles[k]
        results.append(r)
    return results


def evaluate_coco_results(coco_gt, results: Sequence[dict], iou_type: str, *, lvis_style: bool = False,
                          max_dets: Optional[Sequence[int]] = None, img_ids: Optional[Sequence[int]] = None):
    """Run faster-coco-eval on ``results`` (dataset category ids); returns the evaluated object.

    As detectron2 does, a mask evaluation drops the boxes from the results (so a detection's
    area is its mask's, not its box's) and a box evaluation drops the masks.
    """
    from faster_coco_eval import COCOeval_faster

    results = copy.deepcopy(list(results))
    drop = "bbox" if iou_type == "segm" else "segmentation"
    for r in results:
        r.pop(drop, None)
    lines: List[str] = []
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=lines.append, lvis_style=lvis_style)
    if max_dets is not None:
        ev.params.maxDets = list(max_dets)
    if img_ids is not None:
        ev.params.imgIds = sorted(img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    logger.info("Evaluation of %s (faster-coco-eval%s):\n%s", iou_type, ", LVIS style" if lvis_style else "",
                "\n".join(line for line in lines if "Average" in line))
    return ev


def _metrics(ev, names: Sequence[str], class_names: Optional[Sequence[str]]) -> Dict[str, float]:
    stats = ev.stats_as_dict
    out = OrderedDict()
    for name in names:
        v = stats[_STAT_LABELS[name]]
        out[name] = float(v * 100) if v >= 0 else float("nan")
    if class_names and len(class_names) > 1:
        precision = ev.eval["precision"]  # (iou thresholds, recall thresholds, classes, areas, max dets)
        if precision.shape[2] != len(class_names):
            raise ValueError("evaluated {} categories, dataset has {} class names".format(
                precision.shape[2], len(class_names)))
        for k, cname in enumerate(class_names):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out["AP-" + cname] = float(np.mean(p) * 100) if p.size else float("nan")
    return out


class COCOEvaluator(DatasetEvaluator):
    """COCO box / mask AP on faster-coco-eval; a drop-in for detectron2's ``COCOEvaluator``.

    Args:
        dataset_name (str): a registered dataset whose metadata has ``json_file`` (COCO
            format). For ``shapes`` the json is generated if it is not there yet.
        tasks (Sequence[str]): any of "bbox", "segm".
        distributed (bool): gather predictions from all processes and evaluate on rank 0.
        output_dir (str or None): where ``coco_instances_results.json`` (and, for a dataset
            without annotations, the server's results file) is written.
        max_dets_per_image (int): detections per image kept by the evaluation (COCO: 100).
        results_file_name (str or None): name of the test-dev results file; default
            ``detections_<testset>_<algorithm>_results.json``.
        algorithm (str): the ``<alg>`` part of that default name.
    """

    _lvis_style = False
    _metric_names: Sequence[str] = _COCO_METRICS

    def __init__(self, dataset_name: str, tasks: Sequence[str] = ("bbox", "segm"), distributed: bool = True,
                 output_dir: Optional[str] = None, *, max_dets_per_image: int = 100,
                 results_file_name: Optional[str] = None, algorithm: str = "afa_d2"):
        from faster_coco_eval import COCO

        tasks = tuple(tasks)
        bad = [t for t in tasks if t not in _VALID_TASKS]
        if bad or not tasks:
            raise ValueError("tasks {} are not supported; valid: {}".format(bad or tasks, _VALID_TASKS))
        self._tasks = tasks
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = int(max_dets_per_image)
        self._results_file_name = results_file_name
        self._algorithm = algorithm
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        json_file = getattr(self._metadata, "json_file", None)
        if json_file is None:
            raise ValueError("dataset '{}' has no json_file in its metadata: {} needs one".format(
                dataset_name, type(self).__name__))
        if not os.path.isfile(json_file):
            DatasetCatalog.get(dataset_name)  # generates `shapes`; explains a missing COCO/LVIS root
            if not os.path.isfile(json_file):
                raise FileNotFoundError("json_file of dataset '{}' not found: {}".format(dataset_name, json_file))
        self._json_file = json_file
        self._coco_api = COCO(json_file)
        self._has_gt = len(self._coco_api.dataset.get("annotations") or []) > 0
        self.reset()

    def reset(self):
        self._predictions: List[dict] = []

    def process(self, inputs, outputs):
        """Args: inputs (list[dict]) with "image_id"; outputs (list[dict]) with "instances"."""
        for inp, out in zip(inputs, outputs):
            if "instances" in out:
                self._predictions.extend(instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"]))

    # ----------------------------------------------------------------------------------
    def _contiguous_to_dataset_id(self) -> Dict[int, int]:
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping:
            return {v: k for k, v in mapping.items()}
        return {k: k + 1 for k in range(len(self._metadata.thing_classes))}  # LVIS: ids from 1

    def _gather(self) -> Optional[List[dict]]:
        if self._distributed:
            comm.synchronize()
            parts = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return None
            return list(itertools.chain(*parts))
        return list(self._predictions)

    def _prepare_results(self, predictions: List[dict]) -> List[dict]:
        to_id = self._contiguous_to_dataset_id()
        results = []
        for p in predictions:
            r = dict(p)
            if r["category_id"] not in to_id:
                raise ValueError("predicted class {} is not a class of '{}' ({} classes)".format(
                    r["category_id"], self._dataset_name, len(to_id)))
            r["category_id"] = to_id[r["category_id"]]
            results.append(r)
        return results

    def _testset_name(self) -> str:
        base = os.path.splitext(os.path.basename(self._json_file))[0]
        return base.replace("image_info_", "") if base.startswith("image_info_") else self._dataset_name

    def _write_server_file(self, results: List[dict]) -> str:
        if not self._output_dir:
            raise ValueError("dataset '{}' has no annotations (a test set): its results file for the "
                             "evaluation server needs output_dir".format(self._dataset_name))
        name = self._results_file_name or "detections_{}_{}_results.json".format(
            self._testset_name(), self._algorithm)
        path = os.path.join(self._output_dir, name)
        with open(path, "w") as f:
            json.dump(results, f)
        with zipfile.ZipFile(os.path.splitext(path)[0] + ".zip", "w", zipfile.ZIP_DEFLATED) as z:
            z.write(path, arcname=name)
        return path

    def evaluate(self, img_ids=None):
        """Returns ``{task: {metric: value}}`` on the main process (``{}`` elsewhere and for test sets)."""
        predictions = self._gather()
        if predictions is None:
            return {}
        if img_ids is not None:
            keep = set(img_ids)
            predictions = [p for p in predictions if p["image_id"] in keep]
        results = self._prepare_results(predictions)
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            with open(os.path.join(self._output_dir, "coco_instances_results.json"), "w") as f:
                json.dump(results, f)
        if not self._has_gt:
            path = self._write_server_file(results)
            logger.info("'%s' has no annotations: not evaluated. %d detections written for the evaluation "
                        "server to %s (upload the .zip beside it).", self._dataset_name, len(results), path)
            return {}
        if not results:
            logger.warning("No predictions from the model for '%s'.", self._dataset_name)
            return OrderedDict((t, {m: float("nan") for m in self._metric_names}) for t in self._tasks)
        return self._evaluate_results(results, img_ids)

    def _evaluate_results(self, results: List[dict], img_ids=None):
        out = OrderedDict()
        for task in self._tasks:
            if task == "segm" and not any("segmentation" in r for r in results):
                logger.warning("segm requested but the predictions have no masks: skipped")
                continue
            ev = self._run(results, task, img_ids)
            out[task] = _metrics(ev, self._metric_names, self._metadata.get("thing_classes"))
        return out

    def _run(self, results: List[dict], task: str, img_ids=None):
        return evaluate_coco_results(self._coco_api, results, task, lvis_style=self._lvis_style,
                                     max_dets=self._max_dets_list(), img_ids=img_ids)

    def _max_dets_list(self) -> List[int]:
        return [1, 10, self._max_dets] if self._max_dets >= 10 else [self._max_dets]
