"""What an export format is: :class:`ExportBackend`, and the names and errors every format shares.

A format writes the traced detector to a file and loads and runs that file again; the tracing, the
metadata record, the size rules and the runner's pre- and post-processing are the same for every format
(:mod:`afa_d2.export.exporter`, :mod:`afa_d2.export.runner`). The formats are listed in
:data:`afa_d2.export.formats.BACKENDS`.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from torch import Tensor, nn

__all__ = [
    "INPUT_NAME",
    "INSTALL_HINT",
    "MASK_OUTPUT",
    "METADATA_KEY",
    "ExportBackend",
    "ExportError",
    "ExportedSizeError",
    "MissingExportDependencyError",
    "require",
]

METADATA_KEY = "afa_d2_export"  # the JSON record in every exported file (ExportInfo.metadata)
INSTALL_HINT = "pip install 'afa_d2[export]'"
INPUT_NAME = "image"
MASK_OUTPUT = "pred_masks"


class ExportError(ValueError):
    """A bad argument or input of the export or the runner (one line, naming the bad value)."""


class ExportedSizeError(ExportError):
    """An input whose padded size is not the one the exported graph was traced at."""


class MissingExportDependencyError(ImportError):
    """onnx / onnxruntime is not installed."""


def require(module: str, what: str):
    """``module`` imported, or :class:`MissingExportDependencyError` naming ``what`` needs it and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExportDependencyError(
            "{} needs the {} package, which is not installed ({}): {}".format(what, module, e, INSTALL_HINT)
        ) from None


class ExportBackend(abc.ABC):
    """One export format: how a traced detector is written to a file, and how that file is loaded and run.

    Class attributes:
        name (str): the format's name (``export_model(format=...)``, :attr:`ExportInfo.format`).
        label (str): the name in messages ("ONNX").
        suffixes (tuple[str]): the file suffixes of the format; the first names a folder's default file
            (``model<suffix>``).
        takes_opset (bool): whether the file records the ONNX opset it was written at.
    """

    name: str = ""
    label: str = ""
    suffixes: Tuple[str, ...] = ()
    takes_opset: bool = False

    @property
    def default_file(self) -> str:
        """The file written into a folder given as the output."""
        return "model" + self.suffixes[0]

    def check_available(self) -> None:
        """:class:`MissingExportDependencyError` where a package this format needs is missing; called before
        anything is traced. Nothing by default."""

    @abc.abstractmethod
    def write(self, adapter: nn.Module, image: Tensor, info, record: str) -> None:
        """Trace ``adapter`` on ``image`` and write it to ``info.path`` with the metadata ``record``.

        Called with the model in eval mode, its weights without ``requires_grad`` and compat's tracing
        patches entered (:func:`afa_d2.export.tracing.prepared_for_tracing`).

        Args:
            adapter: detectron2's ``TracingAdapter`` around the detector: one (3, H, W) tensor in, the
                flat outputs ``info.output_names`` out.
            image: Tensor of shape (3, H, W), the sample.
            info (ExportInfo): path, input and output names, opset and the padded sizes the graph serves.
            record (str): the JSON metadata to store under :data:`METADATA_KEY`.
        """

    @abc.abstractmethod
    def load(self, path: str, device: str) -> Tuple[Any, Optional[str]]:
        """(the loaded file, its metadata JSON or None); :class:`ExportError` for a file it cannot read."""

    @abc.abstractmethod
    def run(self, loaded: Any, image: Tensor, meta: Dict[str, Any], device: str) -> List[np.ndarray]:
        """The outputs (in ``meta["output_names"]``' order) of a loaded file on one float32 (3, H, W) input."""
