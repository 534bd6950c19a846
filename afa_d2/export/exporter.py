"""Export a detector (:func:`export_model`) or a config's model with its checkpoint (:func:`export_config`).

**Metadata.** Every format carries a JSON record (:data:`~afa_d2.export.backend.METADATA_KEY`, written by
the backend: ONNX ``metadata_props``, a TorchScript extra file), :class:`ExportInfo` less the path, the time
and the check: output names, input format, the sample's padded size, the padded sizes the graph serves
(``min_padded_size``, ``max_padded_size``: null for no limit; :mod:`afa_d2.export.sizes`) and the range of
H, W it takes, the config's test-time resize (when exported from a config: :func:`afa_d2.export.run_exported`
applies it, as :class:`afa_d2.predictor.Predictor` does), the operators per level, what the model is
(``meta_architecture``: GeneralizedRCNN, RetinaNet or FCOS; ``head``: the class that makes the detections,
the RoI heads of an R-CNN or RetinaNet's / FCOS's dense head; ``roi_heads``: null for RetinaNet and FCOS),
whether it has masks (``masks``).
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from afa_d2.compat import tracing_adapter_class
from afa_d2.export.align import align_detections
from afa_d2.export.backend import INPUT_NAME, MASK_OUTPUT, ExportBackend, ExportError
from afa_d2.export.formats import BACKENDS, format_of, output_path
from afa_d2.export.inputs import as_model_input, config_resize, resized_tensor, sample_tensor
from afa_d2.export.onnx import DEFAULT_OPSET, check_opset
from afa_d2.export.runner import ExportedModel
from afa_d2.export.sizes import graph_sizes
from afa_d2.model_zoo.build import input_format as config_input_format
from afa_d2.export.tracing import (check_exportable, describe_model, output_names, prepared_for_tracing,
                                   traced_inference)

__all__ = ["ExportInfo", "export_config", "export_model", "load_model"]

logger = logging.getLogger(__name__)


@dataclass
class ExportInfo:
    """What :func:`export_model` wrote (also stored in the file, as JSON under ``METADATA_KEY``).

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
        format (str): a name of :data:`afa_d2.export.formats.BACKENDS` ("onnx", "torchscript"); None: from the
            suffix.
        sample: Tensor of shape (3, H, W), float 0-255 in the model's format, traced; or None with
            ``height`` and ``width`` (a random image of that size). The graph serves inputs padded to
            the sample's padded size and, mostly, larger ones (:mod:`afa_d2.export.sizes`).
        opset (int): ONNX opset, ``MIN_OPSET``..``MAX_OPSET`` (:mod:`afa_d2.export.onnx`).
        input_format (str): recorded in the metadata ("BGR" / "RGB"), for the runner.
        resize (dict or None): the test-time resize the runner applies first (``{"short_edge_length": [s],
            "max_size": m}``); :func:`export_config` fills it from the config.
        verify (bool): run the written file on the sample and compare with PyTorch (detections paired by
            :func:`afa_d2.export.align_detections`); ExportError when an output differs by more than
            ``tolerance`` times max(1, its largest magnitude).

    Returns:
        :class:`ExportInfo`.
    """
    check_opset(opset)
    if input_format not in ("BGR", "RGB"):
        raise ExportError("input_format must be 'BGR' or 'RGB', got {!r}".format(input_format))
    path = output_path(os.fspath(output), format)
    backend = BACKENDS[format_of(path, format)]
    backend.check_available()
    check_exportable(model)
    device = next(model.parameters()).device
    image = sample_tensor(sample, height, width, device)

    adapter = tracing_adapter_class()(model, [{INPUT_NAME: image}], traced_inference)
    t0 = time.perf_counter()
    with prepared_for_tracing(model):
        adapter.eval()  # a fresh nn.Module is in training mode; the exporters restore the mode they found
        with torch.no_grad():
            reference = [t.detach().clone() for t in adapter(image)]
        info = _describe_export(model, backend, path, output_names(adapter.outputs_schema), image, reference,
                                opset=opset, input_format=input_format, resize=resize, class_names=class_names)
        record = json.dumps(info.metadata(), sort_keys=True)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the constants of afa_d2.export.sizes
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
            backend.write(adapter, image, info, record)
    info.seconds = time.perf_counter() - t0
    logger.info("Exported %s (%s) in %.1f s: %s", path, info.format, info.seconds, ", ".join(info.output_names))
    if verify:
        _verify(info, reference, image, str(device), tolerance)
    return info


def _describe_export(model: nn.Module, backend: ExportBackend, path: str, names: List[str], image: Tensor,
                     reference: List[Tensor], *, opset: int, input_format: str, resize: Optional[Dict[str, Any]],
                     class_names: Sequence[str]) -> ExportInfo:
    """The :class:`ExportInfo` of ``model`` traced on ``image`` (``reference``: its outputs there, ``names``)."""
    height, width = int(image.shape[1]), int(image.shape[2])
    return ExportInfo(
        path=path, format=backend.name, opset=opset if backend.takes_opset else None, input_name=INPUT_NAME,
        output_names=names, input_format=input_format, sample_size=[height, width], resize=resize,
        masks="probabilities (N, 1, M, M) in the box frame, before pasting" if MASK_OUTPUT in names else "none",
        detections_on_sample=int(reference[0].shape[0]) if reference else 0,
        class_names=[str(c) for c in class_names], **graph_sizes(model, height, width), **describe_model(model),
    )


def _verify(info: ExportInfo, reference: List[Tensor], image: Tensor, device: str, tolerance: float) -> None:
    """Run the written file on the sample; fill ``info.max_abs_diff``, ExportError where an output differs
    from PyTorch's ``reference`` by more than ``tolerance`` times max(1, its largest magnitude)."""
    names, path = info.output_names, info.path
    outputs = align_detections(dict(zip(names, reference)),
                               ExportedModel(path, device=device).run_tensor(image.cpu()), tolerance)
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
    and :func:`afa_d2.export.run_exported` repeats it. Args otherwise as :func:`load_model` and
    :func:`export_model`.
    """
    model, cfg = load_model(config, weights, overrides, device=device)
    input_format = config_input_format(cfg)
    resize = config_resize(cfg)
    if sample_image is not None:
        array = as_model_input(sample_image, input_format)
    else:
        array = sample_tensor(None, height, width, "cpu").permute(1, 2, 0).numpy()
    sample = resized_tensor(array, resize)
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
