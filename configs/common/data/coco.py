"""COCO 2017 data: train on ``coco_2017_train``, evaluate box and mask AP on ``coco_2017_val``.

The paper's recipe (docs/DESIGN.md, "The recipe"): shortest edge 800, longest at most 1333, horizontal flip, total
batch 8. (detectron2's own ``common/data/coco.py`` samples the shortest edge from 640..800 and
uses batch 16; the paper uses a single scale.) The paper also mentions a random crop; it is
optional and left out, add ``L(T.RandomCrop)(crop_type="relative_range", crop_size=(0.8, 0.8))``
to ``dataloader.train.mapper.augmentations`` to try it. Datasets are read from
``$DETECTRON2_DATASETS`` (default ``./datasets``) in detectron2's layout.
"""
import afa_d2  # noqa: F401  (detectron2 compat patches before detectron2 is used)
import detectron2.data.transforms as T
from afa_d2.data import DatasetMapper  # detectron2's, with errors that name the image file
from afa_d2.evaluation import COCOEvaluator
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
    ),
    total_batch_size=8,  # over all GPUs; the schedule is in epochs, see common/schedule_1x.py
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
