"""Process-wide CPU settings that afa_d2's commands turn on, visibly and with a way out.

glibc's ``malloc`` serves every block over ``M_MMAP_THRESHOLD`` (128 KiB, raised dynamically up
to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A detector's large temporaries (a
256-channel map of p2 at 800x1333 is 69 MB) are far above that, so every one of them is
faulted in page by page, zeroed by the kernel, and handed back, at every layer of every
forward. :func:`keep_freed_memory` tells glibc to serve every block from its heap and to keep
what is freed (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)``), so a
freed block's pages are reused by the next allocation (what that saves, and the other choices of this
module, are measured in the README's "CPU speed" list).

:func:`prepare_for_cpu_inference` changes a model, not the process: the RoI poolers' ``ROIAlign``
ops become :class:`ThreadedROIAlign` (torchvision's CPU ``roi_align`` runs on one core; the RoIs
are split over the intra-op threads, the same values); while the model runs, detectron2's
per-class NMS (RPN levels, box head classes) runs its classes on the intra-op threads
(:func:`threaded_batched_nms`, the same indices) and the RoIAlign calls share one NCHW copy of each
feature map (:func:`cpu_inference_scope`); the RoI heads' FC layers and 3x3 convolutions take the
host's faster kernels (:class:`afa_d2.execution.kernels.RowsLinear` and ``BatchedConv2d``, chosen by a
measurement, within 1e-5); and optionally the weights go channels-last (oneDNN then needs no layout
conversion around each convolution, and MS-Att's token views of the pyramid maps need no copies).

The cost: the process keeps its peak heap (its resident memory does not shrink after a large
step; forked data-loader workers inherit the setting). It is never set by ``import afa_d2``:
the commands that run models on the CPU (``train_net.py`` with ``train.device=cpu``, the demo,
the benchmark's "afa_d2" runs, :class:`afa_d2.predictor.Predictor`, the model-zoo trainer) call
:func:`configure_cpu_runtime`, which logs what it set. ``AFA_D2_MALLOC=default`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

from afa_d2.compat import replace_batched_nms, tensor_version

__all__ = [
    "MALLOC_ENV",
    "ThreadedROIAlign",
    "configure_cpu_runtime",
    "keep_freed_memory",
    "pool_map",
    "prepare_for_cpu_inference",
    "cpu_inference_scope",
    "threaded_batched_nms",
]

logger = logging.getLogger(__name__)

MALLOC_ENV = "AFA_D2_MALLOC"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP = {"M_MMAP_MAX": (_M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, 2**31 - 1)}

_applied: Optional[Dict[str, int]] = None


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # absent in musl: not glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> Optional[Dict[str, int]]:
    """Make glibc keep freed memory in the process (see the module's doc). Idempotent.

    Returns:
        the ``mallopt`` settings made (``{"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": ...}``), or None
        where there is no glibc (macOS, musl) or ``mallopt`` refused.
    """
    global _applied
    if _applied is not None:
        return dict(_applied)
    libc = _glibc()
    if libc is None:
        return None
    done = {}
    for name, (param, value) in _KEEP.items():
        if libc.mallopt(param, value) != 1:
            return None
        done[name] = value
    _applied = done
    return dict(done)


def configure_cpu_runtime(what: str = "this run") -> Optional[Dict[str, int]]:
    """What afa_d2's commands call before running models on the CPU: :func:`keep_freed_memory`,
    unless ``$AFA_D2_MALLOC`` is "default"; logs the outcome either way.

    Args:
        what (str): named in the log line ("the demo", "evaluation", ...).

    Returns:
        the settings made, or None.
    """
    choice = os.environ.get(MALLOC_ENV, "keep").strip().lower()
    if choice not in ("keep", "default"):
        raise ValueError("{}={!r}: expected 'keep' (afa_d2's default for CPU runs) or 'default' (glibc's "
                         "own behaviour)".format(MALLOC_ENV, choice))
    if choice == "default":
        logger.info("glibc malloc left as it is for %s (%s=default)", what, MALLOC_ENV)
        return None
    done = keep_freed_memory()
    if done is None:
        logger.info("No glibc mallopt here: the allocator is left as it is for %s", what)
    else:
        logger.info("glibc malloc keeps freed memory in the process for %s (mallopt %s): large temporaries "
                    "reuse pages instead of faulting in fresh ones; %s=default turns this off", what,
                    ", ".join("{}={}".format(k, v) for k, v in done.items()), MALLOC_ENV)
    return done


_POOL_WORKERS = 8
_THREAD_POOL = None
_THREAD_POOL_PID = None


def _thread_pool():
    """The process's pool for the threaded CPU ops below (:data:`_POOL_WORKERS` workers, created on first use).

    A forked child gets a pool of its own: the parent's worker threads do not exist in it.
    """
    global _THREAD_POOL, _THREAD_POOL_PID
    if _THREAD_POOL is None or _THREAD_POOL_PID != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        _THREAD_POOL = ThreadPoolExecutor(max_workers=_POOL_WORKERS, thread_name_prefix="afa_d2_cpu")
        _THREAD_POOL_PID = os.getpid()
    return _THREAD_POOL


def _caller_state() -> Dict[str, object]:
    """The caller thread's torch state that is thread-local and changes what an op computes: grad mode and
    the autocast state of the CPU and of CUDA (a worker thread starts with neither autocast nor no_grad)."""
    import torch

    from afa_d2.compat import autocast_state

    autocast = [(device, autocast_state(device)) for device in ("cpu", "cuda")]
    return {"grad": torch.is_grad_enabled(),
            "autocast": [(device, dtype) for device, (enabled, dtype) in autocast if enabled]}


@contextmanager
def _as_caller(state: Dict[str, object]) -> Iterator[None]:
    """Enter, in a worker thread, the state :func:`_caller_state` read in the caller's thread."""
    import contextlib

    import torch

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.set_grad_enabled(bool(state["grad"])))
        for device, dtype in state["autocast"]:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        yield


