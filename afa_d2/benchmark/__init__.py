"""Side-by-side cost of the aggregation operators (docs/DESIGN.md, "What is measured"): ``python tools/benchmark.py``.

For each operator (sum, concat, mssa, msca by default), on the same input, in one run:

* parameters of the neck (AttentionFPN without its bottom-up) and of the whole model;
* FLOPs counted by fvcore (one multiply-add = one flop, detectron2's convention), with a handle
  for ``aten::scaled_dot_product_attention`` (fvcore has none and would skip attention): it
  counts the two matmuls, ``Q K^T`` and ``softmax(.) V``;
* inference latency of the neck alone (on precomputed bottom-up features) and of the whole
  detector (``--model``: detectron2's LazyConfig ``common/models/mask_rcnn_fpn.py``,
  ``cascade_rcnn.py``, ``retinanet.py`` or ``fcos.py`` with the FPN replaced by
  :class:`~afa_d2.modeling.AttentionFPN`, as ``configs/common/models/*_afpn.py`` do), batch 1; each
  also as a ratio to "sum", and the neck's achieved GFLOP/s;
* with ``--train``: the training step's time and peak memory, each variant in fresh subprocesses
  so the peaks do not mix (CUDA: ``max_memory_allocated``; CPU: the weights plus the peak rise of
  RSS during the steps, with glibc made to unmap freed blocks so that RSS follows the live
  tensors). ``--train-config configs/shapes/mask_rcnn_R_18_sum.py`` measures on that config's
  model, optimizer and data (the operator set per variant); ``--train-only`` skips inference;
* with ``--reference``: "mssa:ref" / "msca:ref" beside "mssa" / "msca", the same models (same
  weights) run on the straightforward path (:func:`~afa_d2.modeling.aggregation.use_reference_path`),
  the before/after of the fast path;
* with ``--checkpoint-mlp`` (and ``--train``): "mssa:ckpt" / "msca:ckpt", trained with each
  MS-Att's DW-MLP recomputed in backward (``checkpoint_mlp=True``), memory traded for time.

On the CPU the inference table also times a 256 -> 256 3x3 convolution of the p3-sized map among
the necks, and gives each neck's GFLOP/s as a share of that rate ("of 3x3 conv"). Other modes:
``--kernels`` (:func:`measure_kernels`: the kernels behind the neck figures, each product every way
afa_d2 computes it, on the R-CNNs' shapes: p2 and the RoI heads; refused for RetinaNet and FCOS),
``--profile N`` (:func:`profile_inference`: where one inference spends its time, op by op, with the
library behind each) and ``--vs-stock`` (stock detectron2 eager against afa_d2's CPU settings, two
worker processes side by side); every mode but ``--kernels`` takes any ``--model``.

Timing is interleaved: every timed repetition runs each variant once, in an order rotated from
one repetition to the next, so a load change on a shared machine hits every variant alike; the
median is reported, and the spread ((max - min) / median over the repetitions) beside it.

The weights are random (nothing is downloaded): the bottom-up uses ``--norm`` (GN by default;
FrozenBN or BN in eval mode at random init blow the activations up to ~1e4 and leave a handful
of proposals), every variant shares the weights of the parts it has in common with "sum" (the
bottom-up, lateral/output convs, heads), and the test score threshold is 0, so the heads do
(nearly) the same work for every operator. The whole-model cost still depends on how many boxes
enter and leave NMS: both are reported. R-CNNs: the RPN's proposals (``--proposals`` after its NMS)
and the detections that reach the mask head (``--detections-per-image``). RetinaNet and FCOS have
neither proposals nor RoI heads: their counterparts are the candidates entering the final NMS
(``--proposals`` is their ``test_topk_candidates``, the top candidates kept per level; with the
threshold at 0 every level fills it) and the detections kept after it (``max_detections_per_image``).
Only the candidates need to match there: nothing runs on a one-stage detector's detections but their
resize to the input's size, and with random weights its NMS may keep few of them (FCOS: tens), a
different number for each operator.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import afa_d2  # noqa: F401  (compat patches before detectron2)
import torch
from torch import nn

from afa_d2.engine.precision import PRECISIONS, PrecisionError, check_precision, cpu_bf16_support, precision_scope
from afa_d2.modeling.aggregation import AGGREGATION_OPS, baseline_operator, use_checkpoint_mlp, use_reference_path
from afa_d2.modeling.inference import TraceableInference

OPS = tuple(AGGREGATION_OPS)  # the registry's order: the baseline (sum) first
#: --model -> detectron2's LazyConfig whose FPN becomes AttentionFPN
MODELS = {"mask_rcnn": "common/models/mask_rcnn_fpn.py", "cascade_mask_rcnn": "common/models/cascade_rcnn.py",
          "retinanet": "common/models/retinanet.py", "fcos": "common/models/fcos.py"}
#: the one-stage (dense) detectors: no proposals, no RoI heads; p3..p7
ONE_STAGE = ("retinanet", "fcos")
ATTENTION_OPS = tuple(op for op, cls in AGGREGATION_OPS.items() if cls.uses_attention)
BASE = baseline_operator()
REF_SUFFIX = ":ref"
CKPT_SUFFIX = ":ckpt"  # MSAttention(checkpoint_mlp=True): a training-memory option, same operator
PRECISION_SEP = "@"  # "msca@bf16": the same model run under autocast in bf16 (afa_d2.engine.precision)


def variant_names(ops: Sequence[str], reference: bool, checkpoint_mlp: bool = False,
                  precisions: Sequence[str] = ("fp32",)) -> List[str]:
    """The variants measured: ``ops``, plus after each attention op "<op>:ref" with ``reference``
    and "<op>:ckpt" (training only) with ``checkpoint_mlp``; then ``ops`` again for each precision but
    fp32, as "<op>@<precision>" (inference only)."""
    names: List[str] = []
    for op in ops:
        names.append(op)
        if reference and op in ATTENTION_OPS:
            names.append(op + REF_SUFFIX)
        if checkpoint_mlp and op in ATTENTION_OPS:
            names.append(op + CKPT_SUFFIX)
    for precision in precisions:
        if precision != "fp32":
            names += [op + PRECISION_SEP + precision for op in ops]
    return names


def variant_precision(name: str) -> str:
    """"msca@bf16" -> "bf16"; any other variant -> "fp32"."""
    return name.split(PRECISION_SEP, 1)[1] if PRECISION_SEP in name else "fp32"


def split_variant(name: str):
    """"mssa:ref" -> ("mssa", True); "mssa", "mssa:ckpt" or "mssa@bf16" -> ("mssa", False)."""
    name = name.split(PRECISION_SEP, 1)[0]
    if name.endswith(CKPT_SUFFIX):
        name = name[: -len(CKPT_SUFFIX)]
    if name.endswith(REF_SUFFIX):
        return name[: -len(REF_SUFFIX)], True
    return name, False


# --------------------------------------------------------------------------------------- FLOPs
def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: ``Q K^T`` plus ``A V`` MACs.

    q: (..., N_q, d), k: (..., N_k, d), v: (..., N_k, d_v) -> (prod(...) * N_q * N_k * (d + d_v)).
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(max(a, b) for a, b in zip(q[:-2], k[:-2]))
    return int(batch * q[-2] * k[-2] * (q[-1] + v[-1]))


def flop_analysis(module: nn.Module, inputs: tuple):
    """fvcore ``FlopCountAnalysis`` with the attention handle, warnings off."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


