#!/usr/bin/env python
"""The checks only a GPU can make, as one prepared script (under 8 minutes on one GPU).

    python tools/gpu_check.py --out gpu_check.json

1. CUDA correctness: MS-Att's fast path equals its reference path on the GPU in fp32 (values and
   gradients, TF32 off), and under fp16 autocast both stay finite and close.
2. Inference speed: Cascade Mask R-CNN R-50 at 800x1333, batch 1, sum / MSSA / MSCA side by side
   (interleaved, median): FPS and the ratio to sum (the paper: 13.0 -> 11.9 FPS, x1.09; goal <= x1.09).
3. AMP training memory: peak ``max_memory_allocated`` of a training step with fp16 autocast and a
   grad scaler (detectron2's AMPTrainer), each operator in a fresh process (goal <= x1.15 of sum).

``--smoke`` runs the same code on the CPU at a tiny size (no AMP): what CI can check of it.
"""
import argparse
import json
import os
import sys
import time

import afa_d2  # noqa: F401  (detectron2 compat patches first)
import torch

from afa_d2 import benchmark
from afa_d2.modeling import MSAttention

OPS = ["sum", "mssa", "msca"]


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (no AMP): checks the script runs")
    args = p.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or --smoke to check the script on the CPU")
    size = ["--height", "160", "--width", "224"] if args.smoke else ["--height", "800", "--width", "1333"]
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
              "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    print("== 1. MS-Att fast path vs reference path on", device, flush=True)
    report["attention"] = check_attention(device)
    print(json.dumps(report["attention"], indent=1), flush=True)

    print("== 2. Cascade Mask R-CNN R-50 inference, sum / MSSA / MSCA", flush=True)
    iters = ["--iters", "2", "--warmup", "1"] if args.smoke else ["--iters", "30", "--warmup", "5"]
    inference = benchmark.main(["--model", "cascade_mask_rcnn", "--device", device, "--ops", *OPS, "--skip-model-flops",
                                *size, *iters])
    report["inference"] = {op: {"fps": 1.0 / r["model_latency_s"], "latency_ratio_to_sum": r["model_latency_s_ratio"],
                                "neck_latency_ratio_to_sum": r["neck_latency_s_ratio"],
                                "detections": r.get("detections")} for op, r in inference.items()}

    if not args.smoke:
        print("== 3. AMP training: step time and peak memory, a fresh process per operator", flush=True)
        training = benchmark.main(["--model", "cascade_mask_rcnn", "--device", device, "--ops", *OPS, "--train-only",
                                   "--amp", "--iters", "5", "--warmup", "2", *size])
        report["amp_training"] = {op: {"peak_mem_mib": r["train_peak_mem_bytes"] / 2**20,
                                       "peak_mem_ratio_to_sum": r["train_peak_mem_bytes_ratio"],
                                       "step_s": r["train_step_s"], "step_ratio_to_sum": r["train_step_s_ratio"]}
                                  for op, r in training.items()}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    goals = {"fps_ratio_mssa": report["inference"]["mssa"]["latency_ratio_to_sum"],
             "fps_ratio_msca": report["inference"]["msca"]["latency_ratio_to_sum"]}
    if "amp_training" in report:
        goals.update({"amp_mem_ratio_mssa": report["amp_training"]["mssa"]["peak_mem_ratio_to_sum"],
                      "amp_mem_ratio_msca": report["amp_training"]["msca"]["peak_mem_ratio_to_sum"]})
    report["goals"] = goals
    print(json.dumps(report, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", args.out)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["attention"]["ok"] else 1)
