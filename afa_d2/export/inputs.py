"""The images an export traces and its runner runs: files, arrays or tensors in the model's format, the
config's test-time resize, and the sample drawn when none is given."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

from afa_d2.export.backend import ExportError

__all__ = ["as_model_input", "config_resize", "read_image", "resize_aug", "resized_tensor", "sample_tensor"]


def read_image(path: str, input_format: str = "BGR") -> np.ndarray:
    """:func:`afa_d2.data.read_image`, its error as :class:`ExportError` (the runner's one error type)."""
    from afa_d2.data import ImageReadError
    from afa_d2.data import read_image as read

    try:
        return read(path, input_format)
    except ImageReadError as err:
        raise ExportError(str(err)) from None


def as_model_input(image: Union[str, os.PathLike, np.ndarray, Tensor], input_format: str) -> np.ndarray:
    """(H, W, 3) uint8-valued array in the model's format from a file, a cv2-style BGR array, or a
    (3, H, W) tensor already in the model's format."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image), input_format)
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ExportError("image tensor has shape {}; expected (3, H, W) in the model's format".format(
                tuple(image.shape)))
        return image.detach().cpu().permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ExportError("image array has shape {}; expected (H, W, 3), BGR as cv2 reads it".format(image.shape))
        return image[:, :, ::-1] if input_format == "RGB" else image
    raise ExportError("image must be a file path, an (H, W, 3) BGR array or a (3, H, W) tensor, got {}".format(
        type(image).__name__))


def resize_aug(resize: Optional[Dict[str, Any]]):
    """detectron2's ``ResizeShortestEdge`` of a recorded resize (:func:`config_resize`), None without one."""
    if not resize:
        return None
    from detectron2.data import transforms as T

    return T.ResizeShortestEdge(resize["short_edge_length"], resize["max_size"], sample_style="choice")


def resized_tensor(array: np.ndarray, resize: Optional[Dict[str, Any]]) -> Tensor:
    """The graph's input for an (H, W, 3) image already in the model's format: the recorded test-time
    ``resize`` (:func:`config_resize`) applied as the config's test loader applies it
    (:func:`afa_d2.model_zoo.build.test_time_input`), as a float32 (3, H', W') tensor."""
    from afa_d2.model_zoo.build import test_time_input

    aug = resize_aug(resize)
    inputs, _ = test_time_input(np.asarray(array), [aug] if aug is not None else [], "BGR", "BGR")
    return inputs["image"].float()


def config_resize(cfg) -> Optional[Dict[str, Any]]:
    """The config's test-time ResizeShortestEdge as a record, None without one; ExportError for
    other augmentations (the runner could not repeat them)."""
    from detectron2.data import transforms as T

    from afa_d2.model_zoo.build import inference_augmentations

    built = inference_augmentations(cfg)
    if not built:
        return None
    if len(built) != 1 or not isinstance(built[0], T.ResizeShortestEdge):
        raise ExportError("the config's test augmentations {} are not one ResizeShortestEdge; the exported runner "
                          "only repeats that one".format([type(a).__name__ for a in built]))
    aug = built[0]
    lengths = [int(v) for v in aug.short_edge_length]
    if len(set(lengths)) != 1:
        raise ExportError("the config's test ResizeShortestEdge picks a random short edge from {}; the exported "
                          "runner needs one size".format(lengths))
    return {"short_edge_length": lengths[:1], "max_size": int(aug.max_size)}


def sample_tensor(sample, height: Optional[int], width: Optional[int], device) -> Tensor:
    """The image to trace: ``sample`` checked, or a random ``height`` x ``width`` one (seed 0), float 0-255."""
    if sample is not None:
        if not isinstance(sample, Tensor) or sample.dim() != 3 or sample.shape[0] != 3:
            raise ExportError("sample must be a (3, H, W) tensor in the model's format, got {}".format(
                tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__))
        return sample.to(device=device, dtype=torch.float32)
    if height is None or width is None:
        raise ExportError("give a sample image or both height and width (got height={!r}, width={!r})".format(
            height, width))
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ExportError("{} must be a positive int, got {!r}".format(name, v))
    g = torch.Generator().manual_seed(0)
    return (torch.rand(3, height, width, generator=g) * 255).to(device)
