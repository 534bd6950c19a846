"""The checks only a GPU can make, as one prepared script (under 8 minutes on one GPU).

    python tools/gpu_check.py --out gpu_check.json

1. CUDA correctness: MS-Att's fast path equals its reference path on the GPU in fp32 (values and
   gradients, TF32 off), and under fp16 autocast both stay finite and close.
2. Inference speed: Cascade Mask R-CNN R-50 at 800x1333, batch 1, sum / MSSA / MSCA side by side
   (interleaved, median): FPS and the ratio to sum (the paper: 13.0 -> 11.9 FPS, x1.09; goal <= x1.09).
3. AMP training memory: peak ``max_memory_allocated`` of a training step with fp16 autocast and a
   grad scaler (detectron2's AMPTrainer), each operator in a fresh process (goal <= x1.15 of sum).
4. Low-precision inference: the same models under fp16 and bf16 autocast (``--precision``, as
   ``train_net.py --eval-only`` and the Predictor run them): FPS and ratio to sum in each precision (timed in
   step 2's run, side by side with fp32, so the speed-up over fp32 is measured once), and how far
   the detections move from fp32's (the same image and weights: each low-precision detection matched to the
   fp32 detection of its class with the largest IoU; the share matched at IoU >= 0.5, and the largest box
   corner and score differences of those).

``--smoke`` runs the same code on the CPU at a tiny size (no AMP; bf16 only where the CPU has it): what CI
can check of it.
"""
import argparse
import json
import os
import time

import afa_d2  # noqa: F401  (detectron2 compat patches first)
import torch

from afa_d2.benchmark.cli import main as benchmark_main
from afa_d2.benchmark.models import build_model
from afa_d2.benchmark.variants import ATTENTION_OPS, BASE, in_precision, split_variant, variant_precision
from afa_d2.engine.precision import cpu_bf16_support, precision_scope
from afa_d2.modeling import MSAttention

__all__ = ["OPS", "check_attention", "check_precisions", "main"]

#: The baseline and the attention operators, from the registry.
OPS = [BASE, *ATTENTION_OPS]


