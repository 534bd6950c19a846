"""Building a model from a config and weights: the one way every tool does it.

A config is a zoo name (``shapes/mask_rcnn_R_18_msca.py``), a LazyConfig ``.py``, a run's dumped
``config.yaml`` or a yacs ``.yaml``, with ``key=value`` overrides (:func:`load_any_config`); the model is
built from it and its weights loaded with the one fit check, :func:`~afa_d2.model_zoo.load_fitting`: every
model tensor must come from the checkpoint with its shape, else one line names what differs
(:func:`build_model`). The test-time resize and the channel order the model expects come from the config
too (:func:`inference_augmentations`, :func:`input_format`, :func:`default_image_size`). The predictor,
the export, the analysis, the visualisation, the demo, the zoo trainer and the study use these; the zoo's
``get`` (which this module imports) builds its own, with the same :func:`~afa_d2.model_zoo.load_fitting`.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["YACS_SUFFIXES", "architecture", "build_model", "default_image_size", "inference_augmentations",
           "input_format", "is_yacs", "load_any_config", "load_weights", "looks_like_yacs", "test_time_input"]

YACS_SUFFIXES = (".yaml", ".yml")


def is_yacs(cfg) -> bool:
    return hasattr(cfg, "MODEL") and not hasattr(cfg, "model")


def _yacs_opts(opts: Sequence[str]) -> List[str]:
    out: List[str] = []
    for o in opts:
        if "=" not in o:
            raise ValueError("override {!r} is not KEY=VALUE (e.g. MODEL.AFA.AGGREGATION=msca)".format(o))
        key, value = o.split("=", 1)
        out += [key.strip(), value.strip()]
    return out


def load_any_config(config: str, opts: Sequence[str] = (), *, trained: bool = False):
    """A config by zoo name or file, with ``key=value`` overrides applied.

    Args:
        config (str): a zoo name ("shapes/mask_rcnn_R_18_msca.py"; ``afa_d2.model_zoo.list_configs()``),
            a LazyConfig ``.py`` file, a run's dumped ``config.yaml``, or a yacs ``.yaml`` (file or zoo name).
        opts (list[str]): overrides, ``key=value`` (LazyConfig keys are checked, unknown ones refused).
        trained (bool): for a zoo name, point the weights at its published checkpoint.

    Returns:
        a LazyConfig (omegaconf ``DictConfig``) or a yacs ``CfgNode``.

    Raises:
        UnknownConfigError: neither a file nor a zoo name (one line with the closest names).
        UnknownConfigKeyError: an override names a key the config does not have.
    """
    from afa_d2.engine import apply_overrides
    from afa_d2.engine.schedule import ensure_schedule_keys
    from .zoo import get_config

    opts = [o for o in opts if o.strip()]
    if os.path.isfile(config):
        if config.endswith(YACS_SUFFIXES) and looks_like_yacs(config):
            from detectron2.config import get_cfg

            from afa_d2.config import add_afa_config

            cfg = get_cfg()
            add_afa_config(cfg)
            cfg.merge_from_file(config)
        else:
            from detectron2.config import LazyConfig

            cfg = LazyConfig.load(config)
            ensure_schedule_keys(cfg)
    else:
        cfg = get_config(config, trained=trained)
    if is_yacs(cfg):
        cfg.merge_from_list(_yacs_opts(opts))
        return cfg
    return apply_overrides(cfg, opts)


def looks_like_yacs(path: str) -> bool:
    """A yacs file has upper-case top-level keys (``MODEL:``); a dumped LazyConfig has ``model:``."""
    with open(path) as f:
        for line in f:
            if line[:1].isalpha():
                return line[:1].isupper()
    return False


def inference_augmentations(cfg) -> list:
    """The config's test-time augmentations (instantiated), e.g. ``[ResizeShortestEdge(800, 1333)]``."""
    from detectron2.config import instantiate
    from detectron2.data import transforms as T

    if is_yacs(cfg):
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    if "dataloader" not in cfg or "test" not in cfg.dataloader:
        return []
    augs = cfg.dataloader.test.get("mapper", {}).get("augmentations", None)
    return [instantiate(a) for a in augs] if augs else []


