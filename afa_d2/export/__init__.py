"""Export an afa_d2 detector to ONNX or TorchScript, and run the exported file.

The whole detector (Mask R-CNN, Cascade Mask R-CNN, RetinaNet or FCOS; any aggregation operator) is
traced as detectron2's ``tools/deploy/export_model.py`` traces it: :class:`detectron2.export.TracingAdapter`
around the detector's inference without postprocessing, one image in, flat tensors out. That inference is
:func:`afa_d2.modeling.inference.raw_inference`, the one the benchmark and the analysis run
(``model.inference(inputs, do_postprocess=False)`` for an R-CNN, the head and ``forward_inference`` for
RetinaNet / FCOS). Refused before anything is traced, one line each: Panoptic FPN (the graph would hold its
instances only) and keypoint heads (detectron2's ``heatmaps_to_keypoints`` is a scripted loop that
``torch.onnx`` cannot export).

    from afa_d2 import export
    info = export.export_config("shapes/mask_rcnn_R_18_msca.py", "out/model.onnx", weights="model_final.pth",
                                height=480, width=640)                       # or export.export_model(model, ...)
    dets = export.run_exported("out/model.onnx", "image.jpg", output="out/dets.json")   # + out/dets.png

**The exported graph.** Input ``image``: Tensor of shape (3, H, W), float32, 0-255, in the model's
``input_format`` (detectron2's default BGR), *not* normalised or padded (the graph does both, as the
model does). Outputs, named in the ONNX file and listed in the metadata of both formats, as
:class:`detectron2.export.TracingAdapter` flattens the ``Instances`` (fields sorted by name):

* ``pred_boxes`` (N, 4) float32, XYXY in the input image's pixels (clipped to it by the R-CNNs; RetinaNet
  and FCOS leave them unclipped, as detectron2 does before ``detector_postprocess``, which clips);
* ``pred_classes`` (N,) int64; ``scores`` (N,) float32, sorted by NMS per class, as detectron2 leaves them;
* ``pred_masks`` (N, 1, M, M) float32 (M = 28), Mask R-CNN and Cascade only: mask **probabilities** (the
  sigmoid of the mask head's logits for the predicted class), in the box's frame, *before* pasting into
  the image (:func:`run_exported` pastes them, with detectron2's ``detector_postprocess``). RetinaNet and
  FCOS have no such output (the metadata's ``masks`` is "none"); their ``scores`` are the classifier's
  sigmoid (FCOS: the square root of its product with the centerness);
* ``image_size`` (2,) int64: (H, W) of the input.

**Attention.** MS-Att's kernels fall back to the plain ops while tracing or exporting
(:func:`afa_d2.modeling.kernels._special_mode`: ``torch.jit.is_tracing()`` is true under both
``torch.jit.trace`` and the TorchScript-based ``torch.onnx.export``), so attention is exported as
``scaled_dot_product_attention``, which the ONNX exporter writes as MatMul / Softmax / MatMul (opset
17 has no Attention op) and onnxruntime runs; the host-measured 1x1-convolution kernels never enter
a graph, whatever ``AFA_D2_KERNELS`` says (``tests/test_export.py`` checks both).

**RoIAlign and the opset.** detectron2's exporter pins opset 11 (``STABLE_ONNX_OPSET_VERSION``), where
ONNX RoiAlign only has the legacy ``output_half_pixel`` sampling grid. detectron2's poolers use
``ROIAlign(aligned=True)`` (torchvision's ``roi_align(..., aligned=True)``: the box is shifted by -0.5
pixel before sampling); torchvision's opset-11 symbolic only warns about it and exports the unshifted
grid, so every pooled feature is sampled half a feature pixel off (a max error of about 3 on unit-variance
features, measured; ``tests/test_export.py``). From opset 16 ONNX RoiAlign has
``coordinate_transformation_mode="half_pixel"``, and torchvision's opset-16 symbolic writes it for
``aligned=True``: onnxruntime's CPU RoiAlign then equals torchvision's, bit for bit in the test, for the
adaptive sampling ratio (0, detectron2's default) and fixed ones, tiny and zero-size boxes included.
So this module exports at opset :data:`DEFAULT_OPSET` (17: also ONNX's LayerNormalization, MS-Att's
three LayerNorms as one node each) and refuses anything below :data:`MIN_OPSET`; the box, score and
mask outputs are compared with PyTorch's in the tests (within 1e-3).

**Input sizes: one graph for every padded size from a minimum up.** The graph declares H and W
dynamic, and tracing keeps them so: AttentionFPN's operators pass the map sizes on as they are
(``lateral.shape[-2]``, no ``int()``) to ``Up`` (resized to ``F_i``'s exact size), to MS-Att's token
reshapes and to the DW-MLP's (N, H, W, C) view, and everything from detectron2 (padding, anchors,
proposals, RoI heads, the number of detections) is dynamic as well. What tracing does fix is MS-Att's
pooling kernels, ``min(r, H)`` per axis (an int, as ``avg_pool2d`` needs): they are ``r`` on every map at
least ``r`` wide, so the graph equals PyTorch for every input whose padded size puts each level's map at
or above its largest pooling stride, ``max(r) * level stride``, over the levels of the neck
(``backbone.levels``) that have an MS-Att block: 128x128 for the shipped strides 16, 8, 4, 2 on p2-p5 with
multi-scale pooling (32 x 4 on p2), and 128x128 too for RetinaNet's and FCOS's p3-p5 with 8, 4, 2 (16 x 8 on
p3, 8 x 16 on p4, 4 x 32 on p5). Their p6 / p7 come from ``LastLevelP6P7``'s stride-2 convolutions, which
take any size, and their anchors, per-level candidates and NMS are dynamic, so the p3 start changes
nothing else. An export at 97x131 (padded 128x160) equals PyTorch at 150x203, at 160x128 and at 250x300
(tested; RetinaNet and FCOS at 150x203). :func:`export_model` records that minimum; a graph traced on a
sample below it (its kernels were clamped), one with ``pooling="adaptive"`` (the output grid is fixed) and
one with a ``square_size`` pad serve only the sample's padded size, as before. :class:`ExportedModel`
checks the size first and raises :class:`ExportedSizeError`, one line naming both sizes and what to do;
the TorchScript file carries the same check in its own (scripted) forward, for users who load it
without afa_d2. Files written before this rule carry no minimum and keep their one padded size.

**RetinaNet's and FCOS's candidates on detectron2 v0.6.** Each pyramid level keeps at most
``test_topk_candidates`` boxes above the score threshold before NMS. v0.6 takes
``min(topk_candidates, count)`` in Python, which a trace freezes to whichever won on the sample: a graph
traced where a level had fewer candidates than the cap keeps every candidate of that level on a larger
input (measured on the tests' tiny FCOS with a cap of 300: 873 detections against PyTorch's 753 at
150x203). Later detectron2 clamps the traced count instead; :func:`_traceable_min` does the same on v0.6
while tracing (``tests/test_export.py`` exports where a level is under the cap and runs where it is over).

**Near-tied scores.** Two detections whose scores differ by float rounding can come out of NMS in either
order, in PyTorch and in onnxruntime alike (onnxruntime's scores differ from PyTorch's by up to about 2e-7
in the tests); with a hundred detections of a random RetinaNet or FCOS, whose scores crowd around the
head's prior, a swapped pair turns up. The check of an export (``verify``) and the tests compare detection
by detection after :func:`align_detections`, which pairs the detections within such a tie by class and
box; everything else is compared in place. What no pairing can undo: where a hard cut (a level's top-k,
the score threshold) falls between two candidates that close, either may be kept. The tests' random heads
put such candidates 1e-8 apart at a cut of 200 on a level, but far below the 100 best, so the output is
the same; they compare a thousand detections only for TorchScript, which equals PyTorch bit for bit.

**Metadata.** Both formats carry a JSON record (``afa_d2_export``: ONNX ``metadata_props``, a
TorchScript extra file): output names, input format, the sample's padded size, the padded sizes the graph
serves (``min_padded_size``, ``max_padded_size``: null for no limit) and the range of H, W it takes,
the config's test-time resize (when exported from a config: :func:`run_exported` applies it, as
:class:`afa_d2.predictor.Predictor` does), the operators per level, what the model is
(``meta_architecture``: GeneralizedRCNN, RetinaNet or FCOS; ``head``: the class that makes the detections,
the RoI heads of an R-CNN or RetinaNet's / FCOS's dense head; ``roi_heads``: null for RetinaNet and FCOS),
whether it has masks (``masks``).

**TracingAdapter on the registry copy.** detectron2 v0.6's ``detectron2/export/__init__.py`` imports
``export/api.py``, which imports ``caffe2`` (gone from PyTorch), so ``from detectron2.export import
TracingAdapter`` fails there although ``export/flatten.py`` (the adapter) needs nothing of it; later
official versions import caffe2 only if present. :func:`tracing_adapter_class` imports ``flatten.py``
without running that ``__init__`` on such a build, and leaves ``detectron2.export`` itself as it was.

Optional dependencies: ``onnx`` and ``onnxruntime`` (``pip install 'afa_d2[export]'``); without them
the ONNX functions raise :class:`MissingExportDependencyError`, one line. TorchScript needs nothing more.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union
from unittest import mock

import numpy as np
import torch
from torch import Tensor, nn

from afa_d2.modeling.inference import raw_inference, supports_raw_inference

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "INSTALL_HINT",
    "MAX_OPSET",
    "METADATA_KEY",
    "MIN_OPSET",
    "ExportError",
    "ExportInfo",
    "ExportedModel",
    "ExportedSizeError",
    "MissingExportDependencyError",
    "align_detections",
    "export_config",
    "export_model",
    "format_of",
    "load_model",
    "describe_sizes",
    "graph_size_limits",
    "padded_size",
    "read_image",
    "run_exported",
    "tracing_adapter_class",
    "write_detections",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".pt": "torchscript"}
DEFAULT_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
DEFAULT_OPSET = 17
MIN_OPSET = 17
MAX_OPSET = 20  # torch's TorchScript-based ONNX exporter stops at 20
METADATA_KEY = "afa_d2_export"
INSTALL_HINT = "pip install 'afa_d2[export]'"
INPUT_NAME = "image"
MASK_OUTPUT = "pred_masks"


class ExportError(ValueError):
    """A bad argument or input of the export or the runner (one line, naming the bad value)."""


class ExportedSizeError(ExportError):
    """An input whose padded size is not the one the exported graph was traced at."""


class MissingExportDependencyError(ImportError):
    """onnx / onnxruntime is not installed."""


def _require(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExportDependencyError(
            "{} needs the {} package, which is not installed ({}): {}".format(what, module, e, INSTALL_HINT)
        ) from None


# --------------------------------------------------------------------------------------- tracing
def tracing_adapter_class() -> type:
    """detectron2's :class:`~detectron2.export.TracingAdapter`, on an official build and on the registry copy.

    The registry copy's ``detectron2.export`` package fails to import (its ``api.py`` needs caffe2);
    then ``detectron2/export/flatten.py`` is imported as a submodule of a bare package object (its
    folder as ``__path__``, the ``__init__`` not run), and ``detectron2.export`` is left out of
    ``sys.modules`` again, as the failed import left it.
    """
    try:
        from detectron2.export import TracingAdapter

        return TracingAdapter
    except ImportError as e:
        if not str(getattr(e, "name", "") or "").startswith("caffe2"):
            raise
    import detectron2

    name = "detectron2.export"
    flatten = sys.modules.get(name + ".flatten")
    if flatten is None:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
        sys.modules[name] = importlib.util.module_from_spec(spec)
        try:
            flatten = importlib.import_module(name + ".flatten")
        finally:
            sys.modules.pop(name, None)
    return flatten.TracingAdapter


def _inference(model: nn.Module, inputs):
    """The traced function: :func:`afa_d2.modeling.inference.raw_inference` (detections before
    ``detector_postprocess``: boxes in the input's pixels, an R-CNN's 28x28 mask probabilities)."""
    return [{"instances": raw_inference(model, inputs)[0]}]


def _identity_scale_gradient(x: Tensor, scale: float) -> Tensor:
    return x


def _traceable_min(*args, **kwargs):
    """Python's ``min``, except that ``min(int, traced size)`` is ``torch.clamp(size, max=int)``.

    detectron2 v0.6's ``DenseDetector._decode_per_level_predictions`` keeps
    ``min(topk_candidates, topk_idxs.size(0))`` candidates a level. While tracing, the size is a
    0-dim tensor, and ``min`` compares it with the int in Python: the graph keeps whichever won on the
    sample, either the constant (right) or the sample's count with no cap (wrong on an input with more
    candidates than ``topk_candidates``). Later detectron2 clamps the traced size instead, which is what
    this returns; anything else goes to ``min`` unchanged.
    """
    if len(args) == 2 and not kwargs:
        a, b = args
        if isinstance(b, Tensor) and isinstance(a, int) and not isinstance(a, bool):
            return torch.clamp(b, max=a)
        if isinstance(a, Tensor) and isinstance(b, int) and not isinstance(b, bool):
            return torch.clamp(a, max=b)
    return min(*args, **kwargs)


@contextmanager
def _inference_graph() -> Iterator[None]:
    """What a traced inference graph must not contain, replaced by what it computes forward.

    * detectron2 v0.6's ``CascadeROIHeads._run_stage`` calls the autograd Function ``_ScaleGradient``
      (identity forward, gradient scaled by 1 / stages backward) at inference too; tracing keeps it as a
      Python op, which ``torch.onnx.export`` inlines but TorchScript cannot script or save. While tracing
      it is the identity (later detectron2 calls it only in training, so nothing changes there).
    * RetinaNet's and FCOS's per-level top-k (``detectron2.modeling.meta_arch.dense_detector``): that
      module's ``min`` is :func:`_traceable_min` while tracing, so the cap on candidates stays in the
      graph on detectron2 v0.6 as it does on later versions (where the module's ``min`` only ever sees
      ints, so the stand-in changes nothing).
    """
    with ExitStack() as stack:
        try:
            from detectron2.modeling.roi_heads import cascade_rcnn
        except ImportError:
            cascade_rcnn = None
        if hasattr(cascade_rcnn, "_ScaleGradient"):
            stack.enter_context(mock.patch.object(cascade_rcnn._ScaleGradient, "apply", _identity_scale_gradient))
        try:
            from detectron2.modeling.meta_arch import dense_detector
        except ImportError:
            dense_detector = None
        if dense_detector is not None:
            stack.enter_context(mock.patch.object(dense_detector, "min", _traceable_min, create=True))
        yield


def _output_names(schema) -> List[str]:
    """Names of the flattened outputs of ``[{"instances": Instances}]``: the fields, sorted, then "image_size"."""
    try:
        inst = schema.schemas[0].schemas[0]
        keys = list(inst.keys)
        assert all(s == 1 for s in inst.sizes), inst.sizes
    except (AttributeError, IndexError, AssertionError) as e:
        raise ExportError("unexpected output structure of the traced model: {} ({})".format(schema, e)) from None
    return keys + ["image_size"]


class _SizeChecked(nn.Module):
    """A traced detector behind a scripted size check: the padded sizes the graph serves (see the module's doc)."""

    def __init__(self, traced: nn.Module, min_size: List[int], max_size: Optional[List[int]], divisibility: int,
                 square: int):
        super().__init__()
        self.traced = traced
        self.min_h, self.min_w = int(min_size[0]), int(min_size[1])
        self.max_h, self.max_w = (-1, -1) if max_size is None else (int(max_size[0]), int(max_size[1]))
        self.divisibility = max(1, divisibility)
        self.square = square

    def forward(self, image: Tensor):
        h = image.shape[-2]
        w = image.shape[-1]
        ph = self.square if self.square > 0 else h
        pw = self.square if self.square > 0 else w
        ph = (ph + self.divisibility - 1) // self.divisibility * self.divisibility
        pw = (pw + self.divisibility - 1) // self.divisibility * self.divisibility
        if ph < self.min_h or pw < self.min_w or (self.max_h > 0 and (ph > self.max_h or pw > self.max_w)):
            if self.max_h > 0:
                serves = "images padded to {}x{} (H in {}..{}, W in {}..{})".format(
                    self.max_h, self.max_w, self.max_h - self.divisibility + 1, self.max_h,
                    self.max_w - self.divisibility + 1, self.max_w)
            else:
                serves = "images padded to at least {}x{} (H, W >= {}, {})".format(
                    self.min_h, self.min_w, self.min_h - self.divisibility + 1, self.min_w - self.divisibility + 1)
            raise ValueError(
                "this TorchScript detector serves {}; got {}x{}, padded to {}x{}: MS-Att's pooling kernels are "
                "constants in the traced graph, so export it again at this size (afa_d2.export)".format(
                    serves, h, w, ph, pw))
        return self.traced(image)


# --------------------------------------------------------------------------------------- sizes
def _padding(model: nn.Module) -> Tuple[int, int]:
    """(size_divisibility, square_size) that ``model.preprocess_image`` pads with."""
    import inspect

    from detectron2.structures import ImageList

    div = int(getattr(model.backbone, "size_divisibility", 0) or 0)
    square = 0
    if "padding_constraints" in inspect.signature(ImageList.from_tensors).parameters:  # detectron2 after v0.6
        constraints = getattr(model.backbone, "padding_constraints", None) or {}
        div = int(constraints.get("size_divisibility", div) or 0)
        square = int(constraints.get("square_size", 0) or 0)
    return div, square


def padded_size(height: int, width: int, divisibility: int, square: int = 0) -> Tuple[int, int]:
    """The (H, W) an image of ``height`` x ``width`` is padded to, as detectron2's ``ImageList.from_tensors``.

    Args:
        height, width: the input's size.
        divisibility: the backbone's ``size_divisibility`` (32 for AttentionFPN on a ResNet).
        square: ``padding_constraints["square_size"]`` (0: none).
    """
    if square > 0:
        height = width = square
    if divisibility > 1:
        height = -(-height // divisibility) * divisibility
        width = -(-width // divisibility) * divisibility
    return height, width


def _size_range(padded: int, divisibility: int, square: int) -> Tuple[int, int]:
    if square > 0:
        return 1, square
    return (padded - divisibility + 1, padded) if divisibility > 1 else (padded, padded)


def graph_size_limits(model: nn.Module, padded: Tuple[int, int], divisibility: int,
                      square: int = 0) -> Tuple[List[int], Optional[List[int]]]:
    """The padded sizes a graph traced at ``padded`` equals ``model`` at: (smallest (H, W), largest or None).

    None means no upper limit: every padded size whose maps are at least as wide as each MS-Att
    level's largest pooling stride (see the module's doc). The sample's own size only (both limits
    ``padded``) when the sample was below that, with adaptive pooling, or with a square pad.
    """
    exact = [int(padded[0]), int(padded[1])]
    if square > 0:
        return exact, exact
    need = 1
    backbone = model.backbone
    for level in getattr(backbone, "levels", []):
        attn = getattr(getattr(backbone, "fpn_aggregation{}".format(level[1:]), None), "attn", None)
        if attn is None:
            continue
        side = attn.unclamped_size  # the smallest map whose pooling kernels are the strides; None: adaptive
        if side is None:
            return exact, exact
        need = max(need, side * 2 ** int(level[1:]))
    need = padded_size(need, need, divisibility)[0]
    if exact[0] < need or exact[1] < need:  # the sample's maps clamped a pooling kernel
        return exact, exact
    return [need, need], None


def _served_sizes(meta: Dict[str, Any]) -> Tuple[List[int], Optional[List[int]]]:
    """(smallest, largest or None) padded size an export serves, from its metadata; a file written before
    the minimum was recorded serves its one padded size."""
    if "min_padded_size" in meta:
        return meta["min_padded_size"], meta["max_padded_size"]
    return meta["padded_size"], meta["padded_size"]


def describe_sizes(meta: Dict[str, Any]) -> str:
    """The inputs an export serves, in words, from its metadata (an :class:`ExportInfo`'s, or a file's)."""
    low, high = _served_sizes(meta)
    (h0, h1), (w0, w1) = meta["height_range"], meta["width_range"]
    if high is not None and list(low) == list(high):
        return "H in {}..{}, W in {}..{} (padded to {}x{})".format(h0, h1, w0, w1, *high)
    return "any H >= {}, W >= {} (padded to at least {}x{})".format(h0, w0, *low)


# --------------------------------------------------------------------------------------- images
def read_image(path: str, input_format: str = "BGR") -> np.ndarray:
    """:func:`afa_d2.data.read_image`, its error as :class:`ExportError` (the runner's one error type)."""
    from afa_d2.data import ImageReadError
    from afa_d2.data import read_image as read

    try:
        return read(path, input_format)
    except ImageReadError as err:
        raise ExportError(str(err)) from None


def _as_model_input(image: Union[str, os.PathLike, np.ndarray, Tensor], input_format: str) -> np.ndarray:
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


def _resize_aug(resize: Optional[Dict[str, Any]]):
    if not resize:
        return None
    from detectron2.data import transforms as T

    return T.ResizeShortestEdge(resize["short_edge_length"], resize["max_size"], sample_style="choice")


def _test_resize(cfg) -> Optional[Dict[str, Any]]:
    """The config's test-time ResizeShortestEdge as a record, None without one; ExportError for
    other augmentations (the runner could not repeat them)."""
    from detectron2.config import instantiate
    from detectron2.data import transforms as T

    try:
        augs = cfg.dataloader.test.mapper.get("augmentations", None)
    except Exception:  # no dataloader.test in this config
        return None
    if not augs:
        return None
    built = [instantiate(a) for a in augs]
    if len(built) != 1 or not isinstance(built[0], T.ResizeShortestEdge):
        raise ExportError("the config's test augmentations {} are not one ResizeShortestEdge; the exported runner "
                          "only repeats that one".format([type(a).__name__ for a in built]))
    aug = built[0]
    lengths = [int(v) for v in aug.short_edge_length]
    if len(set(lengths)) != 1:
        raise ExportError("the config's test ResizeShortestEdge picks a random short edge from {}; the exported "
                          "runner needs one size".format(lengths))
    return {"short_edge_length": lengths[:1], "max_size": int(aug.max_size)}


# --------------------------------------------------------------------------------------- models
def load_model(config, weights: Optional[str] = None, overrides: Sequence[str] = (), *,
               device: str = "cpu") -> Tuple[nn.Module, Any]:
    """Build a config's model in eval mode and load its weights, refusing a checkpoint that does not fit.

    Args:
        config (str or LazyConfig): a zoo name ("shapes/mask_rcnn_R_18_msca.py"), a LazyConfig file,
            or a loaded LazyConfig.
        weights (str or None): a checkpoint path or URL; None: the config's ``train.init_checkpoint``
            ("" there: random weights, with a warning).
        overrides (list[str]): ``key=value`` config overrides (checked against the config's keys).
        device (str): where to build the model.

    Returns:
        (model, cfg).

    Raises:
        afa_d2.model_zoo.CheckpointMismatchError: one line, the tensors that differ in shape, are
            missing, or are not in the model.
    """
    from afa_d2.engine import apply_overrides
    from afa_d2.model_zoo.build import build_model, load_any_config

    if isinstance(config, (str, os.PathLike)):
        name = os.fspath(config)
        cfg = load_any_config(name, list(overrides))
    else:
        cfg = apply_overrides(config, list(overrides))
        name = "the given config"
    path = weights if weights is not None else cfg.train.get("init_checkpoint", "")
    if not path:
        logger.warning("Exporting %s with random weights (no --weights, no train.init_checkpoint)", name)
    return build_model(cfg, path or None, device, seed=None, config_name=name), cfg


def _check_exportable(model: nn.Module) -> None:
    """ExportError, one line, for a model :func:`export_model` does not export (see the module's doc), before
    anything is traced."""
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


def _describe_model(model: nn.Module) -> Dict[str, Any]:
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


# --------------------------------------------------------------------------------------- export
@dataclass
class ExportInfo:
    """What :func:`export_model` wrote (also stored in the file, as JSON under :data:`METADATA_KEY`).

    ``max_abs_diff``: output name -> max |exported - PyTorch| on the sample image (empty when not verified).
    """

    path: str
    format: str
    opset: Optional[int]
    input_name: str
    output_names: List[str]
    input_format: str
    sample_size: List[int]
    padded_size: List[int]
    min_padded_size: List[int]
    max_padded_size: Optional[List[int]]
    height_range: List[Optional[int]]
    width_range: List[Optional[int]]
    size_divisibility: int
    square_size: int
    resize: Optional[Dict[str, Any]]
    masks: str
    meta_architecture: str
    head: Optional[str]
    roi_heads: Optional[str]
    operators: Dict[str, str]
    detections_on_sample: int
    class_names: List[str] = field(default_factory=list)
    seconds: float = 0.0
    max_abs_diff: Dict[str, float] = field(default_factory=dict)

    def metadata(self) -> Dict[str, Any]:
        record = asdict(self)
        for key in ("path", "seconds", "max_abs_diff"):
            record.pop(key)
        record["afa_d2_version"] = _version()
        return record


def _version() -> str:
    import afa_d2

    return afa_d2.__version__


def format_of(path: str, format: Optional[str] = None) -> str:
    """The export format of ``path`` from its suffix (.onnx; .ts or .pt), checked against ``format``."""
    suffix = os.path.splitext(path)[1].lower()
    by_suffix = SUFFIXES.get(suffix)
    if format is not None and format not in EXPORT_FORMATS:
        raise ExportError("unknown export format {!r}; valid: {}".format(format, list(EXPORT_FORMATS)))
    if by_suffix is None:
        raise ExportError("{!r}: unknown file suffix {!r}; valid: {} (ONNX: .onnx, TorchScript: .ts or .pt)".format(
            path, suffix, sorted(SUFFIXES)))
    if format is not None and format != by_suffix:
        raise ExportError("{!r} is a {} file name but format={!r}".format(path, by_suffix, format))
    return by_suffix


def _output_path(output: str, format: Optional[str]) -> str:
    if os.path.isdir(output) or output.endswith(os.sep) or not os.path.splitext(output)[1]:
        if format is None:
            raise ExportError("{!r} is a folder: give format ('onnx' or 'torchscript') or a file name".format(output))
        if format not in EXPORT_FORMATS:
            raise ExportError("unknown export format {!r}; valid: {}".format(format, list(EXPORT_FORMATS)))
        return os.path.join(output, DEFAULT_FILES[format])
    return output


def _sample_tensor(sample, height: Optional[int], width: Optional[int], device) -> Tensor:
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


def export_model(
    model: nn.Module,
    output: str,
    *,
    format: Optional[str] = None,
    sample: Optional[Tensor] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    input_format: str = "BGR",
    resize: Optional[Dict[str, Any]] = None,
    verify: bool = True,
    tolerance: float = 1e-3,
    class_names: Sequence[str] = (),
) -> ExportInfo:
    """Trace a detectron2 detector (an afa_d2 Mask / Cascade Mask R-CNN, RetinaNet or FCOS) and write it as
    ONNX or TorchScript.

    Args:
        model: a GeneralizedRCNN (Mask / Cascade Mask R-CNN), RetinaNet or FCOS; put in eval mode for the
            export (its mode and ``requires_grad`` flags are restored after). Panoptic FPN and keypoint
            heads are refused (ExportError, one line, naming why).
        output (str): the file (".onnx"; ".ts" or ".pt"), or a folder (then ``format`` names the file
            ``model.onnx`` / ``model.ts``).
        format (str): "onnx" or "torchscript"; None: from the suffix.
        sample: Tensor of shape (3, H, W), float 0-255 in the model's format, traced; or None with
            ``height`` and ``width`` (a random image of that size). The graph serves inputs padded to
            the sample's padded size (see the module's doc).
        opset (int): ONNX opset, :data:`MIN_OPSET`..:data:`MAX_OPSET`.
        input_format (str): recorded in the metadata ("BGR" / "RGB"), for the runner.
        resize (dict or None): the test-time resize the runner applies first (``{"short_edge_length": [s],
            "max_size": m}``); :func:`export_config` fills it from the config.
        verify (bool): run the written file on the sample and compare with PyTorch (detections paired by
            :func:`align_detections`); ExportError when an output differs by more than ``tolerance`` times
            max(1, its largest magnitude).

    Returns:
        :class:`ExportInfo`.
    """
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            "opset {!r} is not supported: use {}..{}. Below 16 ONNX RoiAlign has no half_pixel mode, so detectron2's "
            "RoIAlign(aligned=True) would be sampled half a pixel off (opset 11 is detectron2's own default); 17 adds "
            "LayerNormalization".format(opset, MIN_OPSET, MAX_OPSET))
    if input_format not in ("BGR", "RGB"):
        raise ExportError("input_format must be 'BGR' or 'RGB', got {!r}".format(input_format))
    path = _output_path(os.fspath(output), format)
    fmt = format_of(path, format)
    if fmt == "onnx":
        onnx = _require("onnx", "ONNX export")
    _check_exportable(model)
    device = next(model.parameters()).device
    image = _sample_tensor(sample, height, width, device)

    div, square = _padding(model)
    ph, pw = padded_size(int(image.shape[1]), int(image.shape[2]), div, square)
    low, high = graph_size_limits(model, (ph, pw), div, square)
    if high is None:
        height_range, width_range = [low[0] - max(div, 1) + 1, None], [low[1] - max(div, 1) + 1, None]
    else:
        height_range, width_range = list(_size_range(ph, div, square)), list(_size_range(pw, div, square))
    adapter = tracing_adapter_class()(model, [{INPUT_NAME: image}], _inference)
    was_training = model.training
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    t0 = time.perf_counter()
    stack = ExitStack()
    try:
        adapter.eval()  # a fresh nn.Module is in training mode; the exporters restore the mode they found
        # Weights without requires_grad while tracing and saving: the graph holds MS-Att's in-place residual
        # adds (chosen without autograd), which a traced forward with autograd on would refuse on weights
        # that require grad. The traced module shares the weights, so it is saved before they are restored.
        model.requires_grad_(False)
        stack.enter_context(_inference_graph())
        with torch.no_grad():
            reference = [t.detach().clone() for t in adapter(image)]
        names = _output_names(adapter.outputs_schema)
        info = ExportInfo(
            path=path, format=fmt, opset=opset if fmt == "onnx" else None, input_name=INPUT_NAME,
            output_names=names, input_format=input_format, sample_size=[int(image.shape[1]), int(image.shape[2])],
            padded_size=[ph, pw], min_padded_size=low, max_padded_size=high, height_range=height_range,
            width_range=width_range, size_divisibility=div, square_size=square, resize=resize,
            masks="probabilities (N, 1, M, M) in the box frame, before pasting" if MASK_OUTPUT in names else "none",
            detections_on_sample=int(reference[0].shape[0]) if reference else 0,
            class_names=[str(c) for c in class_names], **_describe_model(model),
        )
        record = json.dumps(info.metadata(), sort_keys=True)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the constants listed in the module's doc
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
            if fmt == "onnx":
                torch.onnx.export(
                    adapter, (image,), path, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                    output_names=names, do_constant_folding=True,
                    dynamic_axes=dict({INPUT_NAME: {1: "height", 2: "width"}},
                                      **{n: {0: "detections"} for n in names if n != "image_size"}),
                )
            else:
                traced = torch.jit.trace(adapter, (image,), check_trace=False)
                script = torch.jit.script(_SizeChecked(traced, low, high, div, square))
                torch.jit.save(script, path, _extra_files={METADATA_KEY + ".json": record})
    finally:
        stack.close()
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])
    if fmt == "onnx":
        proto = onnx.load(path)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, record
        onnx.save(proto, path)
    info.seconds = time.perf_counter() - t0
    logger.info("Exported %s (%s) in %.1f s: %s", path, fmt, info.seconds, ", ".join(names))
    if verify:
        outputs = align_detections(dict(zip(names, reference)),
                                   ExportedModel(path, device=str(device)).run_tensor(image.cpu()), tolerance)
        for name, ref in zip(names, reference):
            got = torch.as_tensor(outputs[name])
            if got.shape != ref.shape:
                raise ExportError("exported {} gives {} of shape {} on the sample; PyTorch gives {}".format(
                    path, name, tuple(got.shape), tuple(ref.shape)))
            diff = float((got.double() - ref.cpu().double()).abs().max()) if ref.numel() else 0.0
            info.max_abs_diff[name] = diff
            scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
            if diff > tolerance * scale:
                raise ExportError("exported {} differs from PyTorch on the sample: {} max |diff| {:.3g} > {:.3g}".format(
                    path, name, diff, tolerance * scale))
    return info


