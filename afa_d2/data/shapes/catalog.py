"""Registering ``shapes`` in detectron2's catalogs: :func:`register_shapes` names the COCO and
LVIS train/val datasets and their metadata, and ``_load`` generates a split into the cache
on the first ``DatasetCatalog.get``.
"""
from __future__ import annotations

import os
from typing import List, Optional

from .classes import CLASSES, VERSION
from .splits import default_cache_root, ensure_lvis_val, ensure_split, load_lvis_json, split_dirname

__all__ = ["register_shapes", "shapes_split_names"]

# The splits ``import afa_d2`` registers as ``shapes_train`` / ``shapes_val`` (afa_d2.data.builtin).
DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL = 2000, 200


def _load(fmt: str, name: str, split_args: dict, train_args: dict) -> List[dict]:
    from detectron2.data.datasets import load_coco_json

    split_dir = ensure_split(**split_args)
    image_root = os.path.join(split_dir, "images")
    if fmt == "coco":
        return load_coco_json(os.path.join(split_dir, "instances.json"), image_root, name)
    if split_args["split"] != "train":
        train_dir = ensure_split(**train_args)
        ensure_lvis_val(split_dir, train_dir, seed=split_args["seed"])
    return load_lvis_json(os.path.join(split_dir, "lvis_v1.json"), image_root)


def register_shapes(root: Optional[str] = None, *, prefix: str = "shapes", num_train: int = 2000,
                    num_val: int = 200, seed: int = 0, min_size: int = 192, max_size: int = 320) -> List[str]:
    """Register ``<prefix>_train``, ``<prefix>_val`` (COCO) and ``<prefix>_lvis_train``,
    ``<prefix>_lvis_val`` (LVIS v1) in detectron2's catalogs; returns the names.

    Registering generates nothing: the images are drawn on the first
    ``DatasetCatalog.get(name)`` (evaluators generate through it too when they need the
    json). ``root`` defaults to :func:`default_cache_root`.
    """
    from functools import partial

    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = root or default_cache_root()
    common = dict(root=root, seed=seed, min_size=min_size, max_size=max_size)
    train_args = dict(common, split="train", num_images=num_train)
    val_args = dict(common, split="val", num_images=num_val)
    names = []
    for fmt in ("coco", "lvis"):
        for split_args in (train_args, val_args):
            split = split_args["split"]
            name = "{}_{}{}".format(prefix, "lvis_" if fmt == "lvis" else "", split)
            split_dir = os.path.join(root, split_dirname(split, split_args["num_images"], seed, min_size, max_size))
            DatasetCatalog.register(name, partial(_load, fmt, name, split_args, train_args))
            MetadataCatalog.get(name).set(
                thing_classes=list(CLASSES),
                thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(CLASSES))},
                json_file=os.path.join(split_dir, "instances.json" if fmt == "coco" else "lvis_v1.json"),
                image_root=os.path.join(split_dir, "images"),
                evaluator_type=fmt,
                num_images=split_args["num_images"],
                shapes_version=VERSION,
            )
            names.append(name)
    return names


def shapes_split_names(num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL) -> dict:
    """``{"train": ..., "val": ...}``: the COCO-format ``shapes`` datasets of these sizes.

    The default sizes are ``shapes_train`` / ``shapes_val``; other sizes are registered on first
    call as ``shapes_n<train>_<val>_{train,val}`` (same images for the same sizes and seed).
    """
    if (num_train, num_val) == (DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL):
        return {"train": "shapes_train", "val": "shapes_val"}
    from detectron2.data import DatasetCatalog

    prefix = "shapes_n{}_{}".format(num_train, num_val)
    if prefix + "_train" not in DatasetCatalog.list():
        register_shapes(prefix=prefix, num_train=num_train, num_val=num_val)
    return {"train": prefix + "_train", "val": prefix + "_val"}
