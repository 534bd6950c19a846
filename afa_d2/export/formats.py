"""The export formats, by name: :data:`BACKENDS`, and a file's format from its suffix.

Adding a format is one module with its :class:`~afa_d2.export.backend.ExportBackend` and one entry in
:data:`BACKENDS`; the names, suffixes and default file names below are read from there.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from afa_d2.export.backend import ExportBackend, ExportError
from afa_d2.export.onnx import OnnxBackend
from afa_d2.export.torchscript import TorchScriptBackend

__all__ = ["BACKENDS", "DEFAULT_FILES", "EXPORT_FORMATS", "SUFFIXES", "backend", "format_of", "output_path"]

BACKENDS: Dict[str, ExportBackend] = {b.name: b for b in (OnnxBackend(), TorchScriptBackend())}

EXPORT_FORMATS = tuple(BACKENDS)
SUFFIXES = {suffix: b.name for b in BACKENDS.values() for suffix in b.suffixes}
DEFAULT_FILES = {b.name: b.default_file for b in BACKENDS.values()}


def backend(format: str) -> ExportBackend:
    """The backend of a format name; ExportError naming the valid ones."""
    if format not in BACKENDS:
        raise ExportError("unknown export format {!r}; valid: {}".format(format, list(EXPORT_FORMATS)))
    return BACKENDS[format]


def format_of(path: str, format: Optional[str] = None) -> str:
    """The export format of ``path`` from its suffix (.onnx; .ts or .pt), checked against ``format``."""
    suffix = os.path.splitext(path)[1].lower()
    by_suffix = SUFFIXES.get(suffix)
    if format is not None:
        backend(format)
    if by_suffix is None:
        raise ExportError("{!r}: unknown file suffix {!r}; valid: {} ({})".format(
            path, suffix, sorted(SUFFIXES), ", ".join(
                "{}: {}".format(b.label, " or ".join(b.suffixes)) for b in BACKENDS.values())))
    if format is not None and format != by_suffix:
        raise ExportError("{!r} is a {} file name but format={!r}".format(path, by_suffix, format))
    return by_suffix


def output_path(output: str, format: Optional[str]) -> str:
    """``output``, or the format's default file in it when it is a folder (an existing one, one ending in the
    path separator, or a name without a suffix)."""
    if os.path.isdir(output) or output.endswith(os.sep) or not os.path.splitext(output)[1]:
        if format is None:
            raise ExportError("{!r} is a folder: give format ({}) or a file name".format(
                output, " or ".join(repr(name) for name in EXPORT_FORMATS)))
        return os.path.join(output, backend(format).default_file)
    return output