def align_detections(reference: Dict[str, Any], outputs: Dict[str, Any], tolerance: float = 1e-3) -> Dict[str, Any]:
    """``outputs`` with its detections put in ``reference``'s order where the two differ only in the order of
    near-tied scores.

    Both list their detections by decreasing score (NMS's order), and two detections whose scores are
    within float rounding of each other can come out in either order (the tests' random FCOS swaps a pair
    in onnxruntime at 150x203; see the module's doc). Within each run of reference scores whose neighbours
    are at most ``tolerance`` apart, every reference detection (in order) is paired with the free exported
    one of its class nearest in box and score, its own place first when that is as near; detections
    outside such runs keep their places. Every output whose first dimension is the number of detections
    is reordered alike (masks too).

    Args:
        reference, outputs: output name -> array or tensor (as :meth:`ExportedModel.run_tensor` returns),
            with ``scores`` (N,), ``pred_classes`` (N,) and ``pred_boxes`` (N, 4).
        tolerance (float): scores at most this far apart are tied.

    Returns:
        dict: ``outputs`` reordered (each value of the type it had), or ``outputs`` itself when either has
        no ``scores`` / ``pred_classes`` / ``pred_boxes`` or the numbers of detections differ (a comparison of
        shapes then reports it).
    """
    keys = ("scores", "pred_classes", "pred_boxes")
    if not all(k in reference and k in outputs for k in keys):
        return outputs

    def as_float64(value) -> np.ndarray:
        return np.asarray(torch.as_tensor(value).detach().cpu().double())

    ref_scores, ref_classes, ref_boxes = (as_float64(reference[k]) for k in keys)
    scores, classes, boxes = (as_float64(outputs[k]) for k in keys)
    n = len(ref_scores)
    if len(scores) != n or ref_boxes.shape != boxes.shape:
        return outputs
    order = np.arange(n)
    start = 0
    while start < n:
        end = start + 1
        while end < n and abs(ref_scores[end] - ref_scores[end - 1]) <= tolerance:
            end += 1
        if end - start > 1:  # a run of tied scores: pair by class, box and score
            cost = np.maximum(np.abs(boxes[None, start:end] - ref_boxes[start:end, None]).max(axis=-1),
                              np.abs(scores[None, start:end] - ref_scores[start:end, None]))  # (run, run)
            cost[classes[None, start:end] != ref_classes[start:end, None]] = np.inf
            free = np.ones(end - start, dtype=bool)
            for i in range(end - start):
                row = np.where(free, cost[i], np.inf)
                if free[i] and row[i] <= row.min():
                    j = i
                elif np.isfinite(row.min()):
                    j = int(np.argmin(row))
                else:  # nothing of its class is left: any free one, which the comparison then reports
                    j = int(np.flatnonzero(free)[0])
                free[j] = False
                order[start + i] = start + j
        start = end
    if (order == np.arange(n)).all():
        return outputs
    aligned = dict(outputs)
    for name, value in outputs.items():
        if name != "image_size" and len(getattr(value, "shape", ())) > 0 and value.shape[0] == n:
            aligned[name] = value[torch.as_tensor(order)] if isinstance(value, Tensor) else np.asarray(value)[order]
    return aligned


