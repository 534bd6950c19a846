"""A detectron2 detector's inference as plain tensors: what tracing, FLOP counting and export run.

detectron2's meta-architectures each return their detections their own way: ``GeneralizedRCNN`` and
``PanopticFPN`` through ``inference(inputs, do_postprocess=False)`` (Panoptic FPN also returns its semantic
maps, which are dropped here: the instances are the detector's output that every consumer reads),
``RetinaNet`` and ``FCOS`` (``DenseDetector``) through ``forward_inference`` after their head. This module is
the one place that knows those paths (docs/DESIGN.md, "Layers"); the benchmark, the analysis and the export
call it.

Detections are *not* post-processed: boxes are in the (resized, unpadded) input image's pixels, masks are
the mask head's 28x28 probabilities in the box frame, keypoints ``(x, y, score)`` in the input's pixels.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor, nn

__all__ = ["OUTPUT_FIELDS", "TraceableInference", "instance_tensors", "raw_inference", "supports_raw_inference"]

#: the fields of the returned ``Instances`` that are flattened to tensors, in this order, where present
OUTPUT_FIELDS = ("pred_boxes", "scores", "pred_classes", "pred_masks", "pred_keypoints")


def _is_dense_detector(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("forward_inference", "head", "head_in_features", "preprocess_image"))


def supports_raw_inference(model: nn.Module) -> bool:
    """Whether :func:`raw_inference` knows ``model``'s meta-architecture."""
    return _is_dense_detector(model) or hasattr(model, "inference")


def raw_inference(model: nn.Module, batched_inputs: Sequence[Dict[str, Tensor]]) -> List[Instances]:
    """The detections of ``model`` (eval mode) on ``batched_inputs``, one ``Instances`` an image, before
    detectron2's ``detector_postprocess``.

    Raises:
        TypeError: a model that is none of detectron2's meta-architectures named in the module doc.
    """
    if _is_dense_detector(model):  # RetinaNet, FCOS
        images = model.preprocess_image(batched_inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        return model.forward_inference(images, features, model.head(features))
    if hasattr(model, "inference"):  # GeneralizedRCNN; PanopticFPN returns (instances, semantic maps)
        out = model.inference(list(batched_inputs), do_postprocess=False)
        return out[0] if isinstance(out, tuple) else out
    raise TypeError("{} is not a detectron2 meta-architecture with a known inference path (GeneralizedRCNN, "
                    "PanopticFPN, RetinaNet, FCOS)".format(type(model).__name__))


def instance_tensors(inst: Instances) -> Tuple[Tensor, ...]:
    """The tensors of :data:`OUTPUT_FIELDS` that ``inst`` has, in that order (boxes as their (N, 4) tensor)."""
    return tuple(inst.pred_boxes.tensor if k == "pred_boxes" else inst.get(k) for k in OUTPUT_FIELDS if inst.has(k))


class TraceableInference(nn.Module):
    """``forward(image) -> tuple of tensors``: one image (3, H, W), :func:`raw_inference`, the tensors of
    :func:`instance_tensors`. For ``torch.jit.trace`` and fvcore's counters; the wrapped model is the
    submodule ``model``, so module names read ``model.backbone.fpn_lateral2``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not supports_raw_inference(model):
            raise TypeError("{} is not a detectron2 meta-architecture with a known inference path "
                            "(GeneralizedRCNN, PanopticFPN, RetinaNet, FCOS)".format(type(model).__name__))
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        with torch.no_grad():
            return instance_tensors(raw_inference(self.model, [{"image": image}])[0])
