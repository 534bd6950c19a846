"""TorchScript: ``torch.jit.trace`` of the detector behind a scripted size check, run with ``torch.jit.load``.

The file needs nothing of afa_d2 to run: the metadata record is a TorchScript extra file
(``afa_d2_export.json``), and the check of the input's padded size (:mod:`afa_d2.export.sizes`) is the
saved module's own scripted ``forward``, for users who load it with plain PyTorch.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from afa_d2.export.backend import METADATA_KEY, ExportBackend, ExportError

__all__ = ["TorchScriptBackend"]

_EXTRA_FILE = METADATA_KEY + ".json"


class _SizeChecked(nn.Module):
    """A traced detector behind a scripted size check: the padded sizes the graph serves
    (:func:`afa_d2.export.sizes.graph_size_limits`)."""

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


# The scripted class's name is written into every file (its code, __torch__.afa_d2.export._SizeChecked): kept
# as it was before the export became a package, so files written now equal those written then.
_SizeChecked.__module__ = "afa_d2.export"


class TorchScriptBackend(ExportBackend):
    """Traced TorchScript files (``.ts`` or ``.pt``)."""

    name = "torchscript"
    label = "TorchScript"
    suffixes = (".ts", ".pt")

    def write(self, adapter: nn.Module, image: Tensor, info, record: str) -> None:
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
        script = torch.jit.script(_SizeChecked(traced, info.min_padded_size, info.max_padded_size,
                                               info.size_divisibility, info.square_size))
        torch.jit.save(script, info.path, _extra_files={_EXTRA_FILE: record})

    def load(self, path: str, device: str) -> Tuple[Any, Optional[str]]:
        extra = {_EXTRA_FILE: ""}
        try:
            module = torch.jit.load(path, map_location=device, _extra_files=extra)
        except Exception as e:
            raise ExportError("{!r} is not a readable TorchScript file ({}: {})".format(
                path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")) from None
        raw = extra[_EXTRA_FILE]
        return module, (raw.decode() if isinstance(raw, bytes) else raw)

    def run(self, loaded: Any, image: Tensor, meta: Dict[str, Any], device: str) -> List[np.ndarray]:
        with torch.no_grad():
            return [v.cpu().numpy() for v in loaded(image.to(device))]