def export_config(
    config,
    output: str,
    *,
    weights: Optional[str] = None,
    overrides: Sequence[str] = (),
    format: Optional[str] = None,
    sample_image: Union[None, str, np.ndarray] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
    device: str = "cpu",
    verify: bool = True,
) -> ExportInfo:
    """Export a config's model with its checkpoint, as detectron2's ``tools/deploy/export_model.py``.

    The sample (an image file, an (H, W, 3) BGR array, or a random ``height`` x ``width`` image) goes
    through the config's test-time resize first, like every image at inference; the resize is recorded
    and :func:`run_exported` repeats it. Args otherwise as :func:`load_model` and :func:`export_model`.
    """
    model, cfg = load_model(config, weights, overrides, device=device)
    input_format = cfg.model.get("input_format", "BGR")
    resize = _test_resize(cfg)
    if sample_image is not None:
        array = _as_model_input(sample_image, input_format)
    else:
        array = _sample_tensor(None, height, width, "cpu").permute(1, 2, 0).numpy()
    aug = _resize_aug(resize)
    if aug is not None:
        array = aug.get_transform(array).apply_image(array)
    sample = torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1)), dtype=torch.float32)
    return export_model(model, output, format=format, sample=sample, opset=opset, input_format=input_format,
                        resize=resize, verify=verify, class_names=_class_names(cfg))


