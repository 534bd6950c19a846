"""Run detectron2's registry copy (v0.6 without its C++ extension) on today's libraries.

Every workaround afa_d2 needs for detectron2 lives here, and each is applied only when
the running detectron2 needs it. An official build (one with ``detectron2._C``) is never
patched: :func:`apply` returns at once. What each patch is for (docs/DESIGN.md, "detectron2 where only
PyPI is reachable"):

=====================  ====================================================================
patch                  why
=====================  ====================================================================
``missing_extension``  v0.6 imports ``detectron2._C`` at import time (``layers/deform_conv``,
                       ``evaluation/fast_eval_api``). The registry sdist has no C++ sources,
                       so a stand-in module is registered whose every attribute raises
                       :class:`MissingExtensionError` naming the op (deformable conv,
                       rotated-box ops, the C++ COCO evaluator). Mask R-CNN and Cascade Mask
                       R-CNN with an FPN use none of them. The build queries of
                       detectron2's environment report (``collect_env_info``, called by
                       ``default_setup``) are answered with "no C++ extension".
``pillow_linear``      v0.6 uses ``Image.LINEAR`` as a default argument at import time
                       (``data/transforms/transform.py``); Pillow 10 removed that alias of
                       ``Image.BILINEAR``.
``numpy_bool``         v0.6 uses ``np.bool`` (``structures/masks.py``: every polygon mask
                       rasterised for a mask target, ``utils/visualizer.py``). NumPy 1.24 to
                       1.26 removed that alias of ``np.bool_`` (NumPy 2 has it again): it is
                       restored there only.
``cpu_launch``         v0.6's ``engine/launch.py`` asserts CUDA and hard-codes NCCL, so
                       ``--num-gpus 2`` cannot run on CPU. The worker is replaced by one that
                       picks gloo without CUDA (what later official versions do) and, after
                       a successful ``main_func``, ends its process group
                       (:func:`afa_d2.engine.launch.end_process_group`: a group left to
                       interpreter exit can abort a finished worker with SIGABRT).
``retinanet_norm``     v0.6's ``RetinaNetHead`` (and FCOS's head, its subclass) finds the type of its
                       ``norm`` by building ``get_norm(norm, 1)``; today's PyTorch refuses
                       ``GroupNorm(32, 1)``, so FCOS (GN in its head) cannot be built. The probe
                       asks for 32 channels instead, as later official versions do; the head's
                       own norms are untouched. Applied only where ``GroupNorm(32, 1)`` raises.
=====================  ====================================================================

Two v0.6 needs are met by dependencies rather than patches: ``model_zoo`` imports
``pkg_resources`` (pyproject pins ``setuptools<81``), and ``lvis`` / ``fast_eval_api``
evaluation is replaced by ``faster-coco-eval`` in :mod:`afa_d2.evaluation`.

Not applied at import, and no-ops on later official detectron2: what tracing a detector needs
(:func:`tracing_adapter_class`; :func:`cascade_scale_gradient_as_identity` and
:func:`dense_detector_traceable_min`, which :mod:`afa_d2.export` enters only while it traces).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from contextlib import contextmanager
from typing import Dict, Iterator

__all__ = [
    "MissingExtensionError",
    "has_extension",
    "apply",
    "APPLIED",
    "autocast_state",
    "cascade_scale_gradient_as_identity",
    "config_child",
    "dense_detector_traceable_min",
    "distributed_worker",
    "end_process_group",
    "identity_scale_gradient",
    "slurm_requeue_signal",
    "tensor_version",
    "traceable_min",
    "tracing_adapter_class",
    "trainer_hooks",
]

# Names of the patches applied in this process (empty with an official build).
APPLIED: Dict[str, bool] = {}

_FULL_BUILD_HINT = (
    "This detectron2 is the registry copy of v0.6 installed without its C++ extension. "
    "Install official detectron2 from source for it: "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` "
    "(see README.md, 'Installing on a GPU machine')."
)

# What each symbol of detectron2._C is, for the error message.
_OP_DESCRIPTIONS = {
    "deform_conv": "deformable convolution (DeformConv / ModulatedDeformConv)",
    "nms_rotated": "rotated-box NMS",
    "box_iou_rotated": "rotated-box IoU",
    "roi_align_rotated": "rotated RoIAlign",
    "COCOeval": "the C++ COCO evaluator (COCOeval_opt); afa_d2's evaluators use faster-coco-eval",
    "InstanceAnnotation": "the C++ COCO evaluator (COCOeval_opt)",
    "get_compiler_version": "build information of the C++ extension",
    "get_cuda_version": "build information of the C++ extension",
    "has_cuda": "build information of the C++ extension",
}


class MissingExtensionError(RuntimeError):
    """An op that only detectron2's compiled extension provides was used."""


