"""``--train``: the training step's time and peak memory of each variant, each in fresh worker processes so
that the peaks do not mix (docs/DESIGN.md, "What is measured").

The parent (:func:`measure_training`) starts ``python -m afa_d2.benchmark --train-worker <variant>
--train-measure time|memory ...`` once per variant, measure and round; the worker (the command line's
``--train-worker``) runs :func:`measure_train_step` and prints its result as one JSON line. Peak memory:
CUDA ``max_memory_allocated``; CPU, the weights plus the peak rise of RSS during the steps, with glibc made
to unmap freed blocks so that RSS follows the live tensors. ``--train-config <LazyConfig>`` measures on that
config's model, optimizer and data (the operator set per variant).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Sequence

import torch

from afa_d2.modeling.aggregation import use_checkpoint_mlp, use_reference_path

from .models import _build, _image, shared_state_dict
from .timing import median_time, rotated, spread
from .variants import CKPT_SUFFIX, split_variant


def _train_batch(height: int, width: int, device: torch.device) -> List[Dict[str, Any]]:
    """One synthetic training image (:func:`~.models._image`) with 8 random boxes, their box-shaped masks and
    random classes of 80, the same every run."""
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
    """The process's peak RSS so far (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _rss_bytes() -> int:
    """The process's RSS now (``/proc/self/statm``)."""
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
    """One variant's ("<op>", "<op>:ref", "<op>:ckpt") training step time (``measure="time"``) or peak memory
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
    step = _training_step(model, optimizer, batches, args.amp)
    if measure == "memory":
        return _peak_memory(step, model, device, args.warmup)
    seconds = median_time(step, args.iters, max(1, args.warmup), device)
    return {"train_step_s": seconds}


def _training_step(model, optimizer, batches: List[Any], amp: bool):
    """A function that runs one training step of ``model`` on the next of ``batches`` (in turn); with ``amp``,
    as detectron2's AMPTrainer: fp16 autocast, scaled loss."""
    from detectron2.utils.events import EventStorage

    position = [0]
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def step():
        batch = batches[position[0] % len(batches)]
        position[0] += 1
        with EventStorage():  # detectron2's heads log training statistics there
            if amp:
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

    return step


def _peak_memory(step, model, device: torch.device, warmup: int) -> Dict[str, Any]:
    """The peak memory over ``max(1, warmup) + 1`` calls of the training ``step`` of ``model`` (see
    :func:`measure_train_step`), how it was measured, and the parameters' bytes."""
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
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
    for _ in range(max(1, warmup) + 1):
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


def _train_in_subprocess(name: str, args: argparse.Namespace, measure: str) -> Dict[str, Any]:
    """:func:`measure_train_step` of the variant ``name`` in a fresh worker process (the memory worker under
    ``_MEMORY_WORKER_ENV``): the result it prints as its last line."""
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
        for name in rotated(names, r):
            res = _train_in_subprocess(name, args, "time")
            res.update(_train_in_subprocess(name, args, "memory"))
            runs[name].append(res)
    out = {}
    for name, rs in runs.items():
        times = [x["train_step_s"] for x in rs]
        out[name] = {
            "op": name,
            "train_step_s": statistics.median(times),
            "train_step_spread": spread(times),
            "train_peak_mem_bytes": int(statistics.median(x["train_peak_mem_bytes"] for x in rs)),
            "train_mem_measure": rs[0]["train_mem_measure"],
            "train_param_bytes": rs[0]["train_param_bytes"],
        }
    return out