def _class_names(cfg) -> List[str]:
    """The test dataset's class names (detectron2's metadata ``thing_classes``), or [] where unknown."""
    from detectron2.data import MetadataCatalog

    names = cfg.dataloader.test.dataset.get("names", None) if "test" in cfg.dataloader else None
    if not names:
        return []
    name = names if isinstance(names, str) else names[0]
    return list(MetadataCatalog.get(name).get("thing_classes", None) or [])


# --------------------------------------------------------------------------------------- running
class ExportedModel:
    """An exported file (ONNX via onnxruntime, TorchScript via ``torch.jit.load``) with its metadata.

    Args:
        path (str): a file written by :func:`export_model`.
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
        if self.format == "onnx":
            ort = _require("onnxruntime", "Running an ONNX model")
            onnx = _require("onnx", "Reading an ONNX model's metadata")
            try:
                proto = onnx.load(path, load_external_data=False)
            except Exception as e:
                raise ExportError("{!r} is not a readable ONNX file ({})".format(path, type(e).__name__)) from None
            record = {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY)
            providers = ["CPUExecutionProvider"]
            if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            self.session = ort.InferenceSession(path, providers=providers)
        else:
            extra = {METADATA_KEY + ".json": ""}
            try:
                self.module = torch.jit.load(path, map_location=device, _extra_files=extra)
            except Exception as e:
                raise ExportError("{!r} is not a readable TorchScript file ({}: {})".format(
                    path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")) from None
            raw = extra[METADATA_KEY + ".json"]
            record = raw.decode() if isinstance(raw, bytes) else raw
        if not record:
            raise ExportError("{!r} has no afa_d2 export metadata ({}): export it with afa_d2.export".format(
                path, METADATA_KEY))
        self.meta: Dict[str, Any] = json.loads(record)

    def check_size(self, height: int, width: int) -> None:
        """ExportedSizeError unless an input of ``height`` x ``width`` pads to a size the graph serves."""
        m = self.meta
        got = padded_size(height, width, m["size_divisibility"], m["square_size"])
        low, high = _served_sizes(m)
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
        image = image.to(torch.float32)
        if self.format == "onnx":
            values = self.session.run(self.meta["output_names"], {self.meta["input_name"]: image.cpu().numpy()})
        else:
            with torch.no_grad():
                values = [v.cpu().numpy() for v in self.module(image.to(self.device))]
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
        path (str): a file written by :func:`export_model` (.onnx, .ts, .pt).
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
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    if not 0.0 <= float(mask_threshold) <= 1.0:
        raise ExportError("mask_threshold must be in [0, 1], got {!r}".format(mask_threshold))
    exported = path if isinstance(path, ExportedModel) else ExportedModel(path, device=device)
    meta = exported.meta
    array = _as_model_input(image, meta["input_format"])
    height, width = int(array.shape[0]), int(array.shape[1])
    aug = _resize_aug(meta.get("resize"))
    if aug is not None:
        array = aug.get_transform(array).apply_image(array)
    tensor = torch.as_tensor(np.ascontiguousarray(np.asarray(array).transpose(2, 0, 1)), dtype=torch.float32)
    out = exported.run_tensor(tensor)

    inst = Instances((int(tensor.shape[1]), int(tensor.shape[2])))
    inst.pred_boxes = Boxes(torch.as_tensor(out["pred_boxes"]))
    inst.scores = torch.as_tensor(out["scores"])
    inst.pred_classes = torch.as_tensor(out["pred_classes"])
    inst.index = torch.arange(len(inst))  # detector_postprocess drops empty boxes: which ones are kept
    mask_probs = None
    if MASK_OUTPUT in out:
        mask_probs = torch.as_tensor(out[MASK_OUTPUT])
        inst.pred_masks = mask_probs
    result = detector_postprocess(inst, height, width, mask_threshold=float(mask_threshold))
    if mask_probs is not None:
        mask_probs = mask_probs[result.index]
    dets: Dict[str, Any] = {
        "class_names": list(meta.get("class_names") or []),
        "boxes": result.pred_boxes.tensor.numpy().astype(np.float32),
        "scores": result.scores.numpy().astype(np.float32),
        "classes": result.pred_classes.numpy().astype(np.int64),
        "image_size": (height, width),
    }
    if mask_probs is not None:
        dets["mask_probs"] = mask_probs[:, 0].numpy().astype(np.float32)
        dets["masks"] = result.pred_masks.numpy().astype(bool)
    if output is not None:
        rgb = np.ascontiguousarray(_as_model_input(image, "RGB"))
        write_detections(dets, output, source=str(getattr(exported, "path", path)), image=rgb,
                         draw_threshold=draw_threshold)
    return dets


def _class_name(dets: Dict[str, Any], i: int) -> Optional[str]:
    names = dets.get("class_names") or []
    c = int(dets["classes"][i])
    return names[c] if 0 <= c < len(names) else None


def draw_detections(rgb: np.ndarray, dets: Dict[str, Any]) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with the detections drawn: boxes, masks (when ``dets`` has them),
    "<class name> <score>%" labels."""
    from detectron2.data.catalog import Metadata
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    inst = Instances(tuple(dets["image_size"]))
    inst.pred_boxes = Boxes(torch.as_tensor(dets["boxes"]))
    inst.scores = torch.as_tensor(dets["scores"])
    inst.pred_classes = torch.as_tensor(dets["classes"])
    if dets.get("masks") is not None:
        inst.pred_masks = torch.as_tensor(dets["masks"])
    names = list(dets.get("class_names") or [])
    if not names:  # an export without names: the class numbers
        names = [str(c) for c in range(int(max(dets["classes"], default=-1)) + 1)]
    return Visualizer(rgb, metadata=Metadata(thing_classes=names)).draw_instance_predictions(inst).get_image()


