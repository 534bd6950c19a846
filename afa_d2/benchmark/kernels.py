"""``--kernels``: the kernels behind the neck figures, and the yardsticks and floor of the inference table.

The yardsticks are timed among the necks: a 256 -> 256 3x3 convolution of the p3-sized map (the op FPN's
neck is made of; each neck's GFLOP/s is reported as a share of its rate, "of 3x3 conv") and, on the CPU,
the finest level's attention every way afa_d2 computes it; from their rates :func:`add_floor` gives the
least each attention model can take on this host ("floor"). ``--kernels`` (:func:`measure_kernels`) times
every product behind these figures every way afa_d2 computes it, on the R-CNNs' shapes: p2 and the RoI
heads.
"""
import argparse
import statistics
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from afa_d2.engine.precision import precision_scope

from .timing import spread, time_interleaved
from .variants import BASE, in_precision

REFERENCE_CONV = "reference: 3x3 conv"
#: Names of the attention kernels timed among the necks for the floor (removed from the results).
FLOOR_ATTENTION = "floor: attention, {}"


def conv3x3(h: int, w: int, device: torch.device, seed: int = 0):
    """The yardstick: a 256 -> 256 3x3 convolution (no bias) of a random channels-last (1, 256, h, w)
    map, the op FPN's neck is made of, through the device's library (oneDNN on the CPU, cuDNN on
    CUDA). Returns (function, multiply-adds per call)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 256, h, w, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(256, 256, 3, 3, generator=g) * 0.02).to(device).contiguous(memory_format=torch.channels_last)
    return (lambda: torch.nn.functional.conv2d(x, weight, padding=1)), h * w * 256 * 256 * 9


def reference_conv(padded_size, device: torch.device):
    """The host's rate for the op FPN's neck is made of: :func:`conv3x3` on a map the size of p3
    (stride 8) of the benchmark's padded input. Returns (function, multiply-adds per call).

    Timed among the necks, it turns a neck's GFLOP/s into a share of what this host's convolution
    library reaches here: a figure that travels between hosts better than GFLOP/s itself.
    """
    return conv3x3(-(-int(padded_size[0]) // 8), -(-int(padded_size[1]) // 8), device)


def p2_attention(padded_hw, seed: int = 0, *, stride: int = 4, pooling: str = "multi_scale",
                 pool_strides: Sequence[int] = (16, 32), adaptive_pool_size: int = 7, channels: int = 256,
                 heads: int = 4):
    """MS-Att's largest attention on random inputs: by default p2 (stride 4) of an input padded to
    ``padded_hw``, 256 channels, 4 heads, the multi-scale pooled keys of pool stride 16 (the R-50 R-CNN
    configs' p2); another level through the keywords (:func:`_finest_attention`).

    Returns (q tokens (1, H*W, C), k, v (1, heads, M, C/heads), (H, W), multiply-adds of QK^T and PV)."""
    from afa_d2.modeling.pooling import pool_windows

    h, w = (-(-int(size) // stride) for size in padded_hw)
    c = channels
    m = sum(p.tokens for p in pool_windows(h, w, pooling, tuple(pool_strides), adaptive_pool_size))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, h * w, c, generator=g)
    k, v = (torch.randn(1, heads, m, c // heads, generator=g) for _ in range(2))
    return tokens, k, v, (h, w), 2 * h * w * m * c


def _finest_attention(neck: nn.Module) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The pyramid level of ``neck`` (an AttentionFPN) with the largest attention, the finest level whose
    operator has an MS-Att: (its name, the keywords of :func:`p2_attention` for it); None without one.
    p2 with pool strides (16, 32) in the R-50 R-CNNs, p3 with (8, 16) in RetinaNet and FCOS."""
    from afa_d2.modeling.ms_attention import MSAttention

    for level in getattr(neck, "levels", ()):
        agg = getattr(neck, "fpn_aggregation{}".format(level[1:]), None)
        attn = next((m for m in agg.modules() if isinstance(m, MSAttention)), None) if agg is not None else None
        if attn is not None:
            return level, {"stride": neck.output_shape()[level].stride, "pooling": attn.pooling,
                           "pool_strides": attn.pool_strides, "adaptive_pool_size": attn.adaptive_pool_size,
                           "channels": attn.dim, "heads": attn.num_heads}
    return None


def scoped(fn, precision: str, device: torch.device):
    """``fn`` run under :func:`precision_scope` (autocast for bf16 / fp16)."""
    def run():
        with precision_scope(precision, device):
            return fn()

    return run


def add_floor(results: Dict[str, Dict[str, Any]], conv_rate: Dict[str, float],
              attention_rate: Dict[str, Optional[float]]) -> None:
    """The least each attention variant's whole model can take on this host, as a ratio to the baseline model's
    measured time in the same precision: that time plus the neck's extra multiply-adds at the best rates timed
    here in that precision, attention's at ``attention_rate[precision]`` (the faster of SDPA and the grouped 1x1
    convolutions on the finest attention level, p2 of the R-CNNs, p3 of RetinaNet and FCOS:
    :func:`_finest_attention`; GMAC/s) and the rest (token linears, pooled K/V, depth-wise conv) at
    ``conv_rate[precision]`` (the 3x3 convolution's); work without multiply-adds (LayerNorm, GELU, resizes,
    adds) counted as free. What goal 1 of issue #12 can reach here.
    """
    for r in results.values():
        precision = r.get("precision", "fp32")
        base = results.get(in_precision(BASE, precision))
        rate = attention_rate.get(precision)
        if r.get("neck_sdpa_flops") and base is not None and rate:
            other = max(0, r["neck_flops"] - r["neck_sdpa_flops"] - base["neck_flops"])
            extra_s = r["neck_sdpa_flops"] / 1e9 / rate + other / 1e9 / conv_rate[precision]
            r["attention_gmacs_per_s"] = rate
            r["model_floor_ratio"] = (base["model_latency_s"] + extra_s) / base["model_latency_s"]



def measure_kernels(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """The rates of the kernels behind the neck figures, on MS-Att's largest level (p2 of the benchmark's
    padded input, 256 channels, 4 heads, the multi-scale pooled keys of pool stride 16), interleaved.

    Each product is timed every way afa_d2 can compute it, after the ways are checked to agree (1e-4
    relative): the token linear through BLAS (``F.linear``) and as a 1x1 convolution (oneDNN);
    attention through SDPA, as grouped 1x1 convolutions, and as plain GEMMs with a softmax between
    (``bmm``, the score tensor materialised); the softmax alone (no multiply-adds, but the exponentials
    the neck's FLOP count leaves out); and the 3x3 convolution FPN's neck is made of, the yardstick.
    Then the RoI heads' products that every operator shares, each way ``prepare_for_cpu_inference`` can
    take: the box head's fc1 on ``--proposals`` rows (``F.linear``, or the rows as a 1x1 convolution)
    and one of the mask head's 3x3 convolutions on ``--detections-per-image`` maps of 14 x 14 (oneDNN,
    or NNPACK where this build has it). The two ways the kernel probe chooses between are its own
    functions (``afa_d2.execution.kernels.linear_ways``, ``attention_ways``, ``conv3x3_ways``), the ones
    the layers call. CPU only (the convolution attention is a CPU path).
    """
    if args.device != "cpu":
        raise ValueError("--kernels measures the CPU kernels (got --device {})".format(args.device))
    g = torch.Generator().manual_seed(args.seed + 1)
    kernels, shape = _p2_kernels(args, g)
    kernels.update(_roi_head_kernels(args, g))
    with torch.no_grad():
        _check_agreement(kernels)
        times = time_interleaved({name: kernel[0] for name, kernel in kernels.items()}, args.iters, args.warmup,
                                 torch.device("cpu"))
    conv_name = next(iter(kernels))
    results: Dict[str, Dict[str, Any]] = {}
    for name, (_, macs, product, input_shape) in kernels.items():
        t = statistics.median(times[name])
        results[name] = {"op": name, "product": product, "macs": macs, "latency_s": t,
                         "latency_spread": spread(times[name]), "gmacs_per_s": macs / 1e9 / t if macs else None,
                         **shape, "input": input_shape}
    conv_rate = results[conv_name]["gmacs_per_s"]
    for r in results.values():
        r["of_conv3x3"] = r["gmacs_per_s"] / conv_rate if r["gmacs_per_s"] else None
    return results


def _p2_kernels(args: argparse.Namespace, g: torch.Generator):
    """MS-Att's products on p2 of the padded input, each every way (the 3x3 convolution, the yardstick, first):
    name -> (function, multiply-adds, product it computes, its input's shape); and p2's "tokens", "keys"
    and "map" (its height and width)."""
    from afa_d2.execution.kernels import attention_ways, linear_ways

    padded = [-(-size // 32) * 32 for size in (args.height, args.width)]
    tokens, k, v, (h, w), attention_macs = p2_attention(padded, args.seed)  # p2 of the padded input
    n, c, heads, m = h * w, tokens.shape[2], k.shape[1], k.shape[2]
    d = c // heads
    w1, b1 = torch.randn(2 * c, c, generator=g) * c ** -0.5, torch.randn(2 * c, generator=g)
    conv, conv_macs = conv3x3(h, w, torch.device("cpu"), args.seed)
    scores = torch.randn(n, heads, m, generator=g)

    def attend_bmm():
        q = tokens.view(n, heads, d).transpose(0, 1)  # (heads, N, d)
        p = torch.bmm(q, k[0].transpose(1, 2) * d ** -0.5).softmax(-1)  # (heads, N, M)
        return torch.bmm(p, v[0]).transpose(0, 1).reshape(1, n, c)

    linear_macs = n * c * 2 * c
    # the ways the kernel probe chooses between (afa_d2.execution.kernels), on p2's shapes
    linear, attention = linear_ways(tokens, w1, b1, (h, w)), attention_ways(tokens, k, v, (h, w))
    p2 = [1, n, c]  # the p2 products' input: (1, tokens, channels)
    kernels = {
        "3x3 conv 256->256 (oneDNN)": (conv, conv_macs, "conv3x3", p2),
        "linear 256->512, F.linear (BLAS)": (linear["plain"], linear_macs, "linear", p2),
        "linear 256->512, 1x1 conv (oneDNN)": (linear["conv"], linear_macs, "linear", p2),
        "attention, SDPA": (attention["plain"], attention_macs, "attention", p2),
        "attention, grouped 1x1 convs": (attention["conv"], attention_macs, "attention", p2),
        "attention, bmm + softmax": (attend_bmm, attention_macs, "attention", p2),
        "softmax alone ({} x {} x {})".format(n, heads, m): (lambda: scores.softmax(-1), 0, "softmax", p2),
    }
    return kernels, {"tokens": n, "keys": m, "map": [h, w]}


def _roi_head_kernels(args: argparse.Namespace, g: torch.Generator, c: int = 256):
    """The RoI heads' products, each every way (R-50 FPN defaults: fc1 on 256 x 7 x 7 pooled features of
    ``--proposals`` rows; one of the mask head's 3x3 convolutions on ``--detections-per-image`` maps of
    ``c`` x 14 x 14), as :func:`_p2_kernels` gives them."""
    from afa_d2.execution.kernels import conv3x3_ways, linear_ways

    kernels = {}
    rows, fc_in, fc_out = args.proposals, 256 * 7 * 7, 1024
    fc_w, fc_b = torch.randn(fc_out, fc_in, generator=g) * fc_in ** -0.5, torch.randn(fc_out, generator=g)
    fc1 = linear_ways(torch.randn(rows, fc_in, generator=g), fc_w, fc_b)
    for way, what in (("plain", "F.linear (BLAS)"), ("conv", "1x1 conv (oneDNN)")):
        kernels["box fc1 {}->{} on {} rows, {}".format(fc_in, fc_out, rows, what)] = (
            fc1[way], rows * fc_in * fc_out, "box fc1", [rows, fc_in])
    maps = args.detections_per_image
    mask_w, mask_b = torch.randn(c, c, 3, 3, generator=g) * (9 * c) ** -0.5, torch.randn(c, generator=g)
    mask = conv3x3_ways(torch.randn(maps, c, 14, 14, generator=g), mask_w, mask_b)
    for way, library in (("plain", "oneDNN"), ("conv", "NNPACK")):
        if way in mask:  # NNPACK only where this build has it
            kernels["mask head 3x3 conv on {} x {} x 14 x 14, {}".format(maps, c, library)] = (
                mask[way], maps * 14 * 14 * c * c * 9, "mask 3x3", [maps, c, 14, 14])
    return kernels


def _check_agreement(kernels) -> None:
    """Every kernel computes what the first kernel of its product computes (1e-4): else the rates would not
    compare, and nothing is timed."""
    first: Dict[str, torch.Tensor] = {}
    for name, (fn, _, product, _) in kernels.items():
        out = fn()
        if product in first and not torch.allclose(out, first[product], rtol=1e-4, atol=1e-4):
            raise AssertionError("{}: differs from the first {} kernel by {:.2e}; the rates would not "
                                 "compare".format(name, product, (out - first[product]).abs().max().item()))
        first.setdefault(product, out)


def format_kernels(results: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| kernel | ms | GMAC/s | of 3x3 conv |", "| --- | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append("| {} | {:.1f} ±{:.0f}% | {} | {} |".format(
            name, 1e3 * r["latency_s"], 50 * r["latency_spread"],
            "{:.1f}".format(r["gmacs_per_s"]) if r["gmacs_per_s"] else "-",
            "{:.2f}".format(r["of_conv3x3"]) if r["of_conv3x3"] else "-"))
    return "\n".join(lines)
