"""What is traced, and the model as it is traced.

The whole detector is traced as detectron2's ``tools/deploy/export_model.py`` traces it: detectron2's
``TracingAdapter`` (:func:`afa_d2.compat.tracing_adapter_class`) around the detector's inference without
postprocessing, one image in, flat tensors out. That inference is
:func:`afa_d2.modeling.inference.raw_inference`, the one the benchmark and the analysis run. Refused before
anything is traced, one line each (:func:`check_exportable`): Panoptic FPN (the graph would hold its
instances only) and keypoint heads (detectron2's ``heatmaps_to_keypoints`` is a scripted loop that
``torch.onnx`` cannot export).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List

from torch import nn

from afa_d2.compat import cascade_scale_gradient_as_identity, dense_detector_traceable_min
from afa_d2.export.backend import ExportError
from afa_d2.modeling.inference import raw_inference, supports_raw_inference

__all__ = ["check_exportable", "describe_model", "inference_graph", "output_names", "prepared_for_tracing",
           "traced_inference"]


def traced_inference(model: nn.Module, inputs):
    """The traced function: :func:`afa_d2.modeling.inference.raw_inference` (detections before
    ``detector_postprocess``: boxes in the input's pixels, an R-CNN's 28x28 mask probabilities)."""
    return [{"instances": raw_inference(model, inputs)[0]}]


@contextmanager
def inference_graph() -> Iterator[None]:
    """What a traced inference graph must not contain, replaced by what it computes forward: Cascade R-CNN's
    gradient scaling (:func:`afa_d2.compat.cascade_scale_gradient_as_identity`) and detectron2 v0.6's Python
    ``min`` on RetinaNet's and FCOS's per-level candidate count (:func:`afa_d2.compat.dense_detector_traceable_min`)."""
    with cascade_scale_gradient_as_identity(), dense_detector_traceable_min():
        yield


@contextmanager
def prepared_for_tracing(model: nn.Module) -> Iterator[None]:
    """``model`` with its weights frozen, within :func:`inference_graph`; its mode and ``requires_grad`` flags
    are restored after.

    Weights without requires_grad while tracing and saving: the graph holds MS-Att's in-place residual adds
    (chosen without autograd), which a traced forward with autograd on would refuse on weights that require
    grad. The traced module shares the weights, so it must be saved inside this block.
    """
    was_training = model.training
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        model.requires_grad_(False)
        with inference_graph():
            yield
    finally:
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])


def output_names(schema) -> List[str]:
    """Names of the flattened outputs of ``[{"instances": Instances}]``: the fields, sorted, then "image_size"."""
    try:
        inst = schema.schemas[0].schemas[0]
        keys = list(inst.keys)
        assert all(s == 1 for s in inst.sizes), inst.sizes
    except (AttributeError, IndexError, AssertionError) as e:
        raise ExportError("unexpected output structure of the traced model: {} ({})".format(schema, e)) from None
    return keys + ["image_size"]


def check_exportable(model: nn.Module) -> None:
    """ExportError, one line, for a model :func:`afa_d2.export.export_model` does not export (see this module's
    doc), before anything is traced."""
    name = type(model).__name__
    if not hasattr(model, "backbone") or not supports_raw_inference(model):
        raise ExportError("export_model needs a detectron2 GeneralizedRCNN (Mask / Cascade Mask R-CNN), RetinaNet "
                          "or FCOS, got {}".format(name))
    if hasattr(model, "sem_seg_head"):
        raise ExportError("export_model does not export a {}: the graph would hold its instances only, without the "
                          "semantic and panoptic outputs that make it a {}".format(name, name))
    if getattr(getattr(model, "roi_heads", None), "keypoint_on", False):
        raise ExportError("export_model does not export keypoints ({} with {}'s keypoint head): detectron2's "
                          "heatmaps_to_keypoints is a scripted loop that torch.onnx cannot export (advanced indexing "
                          "on a tensor of unknown rank), and run_exported reads no keypoints".format(
                              name, type(model.roi_heads).__name__))


def describe_model(model: nn.Module) -> Dict[str, Any]:
    """The metadata's description of ``model``: its meta-architecture, the head that makes its detections
    (the RoI heads of an R-CNN, the dense head of RetinaNet / FCOS), its RoI heads (None for a one-stage
    detector) and the operator of every pyramid level."""
    backbone = getattr(model, "backbone", None)
    roi_heads = getattr(model, "roi_heads", None)
    head = roi_heads if roi_heads is not None else getattr(model, "head", None)
    return {
        "meta_architecture": type(model).__name__,
        "head": type(head).__name__ if head is not None else None,
        "roi_heads": type(roi_heads).__name__ if roi_heads is not None else None,
        "operators": dict(getattr(backbone, "level_ops", {}) or {}),
    }