def write_detections(dets: Dict[str, Any], output: str, source: str = "",
                     image: Optional[np.ndarray] = None, draw_threshold: float = 0.5) -> Tuple[str, Optional[str]]:
    """Write :func:`run_exported`'s detections: a JSON file, and pictures beside it.

    JSON: ``image_size``, ``model``, and per detection ``box`` (XYXY), ``score``, ``class`` (and
    ``class_name`` when the export carries the names), and, when ``dets`` has ``masks``, ``mask`` (COCO RLE
    of the pasted mask, ``{"size": [H, W], "counts": str}``). ``<output stem>.png``: the detections drawn on
    ``image`` (an RGB array), boxes, masks if any, class names and scores (detectron2's ``Visualizer``). With masks,
    ``<output stem>_ids.png``: the instance-id map, uint16, pixel = 1 + the index of the highest-scoring
    detection covering it, 0 for none (for programs; it looks black in a viewer).

    Returns:
        (json path, drawing path or None).
    """
    if not str(output).endswith(".json"):
        raise ExportError("the detections file must be a .json file, got {!r}".format(output))
    height, width = dets["image_size"]
    masks = dets.get("masks")
    records = []
    for i in range(len(dets["scores"])):
        rec = {"box": [round(float(v), 3) for v in dets["boxes"][i]], "score": round(float(dets["scores"][i]), 6),
               "class": int(dets["classes"][i])}
        if _class_name(dets, i) is not None:
            rec["class_name"] = _class_name(dets, i)
        if masks is not None:
            from pycocotools import mask as mask_util

            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            rec["mask"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        records.append(rec)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump({"model": source, "image_size": [int(height), int(width)], "detections": records}, f, indent=1)
    drawing = None
    import cv2

    stem = os.path.splitext(output)[0]
    if masks is not None:
        ids = np.zeros((height, width), dtype=np.uint16)
        for i in reversed(np.argsort(dets["scores"], kind="stable")[::-1]):  # the best-scoring last, so on top
            ids[masks[i]] = i + 1
        if not cv2.imwrite(stem + "_ids.png", ids):
            raise ExportError("could not write {!r}".format(stem + "_ids.png"))
    if image is not None:
        drawing = stem + ".png"
        shown = dets["scores"] >= float(draw_threshold)
        kept = {k: (v[shown] if k in ("boxes", "scores", "classes", "masks") else v) for k, v in dets.items()
                if k != "mask_probs"}
        if not cv2.imwrite(drawing, draw_detections(image, kept)[:, :, ::-1]):
            raise ExportError("could not write {!r}".format(drawing))
    return output, drawing