class _NeckOnly(nn.Module):
    """AttentionFPN.aggregate with tensor inputs, for tracing."""

    def __init__(self, neck: nn.Module):
        super().__init__()
        self.neck = neck

    def forward(self, *features: torch.Tensor):
        out = self.neck.aggregate(dict(zip(self.neck.in_features, features)))
        return tuple(out.values())


# --------------------------------------------------------------------------------------- model
def build_model(
    op: str,
    model: str = "mask_rcnn",
    norm: str = "GN",
    seed: int = 0,
    detections_per_image: int = 100,
    proposals: int = 1000,
    shared_state: Optional[Dict[str, torch.Tensor]] = None,
) -> nn.Module:
    """detectron2's LazyConfig detector ``MODELS[model]`` with AttentionFPN(aggregation=op) as its
    backbone (the pyramid, bottom-up levels and top block of detectron2's FPN there: p2..p6 from
    res2..res5 for the R-CNNs, p3..p7 from res3..res5 for RetinaNet and FCOS), the test-time budget of
    :func:`_set_inference_budget`.

    ``shared_state`` (e.g. the "sum" model's state_dict) is loaded non-strictly, so the
    variants differ only in their operators' own weights.
    """
    from detectron2 import model_zoo
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    from afa_d2.modeling import AttentionFPN

    if model not in MODELS:
        raise ValueError("unknown model {!r}; valid: {}".format(model, ", ".join(MODELS)))
    cfg = model_zoo.get_config(MODELS[model]).model
    fpn = cfg.backbone
    fpn.bottom_up.stem.norm = norm
    fpn.bottom_up.stages.norm = norm
    cfg.backbone = L(AttentionFPN)(
        bottom_up=fpn.bottom_up,
        in_features="${.bottom_up.out_features}",  # res2..res5 (R-CNNs) or res3..res5 (RetinaNet, FCOS)
        out_channels=fpn.out_channels,
        aggregation=op,
        top_block=fpn.top_block,  # LastLevelMaxPool (p6), or LastLevelP6P7 from res5 (RetinaNet) / p5 (FCOS)
    )
    _set_inference_budget(cfg, detections_per_image, proposals)
    torch.manual_seed(seed)
    detector = instantiate(cfg)
    if shared_state is not None:
        detector.load_state_dict(shared_state, strict=False)
    return detector


def _set_inference_budget(cfg, detections_per_image: int, proposals: int) -> None:
    """Test-time settings of a detector's LazyConfig (``cfg``: its ``model``) that keep the heads' work
    the same for every operator on random weights: the score threshold at 0, so that the boxes entering
    NMS are the top-k, not those random scores let through.

    R-CNNs: the box predictors' ``test_score_thresh`` 0 and ``test_topk_per_image`` =
    ``detections_per_image``, the RPN's test ``post_nms_topk`` = ``proposals``. RetinaNet and FCOS (no
    proposals, no RoI heads): ``test_score_thresh`` 0, ``test_topk_candidates`` = ``proposals`` (per
    level, before the final NMS), ``max_detections_per_image`` = ``detections_per_image``.
    """
    if "roi_heads" not in cfg:  # RetinaNet, FCOS (DenseDetector)
        cfg.test_score_thresh = 0.0
        cfg.test_topk_candidates = proposals
        cfg.max_detections_per_image = detections_per_image
        return
    for p in cfg.roi_heads.get("box_predictors") or [cfg.roi_heads.box_predictor]:
        p.test_score_thresh = 0.0
        p.test_topk_per_image = detections_per_image
    cfg.proposal_generator.post_nms_topk = (cfg.proposal_generator.post_nms_topk[0], proposals)


