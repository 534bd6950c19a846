"""The inputs of every view: a model named by a *model spec*, and images as the model takes them.

A model spec is ``CONFIG=WEIGHTS`` (a zoo name or config file, and a checkpoint), a published checkpoint
alone (its ``afa_d2_metadata`` names its config), or ``CONFIG`` alone (random weights, for trying the
tools). Images come from files or from a registered dataset (with their ground truth), and are resized as
the config's test loader does (:func:`prepare_input`).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from afa_d2.model_zoo.build import (build_model, inference_augmentations, input_format, load_any_config,
                                    test_time_input)

from .errors import VisualizeInputError
from .pyramid import find_pyramid, operator_label

__all__ = [
    "LoadedModel",
    "PreparedInput",
    "dataset_records",
    "load_model",
    "parse_model_spec",
    "predict",
    "prepare_input",
    "read_image",
]


@dataclass
class LoadedModel:
    """A model ready for inference on single images.

    Attributes:
        label: how figures name it (its operator's label, or the user's).
        config_name: the config it was built from.
        cfg: its LazyConfig or yacs CfgNode.
        model: the detector, eval mode.
        augmentations: the config's test-time augmentations (instantiated).
        input_format: "BGR" or "RGB", the channel order of the model's input.
        dataset: the config's test dataset name ("" if none), for class names.
    """

    label: str
    config_name: str
    cfg: Any
    model: nn.Module
    augmentations: list
    input_format: str
    dataset: str = ""


def _checkpoint_config(path: str) -> Tuple[str, List[str]]:
    """The config name and overrides a published checkpoint's metadata records."""
    from afa_d2.engine.checkpoint import load_checkpoint_file

    data = load_checkpoint_file(path)
    meta = data.get("afa_d2_metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not meta.get("config"):
        raise VisualizeInputError(
            "checkpoint {} has no afa_d2_metadata naming its config: write the model as CONFIG={} "
            "(e.g. shapes/mask_rcnn_R_18_msca.py={})".format(path, path, path))
    return str(meta["config"]), [str(o) for o in meta.get("config_overrides", []) or []]


def parse_model_spec(spec: str) -> Tuple[str, Optional[str], List[str]]:
    """``CONFIG=WEIGHTS`` | ``WEIGHTS`` (a published checkpoint) | ``CONFIG`` -> (config, weights, overrides).

    ``weights`` is None for a config alone (random weights); ``overrides`` are those recorded in a
    published checkpoint's metadata.
    """
    spec = spec.strip()
    if not spec:
        raise VisualizeInputError("empty model spec; write CONFIG=WEIGHTS, a published WEIGHTS.pth, or CONFIG")
    if "=" in spec and not os.path.isfile(spec):
        config, weights = spec.split("=", 1)
        if not config or not weights:
            raise VisualizeInputError("model spec {!r}: write CONFIG=WEIGHTS with both parts".format(spec))
        return config, weights, []
    if spec.endswith((".pth", ".pkl")):
        if not os.path.isfile(spec):
            raise VisualizeInputError("model spec {!r}: no such checkpoint file (cwd: {})".format(spec, os.getcwd()))
        config, overrides = _checkpoint_config(spec)
        return config, spec, overrides
    return spec, None, []


def _test_dataset(cfg) -> str:
    if hasattr(cfg, "DATASETS"):
        return str(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else ""
    try:
        names = cfg.dataloader.test.dataset.names
    except (AttributeError, KeyError):
        return ""
    return str(names if isinstance(names, str) else names[0])


def load_model(spec: str, opts: Sequence[str] = (), *, label: Optional[str] = None, device: str = "cpu",
               seed: int = 0) -> LoadedModel:
    """Build and load the model of a model spec (see :func:`parse_model_spec`).

    Args:
        spec (str): ``CONFIG=WEIGHTS``, a published ``WEIGHTS.pth``, or ``CONFIG`` (random weights).
        opts (list[str]): config overrides ``key=value`` (after those a published checkpoint records).
        label (str): the name in figures; default the label of the pyramid's operator
            (:func:`~afa_d2.inspection.pyramid.operator_label`).
        device (str): e.g. "cpu".
        seed (int): seed of the random initialisation (before loading the weights).

    Raises:
        UnknownConfigError, CheckpointMismatchError, UnknownConfigKeyError, VisualizeInputError: one line each.
    """
    config, weights, recorded = parse_model_spec(spec)
    cfg = load_any_config(config, list(recorded) + list(opts))
    model = build_model(cfg, weights, device, seed, config_name=config)
    if label is None:
        label = operator_label(find_pyramid(model)[1])
        if weights is None:
            label += " (random weights)"
    return LoadedModel(label=label, config_name=config, cfg=cfg, model=model,
                       augmentations=inference_augmentations(cfg), input_format=input_format(cfg),
                       dataset=_test_dataset(cfg))


# ----------------------------------------------------------------------------------- images
def read_image(path: str) -> np.ndarray:
    """An image file as an RGB array of shape (H, W, 3), uint8 (:func:`afa_d2.data.read_image`).

    Raises:
        VisualizeInputError: no such file, or not an image PIL can read.
    """
    from afa_d2.data import ImageReadError
    from afa_d2.data import read_image as read

    try:
        return np.ascontiguousarray(read(path, "RGB"))
    except ImageReadError as e:
        raise VisualizeInputError(str(e)) from None


def dataset_records(name: str, num_images: int, start: int = 0) -> List[dict]:
    """``num_images`` records of a registered dataset (detectron2's dicts, with ground truth).

    Raises:
        VisualizeInputError: the name is not registered (one line with the closest names).
    """
    from detectron2.data import DatasetCatalog

    known = list(DatasetCatalog.list())
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise VisualizeInputError("dataset {!r} is not registered; closest: {} (import afa_d2 registers shapes_train, "
                                  "shapes_val; detectron2 registers coco_2017_val etc.)".format(
                                      name, ", ".join(close) or "none"))
    if num_images <= 0 or start < 0:
        raise VisualizeInputError("--num-images {} / --start {}: need num_images > 0 and start >= 0".format(
            num_images, start))
    records = DatasetCatalog.get(name)
    if start >= len(records):
        raise VisualizeInputError("dataset {} has {} images; --start {} is past its end".format(
            name, len(records), start))
    return list(records[start:start + num_images])


@dataclass
class PreparedInput:
    """One image as the model takes it, and how its coordinates map onto the network input."""

    inputs: dict  # the model's input dict
    transforms: Any  # detectron2 TransformList, original -> network input coordinates
    input_hw: Tuple[int, int]  # network input size before padding


def prepare_input(lm: LoadedModel, rgb: np.ndarray) -> PreparedInput:
    """The model's input for one image, resized as the config's test loader does.

    Args:
        lm: the model (its test-time augmentations and input format are used).
        rgb: array of shape (H, W, 3), uint8, RGB.

    Returns:
        PreparedInput: ``inputs`` ({"image": Tensor of shape (3, H', W'), "height": H, "width": W}),
        ``transforms`` (image -> network input coordinates), ``input_hw`` (H', W').
    """
    device = next(lm.model.parameters()).device
    inputs, transforms = test_time_input(rgb, lm.augmentations, lm.input_format, "RGB", device)
    tensor = inputs["image"]
    return PreparedInput(inputs, transforms, (int(tensor.shape[1]), int(tensor.shape[2])))


def predict(lm: LoadedModel, rgb: np.ndarray):
    """Detections of ``lm`` on one RGB image (H, W, 3) uint8, in the image's coordinates (``Instances``, CPU)."""
    with torch.no_grad():
        return lm.model([prepare_input(lm, rgb).inputs])[0]["instances"].to("cpu")