def _describe(name: str) -> str:
    for prefix, what in _OP_DESCRIPTIONS.items():
        if name.startswith(prefix) or prefix.lower() in name.lower():
            return what
    return "an op of detectron2's C++ extension"


def _missing_extension_module() -> types.ModuleType:
    module = types.ModuleType("detectron2._C", "Stand-in for detectron2's missing C++ extension.")

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingExtensionError(
            "detectron2._C.{} ({}) is not available. {}".format(name, _describe(name), _FULL_BUILD_HINT)
        )

    module.__getattr__ = __getattr__  # PEP 562
    module.AFA_D2_STAND_IN = True
    # What detectron2's environment report (collect_env_info, called by default_setup) asks
    # the extension about its build: answered, rather than failing every training start.
    module.get_compiler_version = lambda: "none (registry copy of v0.6, no C++ extension)"
    module.get_cuda_version = lambda: "none (no C++ extension)"
    module.has_cuda = lambda: False
    return module


def has_extension() -> bool:
    """True when the installed detectron2 has its compiled extension (an official build)."""
    if "detectron2._C" in sys.modules:
        return not getattr(sys.modules["detectron2._C"], "AFA_D2_STAND_IN", False)
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except ModuleNotFoundError:  # no detectron2 at all
        return False


def _patch_missing_extension() -> None:
    sys.modules["detectron2._C"] = _missing_extension_module()


_TORCH_LIBRARY = None  # keeps the registration below alive


def _register_missing_torch_ops() -> None:
    """v0.6's ``layers.nms_rotated`` calls ``torch.ops.detectron2.nms_rotated``, which only
    the extension registers; register it to raise :class:`MissingExtensionError` instead
    of torch's bare "no such operator"."""
    global _TORCH_LIBRARY
    import torch

    if hasattr(torch.ops.detectron2, "nms_rotated"):
        return
    lib = torch.library.Library("detectron2", "DEF")
    lib.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")

    def nms_rotated(boxes, scores, iou_threshold):
        return getattr(sys.modules["detectron2._C"], "nms_rotated")

    lib.impl("nms_rotated", nms_rotated, "CompositeExplicitAutograd")
    _TORCH_LIBRARY = lib


def _patch_pillow_linear() -> bool:
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def _patch_numpy_bool() -> bool:
    import numpy as np

    if "bool" in np.__dict__:
        return False
    np.bool = np.bool_
    return True


def _cpu_capable_worker(
    local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout=None
):
    """detectron2 v0.6's ``launch._distributed_worker``, with gloo when there is no CUDA, that
    ends its process group after a successful ``main_func``."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    d2_launch = importlib.import_module("detectron2.engine.launch")

    has_gpu = torch.cuda.is_available()
    if has_gpu and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            "--num-gpus {} exceeds the {} visible CUDA devices".format(
                num_gpus_per_machine, torch.cuda.device_count()
            )
        )
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="NCCL" if has_gpu else "GLOO",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout or d2_launch.DEFAULT_TIMEOUT,
        )
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        group = dist.new_group(list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    if has_gpu:
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    main_func(*args)
    end_process_group()


def end_process_group() -> bool:
    """Barrier, then destroy the default process group (and with it every subgroup).

    A no-op without one. Also forgets detectron2's local process group, which the destroy
    invalidates: ``detectron2.utils.comm._LOCAL_PROCESS_GROUP``, private, read the same in v0.6 and
    in the official source of 2026 (no public setter exists). Returns True when a group was ended.
    ``afa_d2.engine.launch`` calls it after every worker's ``main_func`` (why: its module doc).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
    from detectron2.utils import comm

    if getattr(comm, "_LOCAL_PROCESS_GROUP", None) is not None:
        comm._LOCAL_PROCESS_GROUP = None
    return True


