"""LVIS v1 data: train on ``lvis_v1_train``, evaluate box and mask AP (APr/APc/APf) on ``lvis_v1_val``.

Same transforms as ``coco.py`` (shortest edge 800, longest <= 1333, horizontal flip, batch 8).
The model side of LVIS (1203 classes, 300 detections per image, score threshold 1e-4: the
LVIS evaluation protocol) is set in the ``configs/LVIS/`` recipe files.

Repeat-factor sampling (Gupta et al., 2019) is the usual LVIS recipe but the paper does not say
it used it, so it is off. To switch it on::

    from detectron2.data.samplers import RepeatFactorTrainingSampler
    dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
        repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
            dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001
        )
    )
"""
from afa_d2.evaluation import LVISEvaluator
from detectron2.config import LazyCall as L

from .coco import dataloader

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(LVISEvaluator)(dataset_name="${..test.dataset.names}")
