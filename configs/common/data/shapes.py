"""The built-in ``shapes`` dataset (docs/DESIGN.md, "The data"): train on ``shapes_train``, evaluate on ``shapes_val``.

Generated on first use into ``$AFA_D2_CACHE/shapes`` (no download); images are 192..320 px a
side with 13 categories (10 shapes + 3 markers that only the scene band tells apart).
Small-scale recipe for CPU: the shortest edge is resized to 192 (longest <= 336), horizontal
flip, total batch 4, two loader workers. The LVIS-format splits are ``shapes_lvis_train`` /
``shapes_lvis_val`` (swap ``names`` and use ``afa_d2.evaluation.LVISEvaluator``).
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
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=192, max_size=336, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",  # the masks are RLE (visible parts, holes included)
    ),
    total_batch_size=4,  # a CPU-sized batch (the paper's is 8)
    num_workers=2,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=192, max_size=336)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=2,
)

dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
