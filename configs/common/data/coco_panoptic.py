"""COCO 2017 panoptic, detectron2's "separated" form (things as instances, stuff as semantic segmentation):
train on ``coco_2017_train_panoptic_separated``, evaluate box / mask AP, mIoU and PQ on
``coco_2017_val_panoptic_separated`` (docs/DESIGN.md, "Beyond the paper's two detectors").

The resize, flip and batch of ``coco.py`` (the paper's recipe); as detectron2's ``coco_panoptic_separated.py``,
images without instances stay in training (their stuff is labelled) and the evaluators are detectron2's
(PQ needs ``panopticapi``, which detectron2 asks for when it evaluates).
"""
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator

from .coco import dataloader

dataloader.train.dataset.names = "coco_2017_train_panoptic_separated"
dataloader.train.dataset.filter_empty = False
dataloader.test.dataset.names = "coco_2017_val_panoptic_separated"
dataloader.evaluator = L(DatasetEvaluators)(
    evaluators=[
        L(COCOEvaluator)(dataset_name="${....test.dataset.names}"),
        L(SemSegEvaluator)(dataset_name="${....test.dataset.names}"),
        L(COCOPanopticEvaluator)(dataset_name="${....test.dataset.names}"),
    ]
)