def pool_map(fn, items) -> list:
    """``[fn(item) for item in items]`` on the process's pool, each call in the caller's grad-mode and
    autocast state: under ``torch.autocast`` a worker thread then gets the same casts (torchvision's
    ``nms`` and ``roi_align`` to fp32, for one) as the caller's thread, so the threaded ops compute
    what the single-threaded ones would, in any precision."""
    state = _caller_state()

    def call(item):
        with _as_caller(state):
            return fn(item)

    return list(_thread_pool().map(call, items))


def _pool_threads(device_type: str) -> int:
    """How many pool tasks a threaded op splits into: the intra-op threads (at most the pool's size),
    or 0 where it should not split (not the CPU, one thread, tracing or scripting)."""
    import torch

    threads = min(_POOL_WORKERS, torch.get_num_threads())
    if threads < 2 or device_type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
        return 0
    return threads


def _roi_align_base():
    from detectron2.layers import ROIAlign

    return ROIAlign


class ThreadedROIAlign(_roi_align_base()):
    """detectron2's ``ROIAlign`` that splits the RoIs of a CPU, no-grad call over the intra-op threads,
    on one NCHW copy of the feature map.

    torchvision's CPU ``roi_align`` loops over the RoIs on one core; the RoIs are independent, so
    ``torch.get_num_threads()`` Python threads (the op releases the GIL) each take a contiguous share, and the
    results are concatenated in order: the same tensor, bit for bit. The kernel reads NCHW: it copies a
    channels-last map (what a model with channels-last weights produces) to NCHW in every call, so each thread
    would copy the whole map again (p2 at 800x1333 is 69 MB). The copy is made once, before the split, and
    inside :func:`cpu_inference_scope` (a prepared model's forward) once per map for all the poolers that read
    it (box and mask heads).
    With autograd, on CUDA, while tracing, or for few RoIs it is detectron2's op.
    """

    MIN_ROIS = 64

    def forward(self, input, rois):
        import torch

        if (input.device.type != "cpu" or torch.is_grad_enabled() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or input.is_quantized):
            return super().forward(input, rois)
        input = _nchw(input)
        threads = _pool_threads(input.device.type)
        if threads == 0 or rois.shape[0] < self.MIN_ROIS:
            return super().forward(input, rois)
        from torchvision.ops import roi_align

        rois = rois.to(dtype=input.dtype)

        def part(r):
            return roi_align(input, r, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

        return torch.cat(pool_map(part, rois.chunk(threads)))


#: torchvision's ``batched_nms`` loops over the classes on the CPU above this many box coordinates
#: (``boxes.numel()``; below it, one NMS of class-offset boxes), and so does :func:`threaded_batched_nms`.
NMS_PER_CLASS_NUMEL = 4000


def threaded_batched_nms(boxes, scores, idxs, iou_threshold: float):
    """detectron2's ``batched_nms`` with its per-class NMS calls spread over the intra-op threads.

    On the CPU, with more than :data:`NMS_PER_CLASS_NUMEL` box coordinates, detectron2 (through
    torchvision) runs ``nms`` once per class, one after another on one core: 80 classes of 1,000
    boxes each when every proposal is kept (score threshold 0). The
    classes are independent, so each class's NMS runs as one task on ``torch.get_num_threads()``
    Python threads (torchvision's op releases the GIL), the kept indices are marked and sorted by
    decreasing score, as torchvision does: the same indices in the same order. Elsewhere (fewer
    boxes, CUDA, one thread, tracing or scripting) it is detectron2's ``batched_nms``.
    """
    import torch
    from detectron2.layers import batched_nms
    from torchvision.ops import nms

    if _pool_threads(boxes.device.type) == 0 or boxes.numel() <= NMS_PER_CLASS_NUMEL:
        return batched_nms(boxes, scores, idxs, iou_threshold)
    boxes = boxes.float()  # as detectron2's batched_nms (fp16 lacks the range)

    def kept(class_id):
        members = torch.where(idxs == class_id)[0]
        return members[nms(boxes[members], scores[members], iou_threshold)]

    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    keep_mask[torch.cat(pool_map(kept, torch.unique(idxs)))] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]


