"""ONNX: ``torch.onnx.export`` (the TorchScript-based exporter) at opset 17, run with onnxruntime.

**RoIAlign and the opset.** detectron2's exporter pins opset 11 (``STABLE_ONNX_OPSET_VERSION``), where
ONNX RoiAlign only has the legacy ``output_half_pixel`` sampling grid. detectron2's poolers use
``ROIAlign(aligned=True)`` (torchvision's ``roi_align(..., aligned=True)``: the box is shifted by -0.5
pixel before sampling); torchvision's opset-11 symbolic only warns about it and exports the unshifted
grid, so every pooled feature is sampled half a feature pixel off. From opset 16 ONNX RoiAlign has
``coordinate_transformation_mode="half_pixel"``, and torchvision's opset-16 symbolic writes it for
``aligned=True``: onnxruntime's CPU RoiAlign then equals torchvision's for the adaptive sampling ratio
(0, detectron2's default) and fixed ones, tiny and zero-size boxes included (``tests/test_export.py``
measures both opsets). So the export runs at opset :data:`DEFAULT_OPSET` (17: also ONNX's
LayerNormalization, MS-Att's three LayerNorms as one node each) and refuses anything below
:data:`MIN_OPSET`.

**Attention.** MS-Att's kernels fall back to the plain ops while tracing or exporting
(``afa_d2.execution.kernels._special_mode``: ``torch.jit.is_tracing()`` is true under both
``torch.jit.trace`` and the TorchScript-based ``torch.onnx.export``), so attention is exported as
``scaled_dot_product_attention``, which the ONNX exporter writes as MatMul / Softmax / MatMul (opset
17 has no Attention op) and onnxruntime runs; the host-measured 1x1-convolution kernels never enter
a graph, whatever ``AFA_D2_KERNELS`` says (``tests/test_export.py`` checks both).

The metadata record is an entry of the model's ``metadata_props``. Needs ``onnx`` and ``onnxruntime``
(``pip install 'afa_d2[export]'``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from afa_d2.export.backend import METADATA_KEY, ExportBackend, ExportError, require

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "OnnxBackend", "check_opset"]

DEFAULT_OPSET = 17
MIN_OPSET = 17
MAX_OPSET = 20  # torch's TorchScript-based ONNX exporter stops at 20


def check_opset(opset: int) -> None:
    """ExportError, one line, unless ``opset`` is an int in :data:`MIN_OPSET`..:data:`MAX_OPSET`."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            "opset {!r} is not supported: use {}..{}. Below 16 ONNX RoiAlign has no half_pixel mode, so detectron2's "
            "RoIAlign(aligned=True) would be sampled half a pixel off (opset 11 is detectron2's own default); 17 adds "
            "LayerNormalization".format(opset, MIN_OPSET, MAX_OPSET))


class OnnxBackend(ExportBackend):
    """ONNX files (``.onnx``): H and W of the input and the number of detections are dynamic axes."""

    name = "onnx"
    label = "ONNX"
    suffixes = (".onnx",)
    takes_opset = True

    def check_available(self) -> None:
        require("onnx", "ONNX export")

    def write(self, adapter: nn.Module, image: Tensor, info, record: str) -> None:
        onnx = require("onnx", "ONNX export")
        names = info.output_names
        torch.onnx.export(
            adapter, (image,), info.path, dynamo=False, opset_version=info.opset, input_names=[info.input_name],
            output_names=names, do_constant_folding=True,
            dynamic_axes=dict({info.input_name: {1: "height", 2: "width"}},
                              **{n: {0: "detections"} for n in names if n != "image_size"}),
        )
        proto = onnx.load(info.path)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, record
        onnx.save(proto, info.path)

    def load(self, path: str, device: str) -> Tuple[Any, Optional[str]]:
        """An onnxruntime session on the CPU provider (CUDA's first when ``device`` starts with "cuda" and
        onnxruntime has it)."""
        ort = require("onnxruntime", "Running an ONNX model")
        onnx = require("onnx", "Reading an ONNX model's metadata")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as e:
            raise ExportError("{!r} is not a readable ONNX file ({})".format(path, type(e).__name__)) from None
        record = {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        return ort.InferenceSession(path, providers=providers), record

    def run(self, loaded: Any, image: Tensor, meta: Dict[str, Any], device: str) -> List[np.ndarray]:
        return loaded.run(meta["output_names"], {meta["input_name"]: image.cpu().numpy()})