def autocast_state(device_type: str):
    """``(enabled, dtype)`` of ``torch.autocast`` for ``device_type`` ("cpu" or "cuda") in the calling thread.

    torch >= 2.4 takes the device type (``torch.is_autocast_enabled("cpu")``); older torch has a function per
    device (``is_autocast_cpu_enabled``, ``get_autocast_gpu_dtype``), which 2.4 deprecated.
    """
    import torch

    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _patch_retinanet_norm() -> bool:
    import torch.nn as nn

    try:
        nn.GroupNorm(32, 1)
    except ValueError:
        pass
    else:
        return False
    retinanet = importlib.import_module("detectron2.modeling.meta_arch.retinanet")
    probe_free = retinanet.get_norm

    def get_norm(norm, out_channels):
        # the head's type probe is the one call with 1 channel; 32 builds the same type for every norm
        return probe_free(norm, 32 if out_channels == 1 else out_channels)

    retinanet.get_norm = get_norm
    return True


def _patch_cpu_launch() -> None:
    # The module, not the function that detectron2.engine re-exports under the same name.
    d2_launch = importlib.import_module("detectron2.engine.launch")
    d2_launch._distributed_worker = _cpu_capable_worker


def apply() -> Dict[str, bool]:
    """Apply the workarounds the running detectron2 needs; idempotent.

    Must run before ``detectron2.layers`` or ``detectron2.data`` is first imported, which
    ``import afa_d2`` does. Returns :data:`APPLIED`.
    """
    if APPLIED or importlib.util.find_spec("detectron2") is None or has_extension():
        return APPLIED
    _patch_missing_extension()
    _register_missing_torch_ops()
    APPLIED["missing_extension"] = True
    if _patch_pillow_linear():
        APPLIED["pillow_linear"] = True
    if _patch_numpy_bool():
        APPLIED["numpy_bool"] = True
    _patch_cpu_launch()
    APPLIED["cpu_launch"] = True
    if _patch_retinanet_norm():
        APPLIED["retinanet_norm"] = True
    return APPLIED


# ------------------------------------------------------------------------------------------------
# Private attributes of other libraries that afa_d2 reads, each behind one name here (docs/DESIGN.md,
# "Layers": nothing outside this module touches another library's private API).
def trainer_hooks(trainer) -> list:
    """The hooks registered on a detectron2 ``TrainerBase`` (it keeps them in ``_hooks``, with no getter)."""
    return list(trainer._hooks)


def config_child(node, key):
    """omegaconf's child node of a ``DictConfig`` / ``ListConfig`` without resolving it (``_get_node``: reading
    ``node[key]`` would resolve interpolations such as ``${..test.dataset.names}`` and fail on missing values)."""
    return node._get_node(key)


def distributed_worker():
    """detectron2's per-process worker of ``launch`` (``detectron2.engine.launch._distributed_worker``; on the
    registry copy, afa_d2's CPU-capable replacement), for launchers that start the processes themselves."""
    return importlib.import_module("detectron2.engine.launch")._distributed_worker


def slurm_requeue_signal(job_env) -> int:
    """The signal submitit's ``JobEnvironment`` asks Slurm to send before a requeue (``_usr_sig``)."""
    return job_env._usr_sig()


def tensor_version(x) -> int:
    """PyTorch's in-place modification counter of a tensor (``_version``)."""
    return x._version



def nnpack_spatial_convolution(x, weight, bias, padding):
    """NNPACK's batched convolution (``torch._nnpack_spatial_convolution``, stride 1, NCHW), which PyTorch builds
    in for x86-64 with AVX2 and ARM but has no public entry for: ``F.conv2d`` picks it only for shapes it deems
    suited, not for the RoI heads' 14 x 14 maps. Checked on torch 2.4 to 2.14; the caller asks
    ``torch.backends.nnpack.is_available()`` first."""
    import torch

    return torch._nnpack_spatial_convolution(x, weight, bias, padding)


#: The detectron2 modules whose R-CNN inference calls ``batched_nms`` by that module-level name: the box head's
#: ``fast_rcnn_inference`` (Cascade's too) and the RPN's ``find_top_rpn_proposals`` (v0.6 to the latest main).
BATCHED_NMS_SITES = ("detectron2.modeling.roi_heads.fast_rcnn", "detectron2.modeling.proposal_generator.proposal_utils")


def replace_batched_nms(fn):
    """Make detectron2's R-CNN inference call ``fn`` where it calls ``batched_nms`` (the module-level name in
    :data:`BATCHED_NMS_SITES`: detectron2 has no hook for it); returns a function that puts the originals back.
    Process-wide until then: the caller keeps the window short (afa_d2.execution.runtime: one model forward)."""
    saved = {}
    for name in BATCHED_NMS_SITES:
        module = importlib.import_module(name)
        saved[name] = module.batched_nms
        module.batched_nms = fn

    def restore():
        for name, original in saved.items():
            sys.modules[name].batched_nms = original

    return restore