def default_image_size(cfg) -> Tuple[int, int]:
    """(H, W) of the image the analysis traces: the test resize's shortest edge and its max size
    (800 x 1333 for the COCO configs), else 800 x 1333."""
    from detectron2.data import transforms as T

    for aug in inference_augmentations(cfg):
        if isinstance(aug, T.ResizeShortestEdge):
            short = aug.short_edge_length
            short = int(short[-1] if isinstance(short, (list, tuple)) else short)
            long = int(aug.max_size) if aug.max_size and aug.max_size < 10 ** 6 else int(round(short * 1333 / 800))
            return short, max(short, long)
    return 800, 1333


def input_format(cfg) -> str:
    """"BGR" or "RGB": the channel order the model's ``image`` input expects."""
    if is_yacs(cfg):
        return str(cfg.INPUT.FORMAT)
    return str(cfg.model.get("input_format", "BGR"))


def test_time_input(image, augmentations: Sequence, input_format: str, image_format: str = "BGR",
                    device: str = "cpu"):
    """A detector's input for one image, made as the config's test loader makes it.

    Args:
        image: array of shape (H, W, 3), uint8, in ``image_format`` ("BGR" as cv2 reads, or "RGB").
        augmentations: the test-time augmentations (:func:`inference_augmentations`).
        input_format: the channel order the model expects (:func:`input_format`).

    Returns:
        (inputs, transforms): ``{"image": Tensor (3, H', W') on device, "height": H, "width": W}`` and the
        applied transforms (image -> network input coordinates).
    """
    import numpy as np
    from detectron2.data import transforms as T

    array = image if image_format == input_format else image[:, :, ::-1]
    aug_input = T.AugInput(np.ascontiguousarray(array))
    transforms = T.AugmentationList(list(augmentations))(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))).to(device)
    return {"image": tensor, "height": int(image.shape[0]), "width": int(image.shape[1])}, transforms


def _target_name(node) -> str:
    target = node.get("_target_", "") if hasattr(node, "get") else ""
    return target if isinstance(target, str) else getattr(target, "__qualname__", str(target))


def architecture(cfg) -> str:
    """The detector a LazyConfig builds, by its meta-architecture and heads: "mask_rcnn", "cascade_mask_rcnn",
    "keypoint_rcnn", "panoptic_fpn", "retinanet", "fcos", or the meta-architecture's class name."""
    model = cfg.model
    meta = _target_name(model).rsplit(".", 1)[-1]
    if meta == "PanopticFPN":
        return "panoptic_fpn"
    if meta in ("RetinaNet", "FCOS"):
        return meta.lower()
    if meta == "GeneralizedRCNN":
        heads = model.get("roi_heads", {})
        if "Cascade" in _target_name(heads):
            return "cascade_mask_rcnn"
        return "keypoint_rcnn" if "keypoint_head" in heads else "mask_rcnn"
    return meta or "?"


def load_weights(model: nn.Module, path: str, config_name: str = "the config") -> None:
    """Load ``path`` into ``model``; every model tensor must come from it.

    Raises:
        CheckpointMismatchError: the checkpoint does not fit (one line: how many tensors differ in
            shape, are missing or are extra, the first few named).
        FileNotFoundError: no such file.
    """
    from .zoo import load_fitting

    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError("checkpoint {!r}: no such file (cwd: {})".format(path, os.getcwd()))
    load_fitting(model, path, config_name, hint="pass the config it was trained with (a published file names it "
                 "in its afa_d2_metadata)")


def build_model(cfg, weights: Optional[str] = None, device: str = "cpu", seed: Optional[int] = 0,
                config_name: str = "the config") -> nn.Module:
    """The config's model in eval mode on ``device``: ``weights`` loaded, else random (seeded).

    Args:
        cfg: a LazyConfig or yacs ``CfgNode`` (:func:`load_any_config`).
        weights (str or None): a checkpoint path or URL (see :func:`load_weights`); None: random.
        device (str): e.g. "cpu".
        seed (int or None): the RNG seed of the random initialisation (None: the global RNG as it is).
        config_name (str): how errors name the config.
    """
    if seed is not None:
        torch.manual_seed(seed)
    if is_yacs(cfg):
        from detectron2.modeling import build_model as build_yacs

        cfg = cfg.clone()
        cfg.MODEL.DEVICE = device
        model = build_yacs(cfg)
    else:
        from detectron2.config import instantiate

        model = instantiate(cfg.model).to(device)
    if weights:
        load_weights(model, weights, config_name)
    return model.eval()
