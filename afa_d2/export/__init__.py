"""Export an afa_d2 detector to ONNX or TorchScript, and run the exported file.

The whole detector (Mask R-CNN, Cascade Mask R-CNN, RetinaNet or FCOS; any aggregation operator) is
traced as detectron2's ``tools/deploy/export_model.py`` traces it: detectron2's ``TracingAdapter`` around
:func:`afa_d2.modeling.inference.raw_inference`, one image in, flat tensors out. Panoptic FPN and keypoint
heads are refused, one line each.

    from afa_d2 import export
    info = export.export_config("shapes/mask_rcnn_R_18_msca.py", "out/model.onnx", weights="model_final.pth",
                                height=480, width=640)                       # or export.export_model(model, ...)
    dets = export.run_exported("out/model.onnx", "image.jpg", output="out/dets.json")   # + out/dets.png

Where each piece is:

=================  ==========================================================================================
``exporter.py``    :func:`export_model`, :func:`export_config`, :func:`load_model`, :class:`ExportInfo` and the
                   metadata every file carries
``backend.py``     :class:`~afa_d2.export.backend.ExportBackend`, what a format is; the shared names and errors
``formats.py``     ``BACKENDS``, the formats by name, and a file's format from its suffix
``onnx.py``        ONNX (opset 17: why, RoIAlign and attention in the graph), run with onnxruntime
``torchscript.py`` traced TorchScript behind a scripted size check
``tracing.py``     what is traced, the refused models, the model as it is traced
``sizes.py``       the input sizes one graph serves (from a minimum up), :func:`describe_sizes`
``inputs.py``      images, the config's test-time resize, the sample
``runner.py``      :class:`ExportedModel`, :func:`run_exported`; the graph's inputs and outputs
``align.py``       :func:`align_detections`: near-tied scores paired before a comparison
``detections.py``  :func:`write_detections`, :func:`draw_detections`
``cli.py``         ``tools/export_model.py`` and ``tools/run_exported.py``
=================  ==========================================================================================

A new format is one module with an ``ExportBackend`` and its entry in ``formats.BACKENDS``. What tracing
needs of detectron2's private names (v0.6's Cascade gradient scaling and top-k ``min``, the registry copy's
``detectron2.export``) is in :mod:`afa_d2.compat`.

Optional dependencies: ``onnx`` and ``onnxruntime`` (``pip install 'afa_d2[export]'``); without them
the ONNX functions raise :class:`MissingExportDependencyError`, one line. TorchScript needs nothing more.
"""
from afa_d2.compat import tracing_adapter_class
from afa_d2.export.align import align_detections
from afa_d2.export.backend import (INPUT_NAME, INSTALL_HINT, MASK_OUTPUT, METADATA_KEY, ExportBackend, ExportError,
                                   ExportedSizeError, MissingExportDependencyError)
from afa_d2.export.detections import draw_detections, write_detections
from afa_d2.export.exporter import ExportInfo, export_config, export_model, load_model
from afa_d2.export.formats import BACKENDS, DEFAULT_FILES, EXPORT_FORMATS, SUFFIXES, format_of
from afa_d2.export.inputs import read_image
from afa_d2.export.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from afa_d2.export.runner import ExportedModel, run_exported
from afa_d2.export.sizes import describe_sizes, graph_size_limits, padded_size

__all__ = [
    "BACKENDS",
    "DEFAULT_FILES",
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "INPUT_NAME",
    "INSTALL_HINT",
    "MASK_OUTPUT",
    "MAX_OPSET",
    "METADATA_KEY",
    "MIN_OPSET",
    "SUFFIXES",
    "ExportBackend",
    "ExportError",
    "ExportInfo",
    "ExportedModel",
    "ExportedSizeError",
    "MissingExportDependencyError",
    "align_detections",
    "describe_sizes",
    "draw_detections",
    "export_config",
    "export_model",
    "format_of",
    "graph_size_limits",
    "load_model",
    "padded_size",
    "read_image",
    "run_exported",
    "tracing_adapter_class",
    "write_detections",
]
