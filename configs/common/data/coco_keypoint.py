"""COCO 2017 person keypoints: train on ``keypoints_coco_2017_train``, evaluate box and keypoint AP on
``keypoints_coco_2017_val`` (docs/DESIGN.md, "Beyond the paper's two detectors").

The resize, flip and batch of ``coco.py`` (the paper's recipe); as detectron2's ``coco_keypoint.py``, images
with no visible keypoint are left out of training and the flip swaps left and right keypoints. The
evaluator is detectron2's (pycocotools): afa_d2's faster-coco-eval evaluator scores boxes and masks only.
"""
from detectron2.config import LazyCall as L
from detectron2.data.detection_utils import create_keypoint_hflip_indices
from detectron2.evaluation import COCOEvaluator

from .coco import dataloader

dataloader.train.dataset.names = "keypoints_coco_2017_train"
dataloader.train.dataset.min_keypoints = 1
dataloader.test.dataset.names = "keypoints_coco_2017_val"
dataloader.train.mapper.update(
    use_instance_mask=False,
    use_keypoint=True,
    # built from the dataset's metadata when the loader is built (a call, so that the config dumps as yaml)
    keypoint_hflip_indices=L(create_keypoint_hflip_indices)(dataset_names="${...dataset.names}"),
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", tasks=("bbox", "keypoints"))