@contextlib.contextmanager
def _counting_nms_boxes(model: nn.Module, counts: Dict[str, int]) -> Iterator[None]:
    """Within the block, ``model``'s forward records in ``counts`` how many boxes entered its last NMS:
    "proposals" (an R-CNN's RPN output, the RoI heads' input) or "candidates" (RetinaNet's / FCOS's
    top-k of every level, into the final NMS)."""
    generator = getattr(model, "proposal_generator", None)
    if generator is not None:
        hook = generator.register_forward_hook(lambda m, i, o: counts.__setitem__("proposals", len(o[0][0])))
        try:
            yield
        finally:
            hook.remove()
        return
    decode = getattr(model, "_decode_multi_level_predictions", None)  # DenseDetector: every level's top-k
    if decode is None:
        yield
        return

    def counted(*args, **kwargs):
        candidates = decode(*args, **kwargs)
        counts["candidates"] = len(candidates)
        return candidates

    model._decode_multi_level_predictions = counted  # shadows the method on this instance only
    try:
        yield
    finally:
        del model._decode_multi_level_predictions


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _time(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(_time_once(fn, device) for _ in range(max(1, iters)))


def time_interleaved(
    fns: Dict[str, Any], iters: int, warmup: int, device: torch.device
) -> Dict[str, List[float]]:
    """Seconds of each ``fns[name]()``, interleaved: every repetition runs each once.

    The order is rotated by one from a repetition to the next, so no variant always runs
    first (or right after a heavier one). Returns name -> the ``iters`` timings.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for it in range(max(1, iters)):
        k = it % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_time_once(fns[name], device))
    return times


def _spread(times: Sequence[float]) -> float:
    """(max - min) / median."""
    med = statistics.median(times)
    return (max(times) - min(times)) / med if med > 0 else 0.0


def _image(height: int, width: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (torch.rand(3, height, width, generator=g) * 255).to(device)


def _build(op: str, args: argparse.Namespace, shared_state=None) -> nn.Module:
    return build_model(
        op, args.model, args.norm, args.seed, args.detections_per_image, args.proposals,
        shared_state,
    )


def shared_state_dict(args: argparse.Namespace) -> Dict[str, torch.Tensor]:
    """The "sum" model's weights, the common part of every variant."""
    return _build(BASE, args).state_dict()


REFERENCE_CONV = "reference: 3x3 conv"


def _conv3x3(h: int, w: int, device: torch.device, seed: int = 0):
    """The yardstick: a 256 -> 256 3x3 convolution (no bias) of a random channels-last (1, 256, h, w)
    map, the op the sum-up neck is made of, through the device's library (oneDNN on the CPU, cuDNN on
    CUDA). Returns (function, multiply-adds per call)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 256, h, w, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(256, 256, 3, 3, generator=g) * 0.02).to(device).contiguous(memory_format=torch.channels_last)
    return (lambda: torch.nn.functional.conv2d(x, weight, padding=1)), h * w * 256 * 256 * 9


def _reference_conv(padded_size, device: torch.device):
    """The host's rate for the op the sum-up neck is made of: :func:`_conv3x3` on a map the size of p3
    (stride 8) of the benchmark's padded input. Returns (function, multiply-adds per call).

    Timed among the necks, it turns a neck's GFLOP/s into a share of what this host's convolution
    library reaches here: a figure that travels between hosts better than GFLOP/s itself.
    """
    return _conv3x3(-(-int(padded_size[0]) // 8), -(-int(padded_size[1]) // 8), device)


def _p2_attention(padded_hw, seed: int = 0, *, stride: int = 4, pooling: str = "multi_scale",
                  pool_strides: Sequence[int] = (16, 32), adaptive_pool_size: int = 7, channels: int = 256,
                  heads: int = 4):
    """MS-Att's largest attention on random inputs: by default p2 (stride 4) of an input padded to
    ``padded_hw``, 256 channels, 4 heads, the multi-scale pooled keys of pool stride 16 (the R-50 R-CNN
    configs' p2); another level through the keywords (:func:`_finest_attention`).

    Returns (q tokens (1, H*W, C), k, v (1, heads, M, C/heads), (H, W), multiply-adds of QK^T and PV)."""
    from afa_d2.modeling.ms_attention import pool_windows

    h, w = (-(-int(size) // stride) for size in padded_hw)
    c = channels
    m = sum(p.tokens for p in pool_windows(h, w, pooling, tuple(pool_strides), adaptive_pool_size))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, h * w, c, generator=g)
    k, v = (torch.randn(1, heads, m, c // heads, generator=g) for _ in range(2))
    return tokens, k, v, (h, w), 2 * h * w * m * c


def _finest_attention(neck: nn.Module) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The pyramid level of ``neck`` (an AttentionFPN) with the largest attention, the finest level whose
    operator has an MS-Att: (its name, the keywords of :func:`_p2_attention` for it); None without one.
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


#: Names of the attention kernels timed among the necks for the floor (removed from the results).
_FLOOR_ATTENTION = "floor: attention, {}"


def measure_inference(
    names: Sequence[str],
    args: argparse.Namespace,
    shared_state: Optional[Dict[str, torch.Tensor]] = None,
    sum_model: Optional[nn.Module] = None,
) -> Dict[str, Dict[str, Any]]:
    """Parameters, FLOPs and (interleaved) inference latency of the variants ``names``.

    A variant is an operator ("mssa") or its straightforward path ("mssa:ref", the same model
    object, so the same weights). ``sum_model``: the already built "sum" model.
    """
    device = torch.device(args.device)
    image = _image(args.height, args.width, device)
    models: Dict[str, nn.Module] = {}
    results: Dict[str, Dict[str, Any]] = {}
    neck_fns: Dict[str, Any] = {}
    model_fns: Dict[str, Any] = {}
    counts: Dict[str, Dict[str, int]] = {}
    inputs = [{"image": image, "height": args.height, "width": args.width}]
    with torch.no_grad():
        for name in names:
            op, reference = split_variant(name)
            if op not in models:
                built = sum_model if op == BASE and sum_model is not None else _build(op, args, shared_state)
                models[op] = built.to(device).eval()
                if device.type == "cpu":  # afa_d2's CPU inference set-up (the same for every variant)
                    from afa_d2.execution.runtime import prepare_for_cpu_inference

                    prepare_for_cpu_inference(models[op])
            model = models[op]
            neck = model.backbone
            use_reference_path(model, reference)
            precision = variant_precision(name)
            # The model pads to size_divisibility itself; the neck gets the same padded input.
            images = model.preprocess_image([{"image": image}])
            with precision_scope(precision, device):
                feats = neck.bottom_up(images.tensor)
            same_model = next((r for n, r in results.items() if split_variant(n) == (op, reference)), None)
            if same_model is not None:  # another precision of a model counted already: the same counts
                res = {k: v for k, v in same_model.items() if k.endswith(("_params", "_flops"))}
            else:
                res = {"neck_params": _params(neck) - _params(neck.bottom_up), "model_params": _params(model)}
                feat_list = tuple(feats[f].float() for f in neck.in_features)
                neck_flops = flop_analysis(_NeckOnly(neck).eval(), feat_list)
                res["neck_flops"] = int(neck_flops.total())
                res["neck_sdpa_flops"] = int(neck_flops.by_operator().get("scaled_dot_product_attention", 0))
                if not args.skip_model_flops:
                    model_flops = flop_analysis(TraceableInference(model).eval(), (image,))
                    res["model_flops"] = int(model_flops.total())
                    res["model_sdpa_flops"] = int(
                        model_flops.by_operator().get("scaled_dot_product_attention", 0)
                    )
            res["op"] = name
            res["precision"] = precision
            results[name] = res
            counts[name] = {}

            def run_neck(model=model, neck=neck, feats=feats, reference=reference, precision=precision):
                use_reference_path(model, reference)
                with precision_scope(precision, device):
                    neck.aggregate(feats)

            def run_model(model=model, reference=reference, c=counts[name], precision=precision):
                use_reference_path(model, reference)
                with _counting_nms_boxes(model, c), precision_scope(precision, device):
                    c["detections"] = len(model(inputs)[0]["instances"])

            neck_fns[name] = run_neck
            model_fns[name] = run_model
        # The yardsticks, timed among the necks under the same conditions, once per precision measured (each in
        # that precision: bf16's convolution and attention kernels are not fp32's).
        precisions = sorted({res["precision"] for res in results.values()}, key=lambda p: p != "fp32")
        reference_conv, reference_macs = _reference_conv(images.tensor.shape[-2:], device)
        floor_fns: Dict[str, Dict[str, Any]] = {p: {} for p in precisions}
        finest = next(filter(None, (_finest_attention(m.backbone) for m in models.values())), None)
        attention_ways_of = None
        if device.type == "cpu" and BASE in results and finest and any(r["neck_sdpa_flops"] for r in results.values()):
            from afa_d2.execution.kernels import attention_ways

            q, k, v, level_hw, attention_macs = _p2_attention(images.tensor.shape[-2:], args.seed, **finest[1])
            attention_ways_of = attention_ways(q, k, v, level_hw)
        for p in precisions:
            neck_fns[_in_precision(REFERENCE_CONV, p)] = _scoped(reference_conv, p, device)
            for way, fn in (attention_ways_of or {}).items():
                floor_fns[p][_in_precision(_FLOOR_ATTENTION.format(way), p)] = _scoped(fn, p, device)
            neck_fns.update(floor_fns[p])
        neck_times = time_interleaved(neck_fns, args.iters, args.warmup, device)
        conv_rate = {p: reference_macs / 1e9 / statistics.median(neck_times.pop(_in_precision(REFERENCE_CONV, p)))
                     for p in precisions}
        attention_rate = {p: max((attention_macs / 1e9 / statistics.median(neck_times.pop(name))
                                  for name in floor_fns[p]), default=None) for p in precisions}
        model_times = time_interleaved(model_fns, args.iters, args.warmup, device)
    for name, res in results.items():
        res["neck_latency_s"] = statistics.median(neck_times[name])
        res["neck_latency_spread"] = _spread(neck_times[name])
        res["model_latency_s"] = statistics.median(model_times[name])
        res["model_latency_spread"] = _spread(model_times[name])
        res.update(counts[name])
        res["neck_gflops_per_s"] = res["neck_flops"] / 1e9 / res["neck_latency_s"]
        res["reference_conv_gmacs_per_s"] = conv_rate[res["precision"]]
        res["neck_of_reference_conv"] = res["neck_gflops_per_s"] / conv_rate[res["precision"]]
    if any(attention_rate.values()):
        add_floor(results, conv_rate, attention_rate)
        for res in results.values():
            if "attention_gmacs_per_s" in res:
                res["attention_rate_level"] = finest[0]
    for model in models.values():
        use_reference_path(model, False)
    return results


# ----------------------------------------------------------------------------------- profile
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


def measure_kernels(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """The rates of the kernels behind the neck figures, on MS-Att's largest level (p2 of the benchmark's
    padded input, 256 channels, 4 heads, the multi-scale pooled keys of pool stride 16), interleaved.

    Each product is timed every way afa_d2 can compute it, after the ways are checked to agree (1e-4
    relative): the token linear through BLAS (``F.linear``) and as a 1x1 convolution (oneDNN);
    attention through SDPA, as grouped 1x1 convolutions, and as plain GEMMs with a softmax between
    (``bmm``, the score tensor materialised); the softmax alone (no multiply-adds, but the exponentials
    the neck's FLOP count leaves out); and the 3x3 convolution the sum-up neck is made of, the yardstick.
    Then the RoI heads' products that every operator shares, each way ``prepare_for_cpu_inference`` can
    take: the box head's fc1 on ``--proposals`` rows (``F.linear``, or the rows as a 1x1 convolution)
    and one of the mask head's 3x3 convolutions on ``--detections-per-image`` maps of 14 x 14 (oneDNN,
    or NNPACK where this build has it). The two ways the kernel probe chooses between are its own
    functions (``afa_d2.execution.kernels.linear_ways``, ``attention_ways``, ``conv3x3_ways``), the ones
    the layers call. CPU only (the convolution attention is a CPU path).
    """
    from afa_d2.execution.kernels import attention_ways, conv3x3_ways, linear_ways

    if args.device != "cpu":
        raise ValueError("--kernels measures the CPU kernels (got --device {})".format(args.device))
    padded = [-(-size // 32) * 32 for size in (args.height, args.width)]
    tokens, k, v, (h, w), attention_macs = _p2_attention(padded, args.seed)  # p2 of the padded input
    n, c, heads, m = h * w, tokens.shape[2], k.shape[1], k.shape[2]
    d = c // heads
    g = torch.Generator().manual_seed(args.seed + 1)
    w1, b1 = torch.randn(2 * c, c, generator=g) * c ** -0.5, torch.randn(2 * c, generator=g)
    conv3x3, conv3x3_macs = _conv3x3(h, w, torch.device("cpu"), args.seed)
    scores = torch.randn(n, heads, m, generator=g)

    def attend_bmm():
        q = tokens.view(n, heads, d).transpose(0, 1)  # (heads, N, d)
        p = torch.bmm(q, k[0].transpose(1, 2) * d ** -0.5).softmax(-1)  # (heads, N, M)
        return torch.bmm(p, v[0]).transpose(0, 1).reshape(1, n, c)

    linear_macs = n * c * 2 * c
    # the ways the kernel probe chooses between (afa_d2.execution.kernels), on p2's shapes
    linear, attention = linear_ways(tokens, w1, b1, (h, w)), attention_ways(tokens, k, v, (h, w))
    p2 = [1, n, c]  # the p2 products' input: (1, tokens, channels)
    kernels = {  # name -> (function, multiply-adds, product it computes, its input's shape)
        "3x3 conv 256->256 (oneDNN)": (conv3x3, conv3x3_macs, "conv3x3", p2),
        "linear 256->512, F.linear (BLAS)": (linear["plain"], linear_macs, "linear", p2),
        "linear 256->512, 1x1 conv (oneDNN)": (linear["conv"], linear_macs, "linear", p2),
        "attention, SDPA": (attention["plain"], attention_macs, "attention", p2),
        "attention, grouped 1x1 convs": (attention["conv"], attention_macs, "attention", p2),
        "attention, bmm + softmax": (attend_bmm, attention_macs, "attention", p2),
        "softmax alone ({} x {} x {})".format(n, heads, m): (lambda: scores.softmax(-1), 0, "softmax", p2),
    }
    # the RoI heads (R-50 FPN defaults: fc1 on 256 x 7 x 7 pooled features; the mask head's 256 x 14 x 14)
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
    with torch.no_grad():
        first: Dict[str, torch.Tensor] = {}
        for name, (fn, _, product, _) in kernels.items():
            out = fn()
            if product in first and not torch.allclose(out, first[product], rtol=1e-4, atol=1e-4):
                raise AssertionError("{}: differs from the first {} kernel by {:.2e}; the rates would not "
                                     "compare".format(name, product, (out - first[product]).abs().max().item()))
            first.setdefault(product, out)
        del first
        times = time_interleaved({name: kernel[0] for name, kernel in kernels.items()}, args.iters, args.warmup,
                                 torch.device("cpu"))
    conv_name = next(iter(kernels))
    results: Dict[str, Dict[str, Any]] = {}
    for name, (_, macs, product, input_shape) in kernels.items():
        t = statistics.median(times[name])
        results[name] = {"op": name, "product": product, "macs": macs, "latency_s": t,
                         "latency_spread": _spread(times[name]), "gmacs_per_s": macs / 1e9 / t if macs else None,
                         "tokens": n, "keys": m, "map": [h, w], "input": input_shape}
    conv_rate = results[conv_name]["gmacs_per_s"]
    for r in results.values():
        r["of_conv3x3"] = r["gmacs_per_s"] / conv_rate if r["gmacs_per_s"] else None
    return results


def format_kernels(results: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| kernel | ms | GMAC/s | of 3x3 conv |", "| --- | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append("| {} | {:.1f} ±{:.0f}% | {} | {} |".format(
            name, 1e3 * r["latency_s"], 50 * r["latency_spread"],
            "{:.1f}".format(r["gmacs_per_s"]) if r["gmacs_per_s"] else "-",
            "{:.2f}".format(r["of_conv3x3"]) if r["of_conv3x3"] else "-"))
    return "\n".join(lines)


def format_build_info() -> str:
    """:func:`build_info` on one line: "torch 2.x, CPU capability AVX512, BLAS mkl, ..."."""
    return ", ".join("{} {}".format(k, v) for k, v in build_info().items())


def build_info() -> Dict[str, str]:
    """What a CPU figure depends on in this PyTorch build: its CPU kernel path, BLAS, MKL and oneDNN
    versions (from ``torch.__config__.show()``)."""
    import re

    info = {"torch": torch.__version__}
    try:
        info["CPU capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        pass
    config = torch.__config__.show()
    for key, pattern in (("BLAS", r"BLAS_INFO=(\w+)"), ("MKL", r"Math Kernel Library Version ([\w.]+)"),
                         ("oneDNN", r"MKL-DNN (v[\w.]+)")):
        m = re.search(pattern, config)
        if m:
            info[key] = m.group(1)
    return info


def profile_inference(
    names: Sequence[str], args: argparse.Namespace, shared_state: Optional[Dict[str, torch.Tensor]] = None,
    sum_model: Optional[nn.Module] = None, top: int = 12,
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
    from afa_d2.execution.runtime import prepare_for_cpu_inference

    with torch.no_grad():
        for name in names:
            op, reference = split_variant(name)
            model = sum_model if op == BASE and sum_model is not None else _build(op, args, shared_state)
            model = model.eval()
            prepare_for_cpu_inference(model)
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


# ----------------------------------------------------------------------------------- training
def _train_batch(height: int, width: int, device: torch.device) -> List[Dict[str, Any]]:
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(2)
    n = 8
    x0 = torch.rand(n, generator=g) * width * 0.6
    y0 = torch.rand(n, generator=g) * height * 0.6
    bw = (torch.rand(n, generator=g) * 0.35 + 0.05) * width
    bh = (torch.rand(n, generator=g) * 0.35 + 0.05) * height
    boxes = torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    for i, (a, b, c, d) in enumerate(boxes.round().long().tolist()):
        masks[i, b:d, a:c] = True
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, 80, (n,), generator=g)
    inst.gt_masks = BitMasks(masks)
    return [{"image": _image(height, width, device), "instances": inst.to(device)}]


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """VmHWM: the peak RSS since the process started or :func:`_reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _maxrss_bytes()


# glibc malloc keeps freed blocks (and raises its mmap threshold after the first large free), so
# the process's RSS would stay at its first peak: the memory worker runs with a fixed, low mmap
# threshold, so that every tensor-sized block is mapped on allocation and unmapped on free, and
# the peak RSS follows the peak of live tensors. (Slower: the time worker runs without it.)
_MEMORY_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}


def _config_training_setup(op: str, args: argparse.Namespace, device: torch.device):
    """The model, optimizer and first batches of the LazyConfig ``args.train_config``, with
    ``model.backbone.aggregation = op``; the same seed (weights of the common parts, data) for
    every operator."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(args.train_config)
    cfg.model.backbone.aggregation = op
    cfg.dataloader.train.num_workers = 0  # no worker processes in the measured process
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model).to(device).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = iter(instantiate(cfg.dataloader.train))
    batches = [next(loader) for _ in range(max(1, args.warmup) + max(1, args.iters))]
    del loader
    return model, optimizer, batches


def measure_train_step(name: str, args: argparse.Namespace, measure: str = "time") -> Dict[str, Any]:
    """One variant's ("mssa", "mssa:ref") training step time (``measure="time"``) or peak memory
    (``measure="memory"``), in this process.

    With ``args.train_config``, the config's model and optimizer train on its first batches;
    otherwise the benchmark's detector (``--model``) trains with AdamW on one synthetic image of
    ``--height`` x ``--width``. Peak memory is the whole of training (weights, gradients, optimizer
    state, activations): CUDA ``max_memory_allocated``; CPU, the weights' bytes plus the peak rise
    of RSS during the steps over the set-up process (the kernel's peak count restarted through
    ``/proc/self/clear_refs``; run it under ``_MEMORY_WORKER_ENV``, see there).
    """
    device = torch.device(args.device)
    op, reference = split_variant(name)
    if args.train_config:
        model, optimizer, batches = _config_training_setup(op, args, device)
    else:
        model = _build(op, args, shared_state_dict(args)).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches = [_train_batch(args.height, args.width, device)]
    use_reference_path(model, reference)
    use_checkpoint_mlp(model, name.endswith(CKPT_SUFFIX))

    from detectron2.utils.events import EventStorage

    position = [0]

    scaler = torch.amp.GradScaler("cuda") if args.amp else None

    def step():
        batch = batches[position[0] % len(batches)]
        position[0] += 1
        with EventStorage():  # detectron2's heads log training statistics there
            if args.amp:  # as detectron2's AMPTrainer: fp16 autocast, scaled loss
                with torch.autocast("cuda", dtype=torch.float16):
                    losses = model(batch)
            else:
                losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if measure == "memory":
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            # Set-up (imports, config, data, the built model) is done: from here on, what the
            # process adds is what training adds; the weights were allocated before, so they are
            # counted in bytes, as max_memory_allocated counts them on CUDA.
            base = _rss_bytes()
            weights = param_bytes + sum(b.numel() * b.element_size() for b in model.buffers())
            reset = _reset_peak_rss()
        for _ in range(max(1, args.warmup) + 1):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            how = "cuda max_memory_allocated"
        elif reset:
            peak = _peak_rss_bytes() - base + weights
            how = ("weights + peak RSS rise during the steps (grads, AdamW state, activations; "
                   "glibc mmap threshold 16 KiB)")
        else:  # no /proc/self/clear_refs: the process's peak, set-up included
            peak = _maxrss_bytes() - base + weights
            how = "weights + peak RSS of the process above its set-up (glibc mmap threshold 16 KiB)"
        return {"train_peak_mem_bytes": int(peak), "train_mem_measure": how, "train_param_bytes": param_bytes}
    seconds = _time(step, args.iters, max(1, args.warmup), device)
    return {"train_step_s": seconds}


def _train_in_subprocess(name: str, args: argparse.Namespace, measure: str) -> Dict[str, Any]:
    cmd = [
        sys.executable, "-m", "afa_d2.benchmark", "--train-worker", name, "--train-measure", measure,
        "--height", str(args.height), "--width", str(args.width), "--threads", str(args.threads),
        "--iters", str(args.iters), "--warmup", str(args.warmup), "--model", args.model,
        "--device", args.device, "--norm", args.norm, "--seed", str(args.seed),
        "--detections-per-image", str(args.detections_per_image),
        "--proposals", str(args.proposals),
    ] + (["--amp"] if args.amp else [])
    if args.train_config:
        cmd += ["--train-config", args.train_config]
    env = dict(os.environ, **(_MEMORY_WORKER_ENV if measure == "memory" else {}))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError("training worker for {!r} failed:\n{}".format(name, proc.stderr[-4000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_training(names: Sequence[str], args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """Training step time and peak memory of each variant, each in a fresh subprocess.

    ``args.train_rounds`` rounds run every variant once each, in a rotated order (a time worker,
    then a memory worker); the median over rounds (of each round's median step time, and of its
    peak memory) is reported.
    """
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in names}
    names = list(names)
    for r in range(max(1, args.train_rounds)):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            res = _train_in_subprocess(name, args, "time")
            res.update(_train_in_subprocess(name, args, "memory"))
            runs[name].append(res)
    out = {}
    for name, rs in runs.items():
        times = [x["train_step_s"] for x in rs]
        out[name] = {
            "op": name,
            "train_step_s": statistics.median(times),
            "train_step_spread": _spread(times),
            "train_peak_mem_bytes": int(statistics.median(x["train_peak_mem_bytes"] for x in rs)),
            "train_mem_measure": rs[0]["train_mem_measure"],
            "train_param_bytes": rs[0]["train_param_bytes"],
        }
    return out


# --------------------------------------------------------------------- afa_d2's settings vs stock
# What a process runs with: "stock" is detectron2 eager as it comes (glibc's allocator, F.linear and
# SDPA; for "sum", detectron2's own FPN class), "afa_d2" what afa_d2's CPU commands set up
# (afa_d2.execution.runtime.configure_cpu_runtime, the measured kernel choice of afa_d2.execution.kernels).
SETTINGS = {
    "stock": {"AFA_D2_MALLOC": "default", "AFA_D2_KERNELS": "plain"},
    "afa_d2": {"AFA_D2_MALLOC": "keep", "AFA_D2_KERNELS": "probe"},
}
_REPLY = "@@afa_d2_benchmark "


def _stock_fpn_model(args: argparse.Namespace, shared_state: Dict[str, torch.Tensor]) -> nn.Module:
    """detectron2's own detector of ``--model`` (Mask R-CNN, Cascade, RetinaNet, FCOS) with its ``FPN``, the
    test-time budget of :func:`build_model`: the "sum" weights load exactly."""
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    cfg = model_zoo.get_config(MODELS[args.model]).model
    cfg.backbone.bottom_up.stem.norm = args.norm
    cfg.backbone.bottom_up.stages.norm = args.norm
    _set_inference_budget(cfg, args.detections_per_image, args.proposals)
    model = instantiate(cfg)
    incompatible = model.load_state_dict(shared_state, strict=False)
    assert not incompatible.missing_keys, incompatible.missing_keys  # every FPN weight is a "sum" weight
    return model


def serve(args: argparse.Namespace) -> None:
    """A timing worker (``--serve SETTING``): build each operator's model, then answer "time <op>"
    lines on stdin with one forward's seconds; the parent interleaves workers' requests."""
    from afa_d2.execution.runtime import configure_cpu_runtime

    setting = args.serve
    if args.device == "cpu":
        configure_cpu_runtime("the benchmark ({})".format(setting))
    device = torch.device(args.device)
    image = _image(args.height, args.width, device)
    inputs = [{"image": image, "height": args.height, "width": args.width}]
    shared = shared_state_dict(args)
    models = {}
    for op in args.ops:
        if setting == "stock" and op == BASE:
            models[op] = _stock_fpn_model(args, shared)
        else:
            models[op] = _build(op, args, shared)
        models[op] = models[op].to(device).eval()
        if setting == "afa_d2" and device.type == "cpu":
            from afa_d2.execution.runtime import prepare_for_cpu_inference

            prepare_for_cpu_inference(models[op])
    print(_REPLY + json.dumps({"ready": setting, "threads": torch.get_num_threads()}), flush=True)
    with torch.no_grad():
        for line in sys.stdin:
            command = line.split()
            if not command or command[0] != "time":
                break
            model = models[command[1]]
            seconds = _time_once(lambda: model(inputs), device)
            detections = len(model(inputs)[0]["instances"]) if len(command) > 2 else None
            print(_REPLY + json.dumps({"s": seconds, "detections": detections}), flush=True)


class _Worker:
    def __init__(self, setting: str, args: argparse.Namespace):
        cmd = [sys.executable, "-m", "afa_d2.benchmark", "--serve", setting, "--ops", *args.ops,
               "--height", str(args.height), "--width", str(args.width), "--threads", str(args.threads),
               "--model", args.model, "--device", args.device, "--norm", args.norm, "--seed", str(args.seed),
               "--detections-per-image", str(args.detections_per_image), "--proposals", str(args.proposals)]
        env = dict(os.environ, **SETTINGS[setting])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.setting = setting
        self.info = self._reply()

    def _reply(self) -> Dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY):])
        raise RuntimeError("the {} benchmark worker stopped (exit {})".format(self.setting, self.proc.wait()))

    def time(self, op: str, count: bool = False) -> Dict[str, Any]:
        self.proc.stdin.write("time {}{}\n".format(op, " count" if count else ""))
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def measure_vs_stock(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """Whole-model inference of each operator under "stock" and "afa_d2" settings, side by side.

    One worker process per setting (the allocator setting is process-wide), both alive at once;
    every repetition times each (setting, operator) once, in an order rotated from one repetition to
    the next. Returns "<setting>:<op>" -> median seconds, spread, detections.
    """
    workers = {s: _Worker(s, args) for s in SETTINGS}
    try:
        pairs = [(s, op) for op in args.ops for s in SETTINGS]
        detections = {}
        for s, op in pairs:  # warm-up (kernels for these shapes, the afa_d2 worker's probe), and counts
            for _ in range(max(1, args.warmup)):
                r = workers[s].time(op, count=True)
            detections[(s, op)] = r["detections"]
        times: Dict[Any, List[float]] = {p: [] for p in pairs}
        for it in range(args.iters):
            k = it % len(pairs)
            for s, op in pairs[k:] + pairs[:k]:
                times[(s, op)].append(workers[s].time(op)["s"])
    finally:
        for w in workers.values():
            w.close()
    out = {}
    for (s, op), ts in times.items():
        out["{}:{}".format(s, op)] = {"op": op, "setting": s, "model_latency_s": statistics.median(ts),
                                       "model_latency_spread": _spread(ts), "detections": detections[(s, op)]}
    return out


def format_vs_stock(results: Dict[str, Dict[str, Any]], ops: Sequence[str]) -> str:
    lines = ["| operator | stock detectron2 eager ms | afa_d2 ms | afa_d2 speed-up | stock vs sum | afa_d2 vs sum |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = {s: results.get("{}:{}".format(s, ops[0]), {}).get("model_latency_s") for s in SETTINGS}
    for op in ops:
        st, af = results["stock:" + op], results["afa_d2:" + op]
        lines.append("| {} | {:.0f} ±{:.0f}% | {:.0f} ±{:.0f}% | x{:.2f} | x{:.2f} | x{:.2f} |".format(
            op, 1e3 * st["model_latency_s"], 50 * st["model_latency_spread"], 1e3 * af["model_latency_s"],
            50 * af["model_latency_spread"], st["model_latency_s"] / af["model_latency_s"],
            st["model_latency_s"] / base["stock"], af["model_latency_s"] / base["afa_d2"]))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- report
def _ratio(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    if value is None or not ref:
        return None
    return value / ref


def _in_precision(name: str, precision: str) -> str:
    """A yardstick's name in ``precision`` ("reference: 3x3 conv@bf16"; fp32's keeps its plain name)."""
    return name if precision == "fp32" else name + PRECISION_SEP + precision


def _scoped(fn, precision: str, device: torch.device):
    """``fn`` run under :func:`precision_scope` (autocast for bf16 / fp16)."""
    def run():
        with precision_scope(precision, device):
            return fn()

    return run


def add_floor(results: Dict[str, Dict[str, Any]], conv_rate: Dict[str, float],
              attention_rate: Dict[str, Optional[float]]) -> None:
    """The least each attention variant's whole model can take on this host, as a ratio to the sum-up model's
    measured time in the same precision: that time plus the neck's extra multiply-adds at the best rates timed
    here in that precision, attention's at ``attention_rate[precision]`` (the faster of SDPA and the grouped 1x1
    convolutions on the finest attention level, p2 of the R-CNNs, p3 of RetinaNet and FCOS:
    :func:`_finest_attention`; GMAC/s) and the rest (token linears, pooled K/V, depth-wise conv) at
    ``conv_rate[precision]`` (the 3x3 convolution's); work without multiply-adds (LayerNorm, GELU, resizes,
    adds) counted as free. What goal 1 of issue #12 can reach here.
    """
    for r in results.values():
        precision = r.get("precision", "fp32")
        base = results.get(_in_precision(BASE, precision))
        rate = attention_rate.get(precision)
        if r.get("neck_sdpa_flops") and base is not None and rate:
            other = max(0, r["neck_flops"] - r["neck_sdpa_flops"] - base["neck_flops"])
            extra_s = r["neck_sdpa_flops"] / 1e9 / rate + other / 1e9 / conv_rate[precision]
            r["attention_gmacs_per_s"] = rate
            r["model_floor_ratio"] = (base["model_latency_s"] + extra_s) / base["model_latency_s"]


def add_ratios(results: Dict[str, Dict[str, Any]], ref_op: str) -> None:
    keys = ["neck_params", "model_params", "neck_flops", "model_flops", "neck_latency_s",
            "model_latency_s", "neck_gflops_per_s", "train_step_s", "train_peak_mem_bytes"]
    for name, r in results.items():
        precision = variant_precision(name)
        ref_name = ref_op if precision == "fp32" else ref_op + PRECISION_SEP + precision
        ref = results.get(ref_name, results[ref_op])  # each precision against its own baseline
        r["ratio_to"] = ref_name if ref_name in results else ref_op
        for k in keys:
            if k in r:
                r[k + "_ratio"] = _ratio(r[k], ref.get(k))


def format_table(results: Dict[str, Dict[str, Any]]) -> str:
    """One row per operator; "(xR)" is the ratio to the reference operator (normally "sum")."""

    def num(key: str, scale: float, digits: int):
        def cell(r: Dict[str, Any]) -> str:
            if key not in r:
                return "-"
            text = "{:.{}f}".format(r[key] / scale, digits)
            ratio = r.get(key + "_ratio")
            if ratio is not None:
                text = "{} (x{:.2f})".format(text, ratio)
            spread = r.get(key[:-2] + "_spread") if key.endswith("_s") else None
            return text if spread is None else "{} ±{:.0f}%".format(text, 50 * spread)

        return cell

    def attn(r: Dict[str, Any]) -> str:
        return "{:.2f}".format(r["neck_sdpa_flops"] / 1e9) if "neck_sdpa_flops" in r else "-"

    def props(r: Dict[str, Any]) -> str:
        return "{}/{}".format(r.get("proposals", r.get("candidates", "-")), r.get("detections", "-"))

    one_stage = any("candidates" in r for r in results.values())  # RetinaNet, FCOS: candidates into NMS

    # (title, cell, the result key the column needs: shown when any result has it)
    cols = [
        ("op", lambda r: r["op"], "op"),
        ("neck params M", num("neck_params", 1e6, 2), "neck_params"),
        ("model params M", num("model_params", 1e6, 2), "model_params"),
        ("neck GFLOPs", num("neck_flops", 1e9, 1), "neck_flops"),
        ("of which attn", attn, "neck_sdpa_flops"),
        ("model GFLOPs", num("model_flops", 1e9, 1), "model_flops"),
        ("neck ms", num("neck_latency_s", 1e-3, 1), "neck_latency_s"),
        ("neck GFLOP/s", num("neck_gflops_per_s", 1, 1), "neck_gflops_per_s"),
        ("of 3x3 conv", lambda r: "{:.2f}".format(r["neck_of_reference_conv"]), "neck_of_reference_conv"),
        ("model ms", num("model_latency_s", 1e-3, 1), "model_latency_s"),
        ("cands/dets" if one_stage else "props/dets", props, "model_latency_s"),
        ("floor", lambda r: "x{:.2f}".format(r["model_floor_ratio"]) if "model_floor_ratio" in r else "-",
         "model_floor_ratio"),
        ("train step ms", num("train_step_s", 1e-3, 1), "train_step_s"),
        ("train peak MiB", num("train_peak_mem_bytes", 2 ** 20, 1), "train_peak_mem_bytes"),
    ]
    cols = [(title, cell) for title, cell, key in cols if any(key in r for r in results.values())]
    rows = [[title for title, _ in cols]]
    rows += [[cell(r) for _, cell in cols] for r in results.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python tools/benchmark.py",
        description="Params, FLOPs, latency (and training cost) of the aggregation operators, "
        "side by side (docs/DESIGN.md, 'What is measured').",
    )
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--reference", action="store_true",
                   help="also run mssa/msca on the straightforward path (\"<op>:ref\"), same weights")
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--iters", type=int, default=5,
                   help="timed repetitions, each running every variant once (median reported)")
    p.add_argument("--train-rounds", type=int, default=1,
                   help="with --train: rounds of one worker per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model", choices=list(MODELS), default="mask_rcnn",
                   help="the detector around the neck, detectron2's config of it (R-CNNs: p2..p6; RetinaNet, "
                   "FCOS: p3..p7)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--norm", default="GN", help="bottom-up norm (random weights: not FrozenBN/BN)")
    p.add_argument("--detections-per-image", type=int, default=100,
                   help="detections kept per image (R-CNNs: test_topk_per_image; RetinaNet, FCOS: "
                   "max_detections_per_image); the score threshold is 0")
    p.add_argument("--proposals", type=int, default=1000,
                   help="R-CNNs: RPN proposals kept at test time (post_nms_topk); RetinaNet, FCOS: candidates "
                   "kept per level before the final NMS (test_topk_candidates)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-mlp", action="store_true",
                   help="with --train: also \"<op>:ckpt\", mssa/msca with checkpoint_mlp=True (the DW-MLP "
                   "recomputed in backward)")
    p.add_argument("--train", action="store_true", help="also time a training step, peak memory")
    p.add_argument("--amp", action="store_true", help="train with fp16 autocast and a grad scaler (CUDA)")
    p.add_argument("--train-only", action="store_true",
                   help="only the training step time and peak memory (implies --train)")
    p.add_argument("--train-config", default=None,
                   help="with --train: measure training on this LazyConfig's model, optimizer and data "
                   "(e.g. configs/shapes/mask_rcnn_R_18_sum.py; aggregation set per variant) instead of "
                   "--model on a synthetic --height x --width image")
    p.add_argument("--skip-model-flops", action="store_true", help="skip tracing the whole model")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISIONS),
                   help="inference precisions side by side: e.g. --precision fp32 bf16 adds \"<op>@bf16\", the "
                   "same models under autocast, each timed against the sum-up model in its own precision")
    p.add_argument("--force-precision", action="store_true",
                   help="run a --precision even where the host has no fast path for it")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing: profile one whole-model inference of each --ops variant (CPU) and "
                   "print its N most expensive ops by self time, with the library behind each")
    p.add_argument("--kernels", action="store_true",
                   help="time the kernels behind the neck figures on MS-Att's p2 level of the R-CNNs (3x3 conv, "
                        "token linear as BLAS GEMM and as 1x1 conv, attention three ways, softmax), side by side; CPU")
    p.add_argument("--vs-stock", action="store_true",
                   help="whole-model inference of --ops with afa_d2's CPU settings (allocator, measured kernels) "
                   "and as stock detectron2 eager (glibc's allocator, plain kernels, detectron2's FPN for sum), "
                   "in two worker processes timed side by side")
    p.add_argument("--serve", choices=list(SETTINGS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-measure", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.train_only:
        args.train = True
    if args.train_config is not None and not os.path.isfile(args.train_config):
        p.error("--train-config {!r}: no such file (a LazyConfig .py, e.g. "
                "configs/shapes/mask_rcnn_R_18_sum.py)".format(args.train_config))
    if args.iters < 1:
        p.error("--iters must be >= 1, got {}".format(args.iters))
    if args.profile < 0:
        p.error("--profile must be a number of ops >= 1, got {}".format(args.profile))
    if args.profile and args.device != "cpu":
        p.error("--profile measures the CPU path, got --device {}".format(args.device))
    if args.kernels and args.device != "cpu":
        p.error("--kernels measures the CPU kernels, got --device {}".format(args.device))
    if args.kernels and args.model in ONE_STAGE:
        p.error("--kernels times the R-CNNs' kernels (MS-Att on p2, the RoI heads' fc1 and mask convs), which "
                "--model {} does not have; use --model mask_rcnn or cascade_mask_rcnn".format(args.model))
    for name in ("proposals", "detections_per_image"):
        if getattr(args, name) < 1:
            p.error("--{} must be >= 1, got {}".format(name.replace("_", "-"), getattr(args, name)))
    for precision in args.precision:
        try:
            check_precision(precision, args.device, force=args.force_precision)
        except PrecisionError as e:
            p.error(str(e))
    if args.precision != ["fp32"] and (args.train_only or args.profile or args.kernels or args.vs_stock):
        p.error("--precision {} measures inference: not with --train-only, --profile, --kernels or "
                "--vs-stock".format(" ".join(args.precision)))
    if args.amp and not str(args.device).startswith("cuda"):
        p.error("--amp needs --device cuda (fp16 autocast training, as detectron2's AMPTrainer), got {}".format(
            args.device))
    return args


def _write_json(args: argparse.Namespace, results: Dict[str, Dict[str, Any]]) -> None:
    """``--json``: the arguments and the results, for every mode of the tool."""
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.train_worker:
        if args.device == "cpu" and args.train_measure == "time":  # the memory worker keeps its own malloc setup
            from afa_d2.execution.runtime import configure_cpu_runtime

            configure_cpu_runtime("the benchmark's training step")
        print(json.dumps(measure_train_step(args.train_worker, args, args.train_measure)))
        return {}
    if args.serve:
        serve(args)
        return {}
    if args.vs_stock:
        results = measure_vs_stock(args)
        print("whole-model inference, {} {}x{}, batch 1, {} threads, {}: stock detectron2 eager vs afa_d2's CPU "
              "settings, two worker processes, {} interleaved iters (median, ±half the max-min spread)".format(
                  args.model, args.height, args.width, args.threads or torch.get_num_threads(), args.device,
                  args.iters))
        print(format_vs_stock(results, args.ops))
        _write_json(args, results)
        return results
    runtime = None
    if args.device == "cpu":
        from afa_d2.execution.runtime import configure_cpu_runtime

        runtime = configure_cpu_runtime("the benchmark")
    if args.kernels:
        results = measure_kernels(args)
        r = next(iter(results.values()))
        print("build: " + format_build_info())
        print("kernels on p2 of {}x{} ({}x{} = {} tokens, 256 channels, 4 heads, {} pooled keys), {} threads, "
              "{} interleaved iters (median, ±half the max-min spread); each product's kernels agree within "
              "1e-4".format(args.height, args.width, r["map"][0], r["map"][1], r["tokens"], r["keys"],
                            torch.get_num_threads(), args.iters))
        print(format_kernels(results))
        _write_json(args, results)
        return results
    names = variant_names(args.ops, args.reference, args.checkpoint_mlp, args.precision)
    results: Dict[str, Dict[str, Any]] = {name: {"op": name} for name in names}
    if args.profile:
        print("build: " + format_build_info())
        print("profile: {} {}x{}, batch 1, {} threads, afa_d2's CPU settings, one inference after {} warm-up".format(
            args.model, args.height, args.width, torch.get_num_threads(), max(1, args.warmup)))
        sum_model = _build(BASE, args)
        for name, res in profile_inference([n for n in names if not n.endswith(CKPT_SUFFIX)], args,
                                           sum_model.state_dict(), sum_model, top=args.profile).items():
            results[name].update(res)
        print(format_profile(results))
        _write_json(args, results)
        return results
    if not args.train_only:
        sum_model = _build(BASE, args)  # its weights are shared by every variant
        # ":ckpt" changes nothing at inference (no gradients): trained only
        results.update(measure_inference([n for n in names if not n.endswith(CKPT_SUFFIX)], args,
                                         sum_model.state_dict(), sum_model))
    if args.train:
        for name, res in measure_training([n for n in names if PRECISION_SEP not in n], args).items():
            results[name].update(res)
    add_ratios(results, BASE if BASE in results else args.ops[0])
    if args.device == "cpu":
        from afa_d2.execution.kernels import describe_choices

        print("CPU settings (afa_d2.execution.runtime, AFA_D2_MALLOC): {}; kernels (AFA_D2_KERNELS={}): {}".format(
            "glibc keeps freed memory" if runtime else "glibc's own allocator behaviour",
            os.environ.get("AFA_D2_KERNELS", "probe"), describe_choices() or "plain (nothing large enough measured)"))
    if not args.train_only:
        print(
            "inference: {} {}x{}, batch 1, {} threads, device {}, {} interleaved iters (median, ±half "
            "the max-min spread); FLOPs = fvcore MACs, attention counted".format(
                args.model, args.height, args.width, torch.get_num_threads(), args.device, args.iters
            )
        )
        if args.precision != ["fp32"]:
            print("precisions: {}; \"<op>@<precision>\" is the same model under torch.autocast ({}), its ratios "
                  "against the sum-up model in the same precision, the floor from the yardsticks timed in that precision".format(
                      ", ".join(args.precision),
                      cpu_bf16_support()[1] if args.device == "cpu" else torch.cuda.get_device_name()))
        rates = {r["precision"]: r["reference_conv_gmacs_per_s"] for r in results.values()
                 if r.get("reference_conv_gmacs_per_s")}
        if rates:
            print("this host's convolution rate, timed among the necks: a 256->256 3x3 conv of the p3-sized map "
                  "(channels-last) ran at {} GMAC/s; \"of 3x3 conv\" = neck GFLOP/s over it in the same precision "
                  "({})".format(", ".join("{:.1f} ({})".format(v, p) for p, v in rates.items()), format_build_info()))
        floors = {r["precision"]: r for r in results.values() if "attention_gmacs_per_s" in r}
        if floors:
            print("\"floor\": the least the whole model can take here, as a ratio to sum's time in the same "
                  "precision: the neck's extra multiply-adds at this host's best rates, attention at {} GMAC/s (the "
                  "faster of SDPA and the grouped 1x1 convs, timed on {} among the necks), the rest at the 3x3 "
                  "conv's; LayerNorm, GELU, resizes and adds counted as free".format(
                      ", ".join("{:.1f} ({})".format(r["attention_gmacs_per_s"], p) for p, r in floors.items()),
                      next(iter(floors.values()))["attention_rate_level"]))
        if args.model in ONE_STAGE:
            print("{}: no proposals, no RoI heads; test score threshold 0, the top {} candidates of each level "
                  "enter the final NMS, {} detections kept: \"cands/dets\" counts both".format(
                      args.model, args.proposals, args.detections_per_image))
    if args.train:
        print(
            "training: {}, {} threads, device {}; a fresh process per variant and round, {} round(s) "
            "in rotated order, each the median of {} steps after {} warm-up; peak memory: {}".format(
                args.train_config or "{} on one {}x{} image".format(args.model, args.height, args.width),
                torch.get_num_threads(), args.device, max(1, args.train_rounds), args.iters,
                max(1, args.warmup), next(iter(results.values())).get("train_mem_measure", "-"),
            )
        )
    print(format_table(results))
    _write_json(args, results)
    return results


if __name__ == "__main__":
    main()