_scope_lock = threading.Lock()
_scope_depth = 0
_restore_nms = None  # compat.replace_batched_nms's undo, while a scope is open
# NCHW copies of channels-last maps made inside the scope: id(map) -> (map, its version, copy). The
# entry holds the map, so its id cannot be reused while cached; an in-place change bumps the version.
_nchw_cache: Dict[int, tuple] = {}


def _nchw_copy(x):
    """``x.contiguous()``; a channels-last map as one 2-D transpose per image.

    The same values. Viewed per image as an (H*W, C) matrix, channels-last to NCHW is a transpose,
    which ATen copies in cache-sized blocks, where ``contiguous()`` goes element by element through
    the permuted strides, several times slower on a map as large as p2 at 800x1333.
    """
    import torch

    if x.dim() != 4 or x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype)
    for i in range(n):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out


def _nchw(x):
    """``x.contiguous()`` (NCHW), shared by every RoIAlign call inside :func:`cpu_inference_scope`."""
    if x.is_contiguous():
        return x
    with _scope_lock:
        if _scope_depth == 0:
            return _nchw_copy(x)
        hit = _nchw_cache.get(id(x))
        if hit is not None and hit[0] is x and hit[1] == tensor_version(x):
            return hit[2]
    copy = _nchw_copy(x)
    with _scope_lock:
        if _scope_depth > 0:
            _nchw_cache[id(x)] = (x, tensor_version(x), copy)
    return copy


def _enter_scope() -> None:
    global _scope_depth, _restore_nms
    with _scope_lock:
        if _scope_depth == 0:
            _restore_nms = replace_batched_nms(threaded_batched_nms)
        _scope_depth += 1


def _exit_scope() -> None:
    global _scope_depth, _restore_nms
    with _scope_lock:
        _scope_depth -= 1
        if _scope_depth == 0:
            _restore_nms()
            _restore_nms = None
            _nchw_cache.clear()


@contextmanager
def cpu_inference_scope() -> Iterator[None]:
    """Inside the block, detectron2's R-CNN inference uses :func:`threaded_batched_nms`, and
    :class:`ThreadedROIAlign` makes one NCHW copy per feature map for all its calls; the same results.

    A prepared model's forward runs inside it (:func:`prepare_for_cpu_inference`). Reentrant and
    counted: the names are restored and the copies dropped when the last block exits. While any block
    is open, every model in the process gets the threaded NMS (the same indices, so nothing else can tell).
    """
    _enter_scope()
    try:
        yield
    finally:
        _exit_scope()


def _scope_pre_hook(module, args) -> None:
    _enter_scope()


def _scope_hook(module, args, output) -> None:
    _exit_scope()


def prepare_for_cpu_inference(model, *, channels_last: bool = True):
    """Make ``model`` (a detectron2 R-CNN, on the CPU) faster at inference, same outputs: threaded
    ``ROIAlign`` in its poolers, the RoI heads' FC layers and 3x3 convolutions as
    :class:`~afa_d2.execution.kernels.RowsLinear` and :class:`~afa_d2.execution.kernels.BatchedConv2d`
    (the host's faster kernels without autograd, the same parameters and state_dict), its forward inside
    :func:`cpu_inference_scope` (threaded per-class NMS, one NCHW copy of each map for the RoIAlign
    calls; through forward hooks), and with ``channels_last`` its weights in channels-last memory format
    (do that only to a model that is not being trained). Calling it twice is harmless. Returns ``model``."""
    import torch

    from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
    from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead
    from torch import nn

    from afa_d2.execution.kernels import BatchedConv2d, RowsLinear

    swapped = linears = convs = 0
    for module in list(model.modules()):
        # the RoI heads' FC layers and 3x3 convolutions: the host's faster kernels (kernels.py)
        if isinstance(module, (FastRCNNConvFCHead, BaseMaskRCNNHead)):
            for name, child in list(module.named_children()):  # replaced in place: the same order
                if type(child) is nn.Linear:
                    setattr(module, name, RowsLinear.from_linear(child))
                    linears += 1
                elif BatchedConv2d.applies_to(child):
                    setattr(module, name, BatchedConv2d.from_conv(child))
                    convs += 1
        pools = getattr(module, "level_poolers", None)
        if pools is None:
            continue
        for i, p in enumerate(pools):
            if type(p) is _roi_align_base():
                pools[i] = ThreadedROIAlign(p.output_size, p.spatial_scale, p.sampling_ratio, aligned=p.aligned)
                swapped += 1
    if not getattr(model, "_afa_d2_cpu_inference_scope", False):
        model.register_forward_pre_hook(_scope_pre_hook)
        model.register_forward_hook(_scope_hook, always_call=True)  # also when forward raises
        model._afa_d2_cpu_inference_scope = True
    if channels_last:
        model.to(memory_format=torch.channels_last)
    logger.info("CPU inference: %d ROIAlign op(s) threaded, per-class NMS threaded, %d FC layer(s) and %d 3x3 "
                "convolution(s) of the RoI heads on the host's faster kernels%s", swapped, linears, convs,
                ", weights channels-last" if channels_last else "")
    return model
