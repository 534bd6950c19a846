"""Run an exported file: :class:`ExportedModel` (one network input, the graph's outputs) and
:func:`run_exported` (an image in its own pixels, detections out, optionally written to files).

**The exported graph.** Input ``image``: Tensor of shape (3, H, W), float32, 0-255, in the model's
``input_format`` (detectron2's default BGR), *not* normalised or padded (the graph does both, as the
model does). Outputs, named in the ONNX file and listed in the metadata of every format, as
detectron2's ``TracingAdapter`` flattens the ``Instances`` (fields sorted by name):

* ``pred_boxes`` (N, 4) float32, XYXY in the input image's pixels (clipped to it by the R-CNNs; RetinaNet
  and FCOS leave them unclipped, as detectron2 does before ``detector_postprocess``, which clips);
* ``pred_classes`` (N,) int64; ``scores`` (N,) float32, sorted by NMS per class, as detectron2 leaves them;
* ``pred_masks`` (N, 1, M, M) float32 (M = 28), Mask R-CNN and Cascade only: mask **probabilities** (the
  sigmoid of the mask head's logits for the predicted class), in the box's frame, *before* pasting into
  the image (:func:`run_exported` pastes them, with detectron2's ``detector_postprocess``). RetinaNet and
  FCOS have no such output (the metadata's ``masks`` is "none"); their ``scores`` are the classifier's
  sigmoid (FCOS: the square root of its product with the centerness);
* ``image_size`` (2,) int64: (H, W) of the input.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

from afa_d2.export.backend import MASK_OUTPUT, METADATA_KEY, ExportError, ExportedSizeError
from afa_d2.export.detections import write_detections
from afa_d2.export.formats import BACKENDS, format_of
from afa_d2.export.inputs import as_model_input, resized_tensor
from afa_d2.export.sizes import describe_sizes, padded_size, served_sizes

__all__ = ["ExportedModel", "run_exported"]


class ExportedModel:
    """An exported file (ONNX via onnxruntime, TorchScript via ``torch.jit.load``) with its metadata.

    Args:
        path (str): a file written by :func:`afa_d2.export.export_model`.
        device (str): TorchScript: where to load it; ONNX: onnxruntime's CPU provider (or CUDA's, when
            ``device`` starts with "cuda" and onnxruntime has it).
    """

    def __init__(self, path: str, device: str = "cpu"):
        path = os.fspath(path)
        self.format = format_of(path)
        if not os.path.isfile(path):
            raise ExportError("exported model {!r}: no such file".format(path))
        self.path = path
        self.device = device
        self.backend = BACKENDS[self.format]
        self.graph, record = self.backend.load(path, device)
        if not record:
            raise ExportError("{!r} has no afa_d2 export metadata ({}): export it with afa_d2.export".format(
                path, METADATA_KEY))
        self.meta: Dict[str, Any] = json.loads(record)

    def check_size(self, height: int, width: int) -> None:
        """ExportedSizeError unless an input of ``height`` x ``width`` pads to a size the graph serves."""
        m = self.meta
        got = padded_size(height, width, m["size_divisibility"], m["square_size"])
        low, high = served_sizes(m)
        if got[0] < low[0] or got[1] < low[1] or (high is not None and (got[0] > high[0] or got[1] > high[1])):
            raise ExportedSizeError(
                "{} serves network inputs with {}; this one is {}x{}, padded to {}x{}. MS-Att's pooling kernels are "
                "constants in a traced graph (the module's doc says when), so export again at {}x{}".format(
                    self.path, describe_sizes(m), height, width, *got, height, width))

    def run_tensor(self, image: Tensor) -> Dict[str, np.ndarray]:
        """The graph's outputs on one network input.

        Args:
            image: Tensor of shape (3, H, W), float 0-255, in the model's format (resized already).

        Returns:
            dict: output name (:attr:`meta` ``["output_names"]``) -> array.
        """
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise ExportError("the exported model takes a (3, H, W) tensor, got {}".format(
                tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__))
        self.check_size(int(image.shape[1]), int(image.shape[2]))
        values = self.backend.run(self.graph, image.to(torch.float32), self.meta, self.device)
        return dict(zip(self.meta["output_names"], values))

    __call__ = run_tensor


def run_exported(
    path: str,
    image: Union[str, os.PathLike, np.ndarray, Tensor],
    output: Optional[str] = None,
    *,
    mask_threshold: float = 0.5,
    device: str = "cpu",
    draw_threshold: float = 0.5,
) -> Dict[str, Any]:
    """Detections of an exported model on one image, in the image's own pixels; optionally written to files.

    The image goes through the test-time resize recorded at export (if any), the exported graph, then
    detectron2's ``detector_postprocess`` (boxes scaled back; masks, where the model has them, pasted and
    thresholded).

    Args:
        path (str): a file written by :func:`afa_d2.export.export_model` (.onnx, .ts, .pt).
        image: an image file (read in the model's format), an (H, W, 3) uint8 BGR array (as cv2 reads it),
            or a (3, H, W) tensor already in the model's format.
        output (str or None): a ``.json`` file to write (:func:`write_detections`), with a ``.png`` beside it.
        mask_threshold (float): probability above which a pasted mask pixel is on (unused without masks).
        draw_threshold (float): the least score of a detection drawn in the picture (:func:`write_detections`).

    Returns:
        dict: ``boxes`` (N, 4) float32 XYXY, ``scores`` (N,), ``classes`` (N,) int64, ``image_size`` (H, W),
        ``class_names``; for a model with masks (Mask / Cascade Mask R-CNN) also ``mask_probs`` (N, M, M)
        float32 (box frame, before pasting) and ``masks`` (N, H, W) bool (pasted). RetinaNet and FCOS
        give boxes, scores and classes only.
    """
    if not 0.0 <= float(mask_threshold) <= 1.0:
        raise ExportError("mask_threshold must be in [0, 1], got {!r}".format(mask_threshold))
    exported = path if isinstance(path, ExportedModel) else ExportedModel(path, device=device)
    meta = exported.meta
    array = original = as_model_input(image, meta["input_format"])
    height, width = int(array.shape[0]), int(array.shape[1])
    tensor = resized_tensor(array, meta.get("resize"))
    dets = _postprocess(exported.run_tensor(tensor), (int(tensor.shape[1]), int(tensor.shape[2])), height, width,
                        float(mask_threshold))
    dets = dict({"class_names": list(meta.get("class_names") or [])}, **dets)
    if output is not None:  # the picture: the image as read above, before the resize, in RGB
        rgb = np.ascontiguousarray(original if meta["input_format"] == "RGB" else original[:, :, ::-1])
        write_detections(dets, output, source=str(getattr(exported, "path", path)), image=rgb,
                         draw_threshold=draw_threshold)
    return dets


def _postprocess(out: Dict[str, np.ndarray], input_size, height: int, width: int,
                 mask_threshold: float) -> Dict[str, Any]:
    """The graph's outputs ``out`` on an input of ``input_size`` (H, W) as detections in a ``height`` x ``width``
    image (detectron2's ``detector_postprocess``): :func:`run_exported`'s dict less ``class_names``."""
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    inst = Instances(input_size)
    inst.pred_boxes = Boxes(torch.as_tensor(out["pred_boxes"]))
    inst.scores = torch.as_tensor(out["scores"])
    inst.pred_classes = torch.as_tensor(out["pred_classes"])
    inst.index = torch.arange(len(inst))  # detector_postprocess drops empty boxes: which ones are kept
    mask_probs = None
    if MASK_OUTPUT in out:
        mask_probs = torch.as_tensor(out[MASK_OUTPUT])
        inst.pred_masks = mask_probs
    result = detector_postprocess(inst, height, width, mask_threshold=mask_threshold)
    dets: Dict[str, Any] = {
        "boxes": result.pred_boxes.tensor.numpy().astype(np.float32),
        "scores": result.scores.numpy().astype(np.float32),
        "classes": result.pred_classes.numpy().astype(np.int64),
        "image_size": (height, width),
    }
    if mask_probs is not None:
        dets["mask_probs"] = mask_probs[result.index][:, 0].numpy().astype(np.float32)
        dets["masks"] = result.pred_masks.numpy().astype(bool)
    return dets
