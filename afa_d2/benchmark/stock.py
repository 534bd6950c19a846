"""``--vs-stock``: whole-model inference with afa_d2's CPU settings against stock detectron2 eager, in two
worker processes timed side by side (docs/DESIGN.md, "What is measured").

The parent (:func:`measure_vs_stock`) starts ``python -m afa_d2.benchmark --serve <setting> ...`` once per
setting of :data:`SETTINGS`; each worker (:func:`serve`) builds its models, then answers "time <op>" lines on
stdin with one forward's seconds, as a JSON line after ``_REPLY``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Sequence

import torch

from .models import _build, _image, _stock_fpn_model, shared_state_dict
from .timing import rotated, spread, time_once
from .variants import BASE

# What a process runs with: "stock" is detectron2 eager as it comes (glibc's allocator, F.linear and
# SDPA; for the baseline operator, detectron2's own FPN class), "afa_d2" what afa_d2's CPU commands set up
# (afa_d2.execution.runtime.configure_cpu_runtime, the measured kernel choice of afa_d2.execution.kernels).
SETTINGS = {
    "stock": {"AFA_D2_MALLOC": "default", "AFA_D2_KERNELS": "plain"},
    "afa_d2": {"AFA_D2_MALLOC": "keep", "AFA_D2_KERNELS": "probe"},
}
_REPLY = "@@afa_d2_benchmark "


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
            seconds = time_once(lambda: model(inputs), device)
            detections = len(model(inputs)[0]["instances"]) if len(command) > 2 else None
            print(_REPLY + json.dumps({"s": seconds, "detections": detections}), flush=True)


class _Worker:
    """A :func:`serve` process of one setting, and its replies."""

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
            for s, op in rotated(pairs, it):
                times[(s, op)].append(workers[s].time(op)["s"])
    finally:
        for w in workers.values():
            w.close()
    out = {}
    for (s, op), ts in times.items():
        out["{}:{}".format(s, op)] = {"op": op, "setting": s, "model_latency_s": statistics.median(ts),
                                       "model_latency_spread": spread(ts), "detections": detections[(s, op)]}
    return out


def format_vs_stock(results: Dict[str, Dict[str, Any]], ops: Sequence[str]) -> str:
    """One row per operator: its time in each setting, the speed-up, and each setting's time as a ratio to the
    first operator's (normally the baseline) in the same setting."""
    header = "| operator | stock detectron2 eager ms | afa_d2 ms | afa_d2 speed-up | stock vs {0} | afa_d2 vs {0} |"
    lines = [header.format(ops[0]), "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = {s: results.get("{}:{}".format(s, ops[0]), {}).get("model_latency_s") for s in SETTINGS}
    for op in ops:
        st, af = results["stock:" + op], results["afa_d2:" + op]
        lines.append("| {} | {:.0f} ±{:.0f}% | {:.0f} ±{:.0f}% | x{:.2f} | x{:.2f} | x{:.2f} |".format(
            op, 1e3 * st["model_latency_s"], 50 * st["model_latency_spread"], 1e3 * af["model_latency_s"],
            50 * af["model_latency_spread"], st["model_latency_s"] / af["model_latency_s"],
            st["model_latency_s"] / base["stock"], af["model_latency_s"] / base["afa_d2"]))
    return "\n".join(lines)