def check_attention(device: str) -> dict:
    """Fast path vs reference path of MS-Att on ``device``: max |difference| of values and gradients."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    out = {}
    for cross in (False, True):
        m = MSAttention(256, 4, pool_stride=4).to(device)
        x = torch.randn(2, 256, 50, 84, device=device, requires_grad=True)
        kv = torch.randn(2, 256, 25, 42, device=device, requires_grad=True) if cross else None
        ref = m.forward_reference(x, kv)
        g = torch.randn_like(ref)
        params = [x] + ([kv] if cross else []) + list(m.parameters())
        ref_grads = torch.autograd.grad((ref * g).sum(), params)
        fast = m(x, kv)
        grads = torch.autograd.grad((fast * g).sum(), params)
        name = "cross" if cross else "self"
        out[name + "_max_abs_diff"] = (fast - ref).abs().max().item()
        out[name + "_max_grad_rel_diff"] = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-6)).item()
                                               for a, b in zip(ref_grads, grads))
        if device.startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.float16):
                half_fast, half_ref = m(x, kv), m.forward_reference(x, kv)
            out[name + "_amp_finite"] = bool(torch.isfinite(half_fast).all() and torch.isfinite(half_ref).all())
            out[name + "_amp_max_abs_diff_vs_fp32"] = (half_fast.float() - ref).abs().max().item()
    out["ok"] = all(v <= 1e-4 for k, v in out.items() if k.endswith(("_max_abs_diff", "_grad_rel_diff"))) and all(
        v for k, v in out.items() if k.endswith("_finite"))
    return out


def _match(reference, low) -> dict:
    """How far ``low``'s detections are from ``reference``'s (both ``Instances`` in fp32): each low-precision
    detection to the reference detection of its class with the largest IoU."""
    from detectron2.structures import pairwise_iou

    if len(low) == 0 or len(reference) == 0:
        return {"detections": len(low), "reference_detections": len(reference), "matched_at_iou_0.5": 0.0}
    iou = pairwise_iou(low.pred_boxes, reference.pred_boxes)
    iou[low.pred_classes[:, None] != reference.pred_classes[None, :]] = 0.0
    best, idx = iou.max(dim=1)
    ok = best >= 0.5
    out = {"detections": len(low), "reference_detections": len(reference),
           "matched_at_iou_0.5": ok.float().mean().item()}
    if ok.any():
        out["max_box_diff_px"] = (low.pred_boxes.tensor[ok] - reference.pred_boxes.tensor[idx[ok]]).abs().max().item()
        out["max_score_diff"] = (low.scores[ok] - reference.scores[idx[ok]]).abs().max().item()
    return out


def check_precisions(device: str, precisions, hw) -> dict:
    """Detections of each operator's random-weight Cascade model in each of ``precisions`` against fp32, on a
    random ``hw`` = (H, W) image."""
    h, w = hw
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), generator=g).float()
    out = {}
    for op in OPS:
        model = build_model(op, "cascade_mask_rcnn").to(device).eval()
        inputs = [{"image": image.to(device), "height": h, "width": w}]
        with torch.no_grad():
            reference = model(inputs)[0]["instances"].to("cpu")
            for precision in precisions:
                with precision_scope(precision, torch.device(device)):
                    low = model(inputs)[0]["instances"].to("cpu")
                out[in_precision(op, precision)] = _match(reference, low)
    return out


def _timed_inference(device: str, size, iters, low) -> dict:
    """Steps 2 and 4's speed: Cascade Mask R-CNN R-50 inference of every operator side by side, in fp32 and
    under each ``low`` autocast precision, in one interleaved run (benchmark's variant name -> its row)."""
    print("== 2. Cascade Mask R-CNN R-50 inference, {}{}".format(
        " / ".join(OPS), ", in fp32 and under {} autocast (step 4)".format(" / ".join(low)) if low else ""),
        flush=True)
    precisions = ["--precision", "fp32", *low] if low else []
    return benchmark_main(["--model", "cascade_mask_rcnn", "--device", device, "--ops", *OPS, "--skip-model-flops",
                           *precisions, *size, *iters])


def _inference(timed: dict) -> dict:
    """Step 2: each operator's fp32 rows of :func:`_timed_inference`."""
    return {op: {"fps": 1.0 / r["model_latency_s"], "latency_ratio_to_sum": r["model_latency_s_ratio"],
                 "neck_latency_ratio_to_sum": r["neck_latency_s_ratio"], "detections": r.get("detections")}
            for op, r in timed.items() if variant_precision(op) == "fp32"}


def _amp_training(device: str, size) -> dict:
    """Step 3: an AMP training step's time and peak memory, a fresh process per operator."""
    print("== 3. AMP training: step time and peak memory, a fresh process per operator", flush=True)
    training = benchmark_main(["--model", "cascade_mask_rcnn", "--device", device, "--ops", *OPS, "--train-only",
                               "--amp", "--iters", "5", "--warmup", "2", *size])
    return {op: {"peak_mem_mib": r["train_peak_mem_bytes"] / 2**20,
                 "peak_mem_ratio_to_sum": r["train_peak_mem_bytes_ratio"],
                 "step_s": r["train_step_s"], "step_ratio_to_sum": r["train_step_s_ratio"]}
            for op, r in training.items()}


def _low_precision(device: str, low, hw, timed: dict) -> dict:
    """Step 4: each operator under each ``low`` autocast precision: its speed against the sum-up model and
    against fp32 (the rows of :func:`_timed_inference`), and how far its detections move from fp32's."""
    print("== 4. detections under {} autocast against fp32's ({} rows of step 2: speed against {} and fp32)".format(
        " / ".join(low), " / ".join(low), BASE), flush=True)
    out = {name: {"fps": 1.0 / r["model_latency_s"], "latency_ratio_to_sum": r["model_latency_s_ratio"],
                  "speedup_over_fp32": timed[split_variant(name)[0]]["model_latency_s"] / r["model_latency_s"]}
           for name, r in timed.items() if variant_precision(name) != "fp32"}
    for name, diff in check_precisions(device, low, hw).items():
        out[name].update(diff)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (no AMP): checks the script runs")
    args = p.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or --smoke to check the script on the CPU")
    hw = (160, 224) if args.smoke else (800, 1333)
    size = ["--height", str(hw[0]), "--width", str(hw[1])]
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
              "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    print("== 1. MS-Att fast path vs reference path on", device, flush=True)
    report["attention"] = check_attention(device)
    print(json.dumps(report["attention"], indent=1), flush=True)

    iters = ["--iters", "2", "--warmup", "1"] if args.smoke else ["--iters", "30", "--warmup", "5"]
    low = ["fp16", "bf16"] if device == "cuda" else (["bf16"] if cpu_bf16_support()[0] else [])
    timed = _timed_inference(device, size, iters, low)
    report["inference"] = _inference(timed)
    if not args.smoke:
        report["amp_training"] = _amp_training(device, size)
    if low:
        report["low_precision"] = _low_precision(device, low, hw, timed)

    report["seconds"] = round(time.perf_counter() - t0, 1)
    goals = {"fps_ratio_{}".format(op): report["inference"][op]["latency_ratio_to_sum"] for op in ATTENTION_OPS}
    if "amp_training" in report:
        goals.update({"amp_mem_ratio_{}".format(op): report["amp_training"][op]["peak_mem_ratio_to_sum"]
                      for op in ATTENTION_OPS})
    for name, r in report.get("low_precision", {}).items():
        goals["{}_latency_ratio".format(name)] = r["latency_ratio_to_sum"]
    report["goals"] = goals
    print(json.dumps(report, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", args.out)
    return report


def run(argv=None) -> int:
    """The command: 0 when MS-Att's fast path matched its reference path, else 1."""
    return 0 if main(argv)["attention"]["ok"] else 1
