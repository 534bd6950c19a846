"""Datasets (the built-in ``shapes``; guards for COCO/LVIS roots) and the dataset mapper.

Importing this package registers ``shapes_train``, ``shapes_val``, ``shapes_lvis_train``
and ``shapes_lvis_val`` in detectron2's ``DatasetCatalog`` (nothing is generated until
a dataset is first loaded).
"""
from . import builtin as _builtin  # noqa: F401  (registration)
from .builtin import DATASET_LAYOUT, DatasetNotFoundError, check_dataset_files
from .mapper import DatasetMapper, ImageReadError, read_image
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import register_shapes, shapes_split_names

__all__ = [
    "DatasetMapper",
    "ImageReadError",
    "read_image",
    "DatasetNotFoundError",
    "check_dataset_files",
    "DATASET_LAYOUT",
    "register_shapes",
    "shapes_split_names",
    "SHAPES_CLASSES",
]