# ------------------------------------------------------------------------------------------------
# Tracing a detector (afa_d2.export): detectron2's private names replaced while a graph is traced.
# Checked on the registry copy of detectron2 v0.6 with torch 2.14, and against the official source
# of June 2026 (commit 02b5c4e), where each is a no-op.
def tracing_adapter_class() -> type:
    """detectron2's :class:`~detectron2.export.TracingAdapter`, on an official build and on the registry copy.

    Why: v0.6's ``detectron2/export/__init__.py`` imports ``export/api.py``, which imports ``caffe2`` (gone
    from PyTorch), so ``from detectron2.export import TracingAdapter`` fails there although
    ``export/flatten.py`` (the adapter) needs nothing of it; later official versions import caffe2 only if
    present. On such a build ``flatten.py`` is imported as a submodule of a bare package object (its folder
    as ``__path__``, the ``__init__`` not run), and ``detectron2.export`` is left out of ``sys.modules``
    again, as the failed import left it.
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


def identity_scale_gradient(x, scale: float):
    """What ``detectron2.modeling.roi_heads.cascade_rcnn._ScaleGradient.apply`` computes forward: ``x``."""
    return x


def traceable_min(*args, **kwargs):
    """Python's ``min``, except that ``min(int, traced size)`` is ``torch.clamp(size, max=int)``.

    detectron2 v0.6's ``DenseDetector._decode_per_level_predictions`` keeps
    ``min(topk_candidates, topk_idxs.size(0))`` candidates a level. While tracing, the size is a
    0-dim tensor, and ``min`` compares it with the int in Python: the graph keeps whichever won on the
    sample, either the constant (right) or the sample's count with no cap (wrong on an input with more
    candidates than ``topk_candidates``). Later detectron2 clamps the traced size instead, which is what
    this returns; anything else goes to ``min`` unchanged.
    """
    import torch

    if len(args) == 2 and not kwargs:
        a, b = args
        if isinstance(b, torch.Tensor) and isinstance(a, int) and not isinstance(a, bool):
            return torch.clamp(b, max=a)
        if isinstance(a, torch.Tensor) and isinstance(b, int) and not isinstance(b, bool):
            return torch.clamp(a, max=b)
    return min(*args, **kwargs)


@contextmanager
def cascade_scale_gradient_as_identity() -> Iterator[None]:
    """Within the block, Cascade R-CNN's ``_ScaleGradient`` (private to ``detectron2.modeling.roi_heads.
    cascade_rcnn``) is :func:`identity_scale_gradient`.

    Why: v0.6's ``CascadeROIHeads._run_stage`` calls that autograd Function (identity forward, gradient
    scaled by 1 / stages backward) at inference too; tracing keeps it as a Python op, which
    ``torch.onnx.export`` inlines but TorchScript cannot script or save. Later detectron2 calls it only in
    training, so nothing changes there. Nothing is patched where the module or the class is missing.
    """
    from unittest import mock

    try:
        from detectron2.modeling.roi_heads import cascade_rcnn
    except ImportError:
        cascade_rcnn = None
    if not hasattr(cascade_rcnn, "_ScaleGradient"):
        yield
        return
    with mock.patch.object(cascade_rcnn._ScaleGradient, "apply", identity_scale_gradient):
        yield


@contextmanager
def dense_detector_traceable_min() -> Iterator[None]:
    """Within the block, ``detectron2.modeling.meta_arch.dense_detector``'s ``min`` is :func:`traceable_min`.

    Why: RetinaNet's and FCOS's per-level top-k on detectron2 v0.6 takes a Python ``min`` that a trace
    freezes (see :func:`traceable_min`); with the stand-in the cap on candidates stays in the graph, as it
    does on later versions, where the module's ``min`` only ever sees ints and the stand-in changes
    nothing. Looked up when the block is entered, so a test can replace :func:`traceable_min`.
    """
    from unittest import mock

    try:
        from detectron2.modeling.meta_arch import dense_detector
    except ImportError:
        dense_detector = None
    if dense_detector is None:
        yield
        return
    with mock.patch.object(dense_detector, "min", traceable_min, create=True):
        yield
