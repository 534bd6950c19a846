"""Inference precision: fp32 (default), bf16 (CPUs with native bf16, CUDA) or fp16 (CUDA), under ``torch.autocast``.

A model runs in the chosen precision inside ``torch.autocast`` (the convolutions, linears and attention
in bf16 / fp16; what autocast keeps in fp32 stays there: torchvision's NMS and RoIAlign, the box
decoding's arithmetic, mask pasting), and its outputs are returned in fp32 (:func:`outputs_to_fp32`),
so an evaluator or a user's code sees the same types in every precision.

:func:`check_precision` refuses, in one line, an unknown precision, fp16 on a CPU, and bf16 on a host
that has no fast path for it (a CPU without AVX512_BF16 / AMX-BF16 on x86 or BF16 on Arm, where bf16
is emulated and slower than fp32; a GPU without bf16), unless forced.
"""
from __future__ import annotations

import contextlib
import platform
from typing import Any, Iterator, Optional, Tuple

import torch
from torch import nn

__all__ = ["PRECISIONS", "PrecisionError", "PrecisionModel", "check_precision", "cpu_bf16_support",
           "outputs_to_fp32", "precision_scope"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision this host or device cannot run fast, or an unknown one (one line, naming what would work)."""


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_support() -> Tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and its bf16 instruction sets in words."""
    flags = _cpu_flags()
    found = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512_BF16"), ("bf16", "BF16"))
             if flag in flags]
    machine = platform.machine() or "this CPU"
    if found:
        return True, "{} with {}".format(machine, ", ".join(found))
    return False, "{} without AVX512_BF16 / AMX-BF16 (x86) or BF16 (Arm)".format(machine)


def check_precision(precision: str, device: Any = "cpu", *, force: bool = False) -> None:
    """Refuse a precision that ``device`` cannot run, or runs slowly (unless ``force``).

    Raises:
        PrecisionError: one line naming the value, the host's instruction set and what would work.
    """
    if precision not in PRECISIONS:
        raise PrecisionError("unknown precision {!r}; valid: {}".format(precision, ", ".join(PRECISIONS)))
    kind = torch.device(device).type
    if precision == "fp32":
        return
    if kind == "cpu":
        fast, isa = cpu_bf16_support()
        if precision == "fp16":
            raise PrecisionError("precision=fp16 needs a CUDA device; on the CPU ({}) use {}".format(
                isa, "bf16 or fp32" if fast else "fp32"))
        if not fast and not force:
            raise PrecisionError("precision=bf16 on {}: bf16 is emulated there and slower than fp32; use fp32, or "
                                 "force it".format(isa))
        return
    if kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported() and not force:
        raise PrecisionError("precision=bf16 on {}: the GPU has no bf16 support; use fp16 or fp32, or force "
                             "it".format(torch.cuda.get_device_name()))


@contextlib.contextmanager
def precision_scope(precision: str, device: Any = "cpu") -> Iterator[None]:
    """``torch.autocast`` for ``precision`` on ``device``'s type; nothing for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=_DTYPES[precision]):
        yield


def _fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if hasattr(value, "tensor") and isinstance(getattr(value, "tensor"), torch.Tensor):  # Boxes
        value.tensor = _fp32(value.tensor)
        return value
    return value


def outputs_to_fp32(outputs: Any) -> Any:
    """detectron2's outputs (a list of dicts of ``Instances`` / tensors) with every floating field in fp32."""
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(outputs_to_fp32(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: outputs_to_fp32(v) for k, v in outputs.items()}
    if hasattr(outputs, "get_fields"):  # Instances
        for name, value in list(outputs.get_fields().items()):
            outputs.set(name, _fp32(value))
        return outputs
    return _fp32(outputs)


class PrecisionModel(nn.Module):
    """``model`` run in ``precision`` (under autocast), its outputs in fp32: for evaluation loops that call
    ``model(inputs)`` (detectron2's ``inference_on_dataset``)."""

    def __init__(self, model: nn.Module, precision: str, device: Optional[Any] = None):
        super().__init__()
        self.model = model
        self.precision = precision
        self.device_type = torch.device(device if device is not None else next(model.parameters()).device).type

    def forward(self, *args, **kwargs):
        with precision_scope(self.precision, self.device_type):
            out = self.model(*args, **kwargs)
        return outputs_to_fp32(out)
