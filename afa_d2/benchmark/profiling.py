"""``--profile N``: where one whole-model inference spends its time on the CPU, op by op, with the library
behind each (docs/DESIGN.md, "What is measured")."""
import argparse
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from afa_d2.modeling.aggregation import use_reference_path

from .inference import _inference_model
from .models import _image
from .variants import split_variant

#: The library behind the ATen ops that take the time on the CPU (what a figure depends on).
KERNEL_LIBRARY = {
    "aten::mkldnn_convolution": "oneDNN convolution",
    "aten::_mkldnn_convolution": "oneDNN convolution",
    "aten::_slow_conv2d_forward": "PyTorch's im2col + GEMM convolution (chosen over oneDNN for small inputs)",
    "aten::_convolution": "convolution dispatch (layout checks, copies)",
    "aten::_nnpack_spatial_convolution": "NNPACK convolution (the RoI heads' batched 3x3 convs, where chosen)",
    "aten::addmm": "BLAS GEMM (MKL / OpenBLAS)",
    "aten::mm": "BLAS GEMM (MKL / OpenBLAS)",
    "aten::bmm": "BLAS batched GEMM (MKL / OpenBLAS)",
    "aten::linear": "BLAS GEMM (MKL / OpenBLAS)",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "PyTorch's CPU flash attention (GEMM + online softmax)",
    "aten::_scaled_dot_product_attention_math": "SDPA math path (bmm + softmax)",
    "torchvision::nms": "torchvision NMS (per class; afa_d2 runs the classes on the threads)",
    "torchvision::roi_align": "torchvision RoIAlign",
    "aten::native_group_norm": "PyTorch GroupNorm",
    "aten::native_layer_norm": "PyTorch LayerNorm",
}


def profile_inference(
    names: Sequence[str], args: argparse.Namespace, shared_state: Optional[Dict[str, torch.Tensor]] = None,
    base_model: Optional[nn.Module] = None, top: int = 12,
) -> Dict[str, Dict[str, Any]]:
    """Where one whole-model inference spends its time, per variant: the ``top`` ATen / torchvision
    ops by self CPU time (``torch.profiler``, after ``args.warmup`` untimed runs), each with its share
    of the total and the library behind it (:data:`KERNEL_LIBRARY`). CPU only."""
    from torch.profiler import ProfilerActivity, profile

    if args.device != "cpu":
        raise ValueError("--profile measures the CPU path (got --device {})".format(args.device))
    image = _image(args.height, args.width, torch.device("cpu"))
    inputs = [{"image": image, "height": args.height, "width": args.width}]
    out: Dict[str, Dict[str, Any]] = {}
    with torch.no_grad():
        for name in names:
            op, reference = split_variant(name)
            model = _inference_model(op, args, torch.device("cpu"), shared_state, base_model)
            use_reference_path(model, reference)
            for _ in range(max(1, args.warmup)):
                model(inputs)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(inputs)
            use_reference_path(model, False)
            events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
            total_us = sum(e.self_cpu_time_total for e in events)
            events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
            rows = [{"name": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
                     "share": e.self_cpu_time_total / total_us, "library": KERNEL_LIBRARY.get(e.key, "")}
                    for e in events[:top]]
            out[name] = {"profile_total_s": total_us / 1e6, "profile": rows}
    return out


def format_profile(results: Dict[str, Dict[str, Any]]) -> str:
    """Each variant's profile as a markdown table, under the variant's total self CPU time."""
    lines = []
    for name, res in results.items():
        if "profile" not in res:
            continue
        lines.append("{}: {:.3f} s of self CPU time in one inference".format(name, res["profile_total_s"]))
        lines.append("| op | calls | self time | share | library |")
        lines.append("| --- | ---: | ---: | ---: | --- |")
        for r in res["profile"]:
            lines.append("| {} | {} | {:.0f} ms | {:.1%} | {} |".format(
                r["name"], r["calls"], r["self_s"] * 1e3, r["share"], r["library"]))
        lines.append("")
    return "\n".join(lines)
