"""Dataset names that ``import afa_d2`` makes available, and checks of real dataset roots.

- ``shapes_train``, ``shapes_val`` (COCO format) and ``shapes_lvis_train``,
  ``shapes_lvis_val`` (LVIS v1 format): the built-in synthetic dataset
  (:mod:`afa_d2.data.shapes`), generated into ``$AFA_D2_CACHE`` on first use.
- COCO 2017 and LVIS v1 are detectron2's own registered names (``coco_2017_train``,
  ``lvis_v1_val``, ...) under ``$DETECTRON2_DATASETS``. detectron2 fails on a missing
  file with a bare ``FileNotFoundError`` from deep inside its json loader; here their
  loaders are wrapped so that a missing root says which variable to set and what layout
  is expected (:func:`check_dataset_files`).
"""
from __future__ import annotations

import os
from functools import partial
from typing import List

from .shapes import register_shapes

__all__ = ["DatasetNotFoundError", "check_dataset_files", "guard_builtin_datasets", "DATASET_LAYOUT"]

# detectron2's expected layout under $DETECTRON2_DATASETS (its datasets/README.md).
DATASET_LAYOUT = """\
  $DETECTRON2_DATASETS/
    coco/annotations/instances_train2017.json
    coco/annotations/instances_val2017.json
    coco/annotations/image_info_test-dev2017.json    (COCO test-dev only)
    coco/train2017/    coco/val2017/    coco/test2017/    (the image files)
    lvis/lvis_v1_train.json
    lvis/lvis_v1_val.json
    lvis/lvis_v1_image_info_test_dev.json            (LVIS test-dev only)
  LVIS v1 uses COCO 2017's images (coco/train2017/, coco/val2017/, coco/test2017/)."""

# name prefixes of detectron2's registered datasets whose loaders get the check
_GUARDED_PREFIXES = ("coco_2014_", "coco_2017_", "lvis_v1_", "lvis_v0.5_")


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's json or image folder is missing."""


def check_dataset_files(dataset_name: str) -> None:
    """Raise :class:`DatasetNotFoundError` when ``dataset_name``'s json file or image root is missing.

    The message names ``$DETECTRON2_DATASETS`` (and its current value), the missing path,
    and the folder layout detectron2 expects.
    """
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    missing = []
    for key in ("json_file", "image_root"):
        path = getattr(meta, key, None)
        if path is not None and "://" not in str(path) and not os.path.exists(path):
            missing.append("{} {}".format(key, os.path.abspath(path)))
    if not missing:
        return
    env = os.environ.get("DETECTRON2_DATASETS")
    where = "DETECTRON2_DATASETS={!r}".format(env) if env is not None else (
        "DETECTRON2_DATASETS is not set, so detectron2 looks under ./datasets ({})".format(
            os.path.abspath("datasets")))
    raise DatasetNotFoundError(
        "Dataset '{}' not found: missing {}.\n{}. Set the environment variable DETECTRON2_DATASETS "
        "to the folder that holds the datasets (before the first `import afa_d2`/`import detectron2.data`), "
        "laid out as:\n{}\nNo dataset is downloaded; `shapes_train`/`shapes_val` need none.".format(
            dataset_name, " and ".join(missing), where, DATASET_LAYOUT))


def _checked_loader(dataset_name: str, loader):
    check_dataset_files(dataset_name)
    return loader()


def guard_builtin_datasets() -> List[str]:
    """Wrap the loaders of detectron2's COCO/LVIS names with :func:`check_dataset_files`.

    Idempotent; returns the wrapped names.
    """
    from detectron2.data import DatasetCatalog

    wrapped = []
    for name in list(DatasetCatalog.keys()):
        if not name.startswith(_GUARDED_PREFIXES):
            continue
        func = DatasetCatalog[name]  # DatasetCatalog is a dict of name -> loader
        if isinstance(func, partial) and func.func is _checked_loader:
            continue
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, partial(_checked_loader, name, func))
        wrapped.append(name)
    return wrapped


def register_builtin() -> None:
    """Register the default ``shapes`` names (once) and guard detectron2's real datasets."""
    from detectron2.data import DatasetCatalog

    if "shapes_train" not in DatasetCatalog.keys():
        register_shapes()
    guard_builtin_datasets()


register_builtin()
