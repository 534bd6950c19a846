"""What each arm of a study costs: parameters and FLOPs (the project's counters), and timings measured side
by side on a quiet host.

Parameters and FLOPs do not depend on the host: they are counted once per arm when the study is written
(``afa_d2.inspection.analysis``: fvcore with the attention matmuls counted, on one image of the config's test size).
Timings do depend on the host and its load: the runs record their own (while other runs share the host),
and :func:`measure_timings` (``tools/study.py --time``) measures every arm in one process, interleaved
round by round, on the same val images and the same training batch, as medians and ratios to each
arm's baseline. Run it when nothing else runs.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Dict, List, Optional

from .design import Arm, StudyDesign
from .runs import run_config, run_dir

__all__ = ["count_arm", "count_arms", "measure_timings"]


def count_arm(design: StudyDesign, arm: Arm, output_dir: str) -> Dict:
    """Parameters and inference GFLOPs (multiply-adds) of ``arm``'s model at its config's test image size."""
    import torch

    from afa_d2.engine.seeding import instantiate_seeded
    from afa_d2.inspection.analysis import analyze_model
    from afa_d2.model_zoo.build import default_image_size

    cfg = run_config(design, arm, 0, output_dir)
    model = instantiate_seeded(cfg.model, 0).eval()
    size = default_image_size(cfg)
    with torch.no_grad():
        result = analyze_model(model, ("flop", "parameter"), size)
    return {"params": result["parameter"]["total"], "gflops": result["flop"]["total"] / 1e9,
            "image_size": list(size)}


def count_arms(design: StudyDesign, output_dir: str, known: Optional[Dict] = None) -> Dict:
    """:func:`count_arm` for each arm not in ``known`` (arm -> counts); returns the whole mapping."""
    counts = dict(known or {})
    for arm in design.arms:
        if arm.name not in counts:
            counts[arm.name] = count_arm(design, arm, output_dir)
    return counts


def _model_for(design: StudyDesign, arm: Arm, output_dir: str, seed: int):
    from afa_d2.engine.seeding import instantiate_seeded
    from afa_d2.model_zoo import load_fitting

    cfg = run_config(design, arm, seed, output_dir)
    model = instantiate_seeded(cfg.model, seed)
    weights = os.path.join(run_dir(output_dir, arm, seed), "model_final.pth")
    if os.path.isfile(weights):  # the trained model proposes what a trained model proposes
        load_fitting(model, weights, arm.config)
    return cfg, model


def measure_timings(design: StudyDesign, output_dir: str, *, rounds: int = 5, images: int = 10,
                    steps: int = 3, seed: int = 0, echo=print) -> Dict:
    """Inference seconds per image and training seconds per step of every arm, interleaved, in this process.

    Each round times every arm once, in turn: ``images`` val images through the model in eval mode, then
    ``steps`` training steps on the first training batch (the optimizer left out: the same for every arm).
    Medians over rounds, with the ratio to each arm's baseline.
    """
    import itertools

    import torch
    from detectron2.utils.events import EventStorage

    from afa_d2.engine.train_loader import build_train_loader
    from afa_d2.engine.inference_timing import first_test_batches

    torch.set_num_threads(design.recipe.threads)
    models, inputs, batch = {}, None, None
    for arm in design.arms:
        cfg, model = _model_for(design, arm, output_dir, seed)
        models[arm.name] = model
        if inputs is None:
            inputs = first_test_batches(cfg, images + 1)
            batch = next(iter(build_train_loader(cfg)[0]))
    times: Dict[str, Dict[str, List[float]]] = {a.name: {"inference": [], "train": []} for a in design.arms}
    with torch.no_grad():
        for m in models.values():  # one untimed call each: kernels for these shapes
            m.eval()(inputs[0])
    for r in range(rounds):
        for arm in design.arms:
            model = models[arm.name]
            model.eval()
            with torch.no_grad():
                t0 = time.perf_counter()
                for x in itertools.islice(inputs, 1, None):
                    model(x)
                times[arm.name]["inference"].append((time.perf_counter() - t0) / max(1, len(inputs) - 1))
            model.train()
            with EventStorage(0):  # the losses log into detectron2's storage
                t0 = time.perf_counter()
                for _ in range(steps):
                    torch.manual_seed(r)  # the same proposals' sampling in every arm
                    losses = model(batch)
                    sum(losses.values()).backward()
                    model.zero_grad(set_to_none=True)
                times[arm.name]["train"].append((time.perf_counter() - t0) / steps)
        echo("timing round {}/{} done".format(r + 1, rounds))
    out = {}
    for arm in design.arms:
        out[arm.name] = {"inference_s_per_image": statistics.median(times[arm.name]["inference"]),
                         "train_s_per_step": statistics.median(times[arm.name]["train"])}
    for arm in design.arms:
        if arm.baseline:
            base = out[arm.baseline]
            out[arm.name]["inference_ratio"] = out[arm.name]["inference_s_per_image"] / base["inference_s_per_image"]
            out[arm.name]["train_ratio"] = out[arm.name]["train_s_per_step"] / base["train_s_per_step"]
    return {"rounds": rounds, "images": len(inputs) - 1, "train_steps": steps, "threads": design.recipe.threads,
            "weights": "seed {} final weights where present, else that seed's initialisation".format(seed),
            "arms": out}
