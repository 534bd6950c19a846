"""What the benchmark prints and saves: the ratios to the reference operator, the side-by-side table, the lines
that say how a run measured, the build a CPU figure depends on, and the ``--json`` file."""
import argparse
import json
import os
from typing import Any, Dict, List, Optional

import torch

from afa_d2.engine.precision import cpu_bf16_support
from afa_d2.modeling.aggregation import operator_label

from .models import ONE_STAGE
from .variants import BASE, in_precision, variant_precision


def _ratio(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    if value is None or not ref:
        return None
    return value / ref


def add_ratios(results: Dict[str, Dict[str, Any]], ref_op: str) -> None:
    """Each result's costs as ratios ("<key>_ratio") to those of ``ref_op`` in the same precision (``ratio_to``
    names it; ``ref_op`` itself where that precision has no ``ref_op``)."""
    keys = ["neck_params", "model_params", "neck_flops", "model_flops", "neck_latency_s",
            "model_latency_s", "neck_gflops_per_s", "train_step_s", "train_peak_mem_bytes"]
    for name, r in results.items():
        precision = variant_precision(name)
        ref_name = in_precision(ref_op, precision)
        ref = results.get(ref_name, results[ref_op])  # each precision against its own baseline
        r["ratio_to"] = ref_name if ref_name in results else ref_op
        for k in keys:
            if k in r:
                r[k + "_ratio"] = _ratio(r[k], ref.get(k))


def format_table(results: Dict[str, Dict[str, Any]]) -> str:
    """One row per variant; "(xR)" is the ratio to the reference operator (normally the baseline)."""

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
        ("of 3x3 conv", lambda r: "{:.2f}".format(r["neck_of_reference_conv"]) if "neck_of_reference_conv" in r
         else "-", "neck_of_reference_conv"),  # "-": a variant only trained (":ckpt")
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



def cpu_settings_line(runtime) -> str:
    """How this CPU run is set up: the allocator (``runtime``: what ``configure_cpu_runtime`` returned) and the
    kernels chosen for MS-Att's and the RoI heads' products."""
    from afa_d2.execution.kernels import describe_choices

    return "CPU settings (afa_d2.execution.runtime, AFA_D2_MALLOC): {}; kernels (AFA_D2_KERNELS={}): {}".format(
        "glibc keeps freed memory" if runtime else "glibc's own allocator behaviour",
        os.environ.get("AFA_D2_KERNELS", "probe"), describe_choices() or "plain (nothing large enough measured)")


def inference_lines(args: argparse.Namespace, results: Dict[str, Dict[str, Any]]) -> List[str]:
    """The lines above the inference table: what was timed, the precisions, the host's convolution rate, the
    floor's rates, and the one-stage detectors' counts."""
    lines = [
        "inference: {} {}x{}, batch 1, {} threads, device {}, {} interleaved iters (median, ±half "
        "the max-min spread); FLOPs = fvcore MACs, attention counted".format(
            args.model, args.height, args.width, torch.get_num_threads(), args.device, args.iters
        )
    ]
    if args.precision != ["fp32"]:
        lines.append("precisions: {}; \"<op>@<precision>\" is the same model under torch.autocast ({}), its ratios "
                     "against the {} model in the same precision, the floor from the yardsticks timed in that "
                     "precision".format(", ".join(args.precision),
                                        cpu_bf16_support()[1] if args.device == "cpu" else torch.cuda.get_device_name(),
                                        operator_label(BASE)))
    rates = {r["precision"]: r["reference_conv_gmacs_per_s"] for r in results.values()
             if r.get("reference_conv_gmacs_per_s")}
    if rates:
        lines.append("this host's convolution rate, timed among the necks: a 256->256 3x3 conv of the p3-sized map "
                     "(channels-last) ran at {} GMAC/s; \"of 3x3 conv\" = neck GFLOP/s over it in the same precision "
                     "({})".format(", ".join("{:.1f} ({})".format(v, p) for p, v in rates.items()),
                                   format_build_info()))
    floors = {r["precision"]: r for r in results.values() if "attention_gmacs_per_s" in r}
    if floors:
        attention = ", ".join("{:.1f} ({})".format(r["attention_gmacs_per_s"], p) for p, r in floors.items())
        lines.append("\"floor\": the least the whole model can take here, as a ratio to {}'s time in the same "
                     "precision: the neck's extra multiply-adds at this host's best rates, attention at {} GMAC/s (the "
                     "faster of SDPA and the grouped 1x1 convs, timed on {} among the necks), the rest at the 3x3 "
                     "conv's; LayerNorm, GELU, resizes and adds counted as free".format(
                         BASE, attention, next(iter(floors.values()))["attention_rate_level"]))
    if args.model in ONE_STAGE:
        lines.append("{}: no proposals, no RoI heads; test score threshold 0, the top {} candidates of each level "
                     "enter the final NMS, {} detections kept: \"cands/dets\" counts both".format(
                         args.model, args.proposals, args.detections_per_image))
    return lines


def training_line(args: argparse.Namespace, results: Dict[str, Dict[str, Any]]) -> str:
    """The line above the training columns: what trained, in which processes, and how memory was measured."""
    return (
        "training: {}, {} threads, device {}; a fresh process per variant and round, {} round(s) "
        "in rotated order, each the median of {} steps after {} warm-up; peak memory: {}".format(
            args.train_config or "{} on one {}x{} image".format(args.model, args.height, args.width),
            torch.get_num_threads(), args.device, max(1, args.train_rounds), args.iters,
            max(1, args.warmup), next(iter(results.values())).get("train_mem_measure", "-"),
        )
    )


def write_json(args: argparse.Namespace, results: Dict[str, Dict[str, Any]]) -> None:
    """``--json``: the arguments and the results, for every mode of the tool."""
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
