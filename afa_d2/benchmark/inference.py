"""Inference cost of the variants, side by side: parameters, FLOPs, and the interleaved latency of the neck
alone (on precomputed bottom-up features) and of the whole detector, batch 1 (docs/DESIGN.md, "What is
measured").

The necks are timed among the yardsticks of :mod:`.kernels` (the 3x3 convolution, and on the CPU the finest
level's attention), so that each neck's GFLOP/s comes with its share of this host's convolution rate, and
each attention model with its floor. The whole-model cost depends on how many boxes enter and leave NMS: both
are reported. R-CNNs: the RPN's proposals (``--proposals`` after its NMS) and the detections that reach the
mask head (``--detections-per-image``). RetinaNet and FCOS have neither proposals nor RoI heads: their
counterparts are the candidates entering the final NMS (``--proposals`` is their ``test_topk_candidates``, the
top candidates kept per level; with the threshold at 0 every level fills it) and the detections kept after it
(``max_detections_per_image``). Only the candidates need to match there: nothing runs on a one-stage
detector's detections but their resize to the input's size, and with random weights its NMS may keep few of
them (FCOS: tens), a different number for each operator.
"""
import argparse
import statistics
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from afa_d2.engine.precision import precision_scope
from afa_d2.modeling.aggregation import use_reference_path

from .counting import count_costs
from .kernels import (
    FLOOR_ATTENTION, REFERENCE_CONV, _finest_attention, add_floor, p2_attention, reference_conv, scoped,
)
from .models import _build, _image, counting_nms_boxes
from .timing import spread, time_interleaved
from .variants import BASE, in_precision, split_variant, variant_precision


def measure_inference(
    names: Sequence[str],
    args: argparse.Namespace,
    shared_state: Optional[Dict[str, torch.Tensor]] = None,
    base_model: Optional[nn.Module] = None,
) -> Dict[str, Dict[str, Any]]:
    """Parameters, FLOPs and (interleaved) inference latency of the variants ``names``.

    A variant is an operator ("<op>") or its straightforward path ("<op>:ref", the same model
    object, so the same weights). ``base_model``: the already built baseline model.
    """
    device = torch.device(args.device)
    image = _image(args.height, args.width, device)
    inputs = [{"image": image, "height": args.height, "width": args.width}]
    models: Dict[str, nn.Module] = {}
    results: Dict[str, Dict[str, Any]] = {}
    neck_fns: Dict[str, Any] = {}
    model_fns: Dict[str, Any] = {}
    counts: Dict[str, Dict[str, int]] = {}
    with torch.no_grad():
        for name in names:
            op, reference = split_variant(name)
            if op not in models:
                models[op] = _inference_model(op, args, device, shared_state, base_model)
            model = models[op]
            use_reference_path(model, reference)
            precision = variant_precision(name)
            # The model pads to size_divisibility itself; the neck gets the same padded input.
            padded = model.preprocess_image([{"image": image}]).tensor
            with precision_scope(precision, device):
                feats = model.backbone.bottom_up(padded)
            same_model = next((r for n, r in results.items() if split_variant(n) == (op, reference)), None)
            if same_model is not None:  # another precision of a model counted already: the same counts
                res = {k: v for k, v in same_model.items() if k.endswith(("_params", "_flops"))}
            else:
                res = count_costs(model, feats, image, args.skip_model_flops)
            results[name] = dict(res, op=name, precision=precision)
            counts[name] = {}
            neck_fns[name], model_fns[name] = _runners(model, feats, inputs, reference, precision, device,
                                                       counts[name])
        neck_times, conv_rate, attention_rate, finest = _time_necks(
            neck_fns, results, models, padded.shape[-2:], device, args)
        model_times = time_interleaved(model_fns, args.iters, args.warmup, device)
    for name, res in results.items():
        res["neck_latency_s"] = statistics.median(neck_times[name])
        res["neck_latency_spread"] = spread(neck_times[name])
        res["model_latency_s"] = statistics.median(model_times[name])
        res["model_latency_spread"] = spread(model_times[name])
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


def _inference_model(op: str, args: argparse.Namespace, device: torch.device,
                     shared_state: Optional[Dict[str, torch.Tensor]], base_model: Optional[nn.Module]) -> nn.Module:
    """The operator ``op``'s model (``base_model`` for the baseline, when given) on ``device`` in eval mode, with
    afa_d2's CPU inference set-up on the CPU (the same for every variant)."""
    built = base_model if op == BASE and base_model is not None else _build(op, args, shared_state)
    model = built.to(device).eval()
    if device.type == "cpu":
        from afa_d2.execution.runtime import prepare_for_cpu_inference

        prepare_for_cpu_inference(model)
    return model


def _runners(model: nn.Module, feats, inputs, reference: bool, precision: str, device: torch.device,
             counts: Dict[str, int]):
    """The two timed functions of one variant: its neck on the bottom-up features ``feats``, and its whole model
    on ``inputs`` (which records the boxes entering NMS and the detections in ``counts``)."""
    neck = model.backbone

    def run_neck():
        use_reference_path(model, reference)
        with precision_scope(precision, device):
            neck.aggregate(feats)

    def run_model():
        use_reference_path(model, reference)
        with counting_nms_boxes(model, counts), precision_scope(precision, device):
            counts["detections"] = len(model(inputs)[0]["instances"])

    return run_neck, run_model


def _time_necks(neck_fns: Dict[str, Any], results: Dict[str, Dict[str, Any]], models: Dict[str, nn.Module],
                padded_hw, device: torch.device, args: argparse.Namespace):
    """The necks timed interleaved with the yardsticks, under the same conditions, once per precision measured
    (each in that precision: bf16's convolution and attention kernels are not fp32's). Returns (the necks'
    times, the 3x3 convolution's GMAC/s per precision, the best attention way's GMAC/s per precision or None,
    :func:`~.kernels._finest_attention` of the models)."""
    precisions = sorted({res["precision"] for res in results.values()}, key=lambda p: p != "fp32")
    conv, conv_macs = reference_conv(padded_hw, device)
    fns = dict(neck_fns)
    floor_fns: Dict[str, Dict[str, Any]] = {p: {} for p in precisions}
    finest = next(filter(None, (_finest_attention(m.backbone) for m in models.values())), None)
    attention_ways_of, attention_macs = None, 0
    if device.type == "cpu" and BASE in results and finest and any(r["neck_sdpa_flops"] for r in results.values()):
        from afa_d2.execution.kernels import attention_ways

        q, k, v, level_hw, attention_macs = p2_attention(padded_hw, args.seed, **finest[1])
        attention_ways_of = attention_ways(q, k, v, level_hw)
    for p in precisions:
        fns[in_precision(REFERENCE_CONV, p)] = scoped(conv, p, device)
        for way, fn in (attention_ways_of or {}).items():
            floor_fns[p][in_precision(FLOOR_ATTENTION.format(way), p)] = scoped(fn, p, device)
        fns.update(floor_fns[p])
    times = time_interleaved(fns, args.iters, args.warmup, device)
    conv_rate = {p: conv_macs / 1e9 / statistics.median(times.pop(in_precision(REFERENCE_CONV, p)))
                 for p in precisions}
    attention_rate = {p: max((attention_macs / 1e9 / statistics.median(times.pop(name))
                              for name in floor_fns[p]), default=None) for p in precisions}
    return times, conv_rate, attention_rate, finest
