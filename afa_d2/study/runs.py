"""One run of a study: its config, its fingerprint, its folder, and the worker that trains it.

A run folder ``<study>/runs/<arm>/seed<k>/`` is an ordinary training folder (``config.yaml``,
``log.txt``, ``metrics.json``, ``model_final.pth``), so ``train_net.py --eval-only`` re-evaluates it.
Two small files make it a study's: ``study_run.json``, written before training starts (arm, seed and
the fingerprint of the resolved config), and ``run.json``, written atomically once the run is
finished and evaluated (the record that goes into ``study.json``). A folder whose ``study_run.json``
has another fingerprint is refused, never reused or overwritten.

The fingerprint is a hash of the run's resolved LazyConfig with the output folder left out and the
start checkpoint written as the study run it comes from, plus the thread count: two runs with the
same fingerprint train the same model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from typing import Any, Dict, Optional

from .design import Arm, StudyDesign

__all__ = ["RUN_MARK", "RUN_RECORD", "StudyRunError", "run_dir", "run_config", "fingerprint", "check_run_dir",
           "train_run", "flat_metrics", "read_json"]

logger = logging.getLogger(__name__)

RUN_MARK = "study_run.json"
RUN_RECORD = "run.json"
INFERENCE_IMAGES = 20  # val images timed for the inference figure, after one untimed image
CHECKPOINTS_PER_RUN = 4  # a killed run resumes from the last of these


class StudyRunError(RuntimeError):
    """A run folder or record that this study cannot use: the message says which and why, in one line."""


def run_dir(output_dir: str, arm: Arm, seed: int) -> str:
    return os.path.join(output_dir, "runs", *arm.name.split("/"), "seed{}".format(seed))


def _init_ref(arm_name: str, seed: int) -> str:
    """How a start from another run is written in the fingerprint: by the run, not by its path."""
    return "study-run:{}/seed{}".format(arm_name, seed)


def run_config(design: StudyDesign, arm: Arm, seed: int, output_dir: str):
    """The LazyConfig of run (``arm``, ``seed``): the arm's config and overrides, then the recipe
    (:func:`afa_d2.model_zoo.train.shapes_run_config`: the zoo trainer's set-up, on the CPU, data loaded in
    the main process for an exact resume, four checkpoints to resume from).

    ``train.init_checkpoint`` is :func:`_init_ref` for an arm that starts from another; the runner puts
    the file's path there when it trains.
    """
    from afa_d2.model_zoo.train import shapes_run_config

    recipe = design.recipe
    cfg = shapes_run_config(arm.config, run_dir(output_dir, arm, seed), max_iter=design.iterations(arm),
                            num_train=recipe.num_train, num_val=recipe.num_val, seed=int(seed), workers=0,
                            opts=arm.overrides, device="cpu", checkpoints=CHECKPOINTS_PER_RUN)
    if arm.init_from:
        cfg.train.init_checkpoint = _init_ref(arm.init_from, seed)
    return cfg


def _plain(value: Any) -> Any:
    """A JSON value for the fingerprint: callables by qualified name, no memory addresses."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"_dataclass_": type(value).__qualname__, **dataclasses.asdict(value)}
    if callable(value):
        return "{}.{}".format(getattr(value, "__module__", "?"), getattr(value, "__qualname__", repr(value)))
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def fingerprint(cfg, threads: int) -> str:
    """A hash of what the run trains: the resolved config without its output folder, and the threads."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=False)
    tree["train"].pop("output_dir", None)
    text = json.dumps({"config": tree, "threads": int(threads)}, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_json(path: str, what: str) -> Dict:
    """A JSON object from ``path``; StudyRunError naming the file if it is cut short or not an object."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except ValueError as e:
        raise StudyRunError("{} ({}) is not valid JSON ({}): it was cut short or damaged; move it away to "
                            "redo what it records".format(path, what, e)) from None
    if not isinstance(obj, dict):
        raise StudyRunError("{} ({}) holds a JSON {}, expected an object".format(path, what, type(obj).__name__))
    return obj


def check_run_dir(path: str, arm: Arm, seed: int, fp: str) -> Optional[Dict]:
    """What ``path`` holds for run (``arm``, ``seed``) with fingerprint ``fp``.

    Returns:
        the finished run's record, or None when the run is yet to train or was stopped part way.

    Raises:
        StudyRunError: the folder holds another run, a run of another config, or files of no study run.
    """
    mark_path = os.path.join(path, RUN_MARK)
    if not os.path.isfile(mark_path):
        if os.path.isdir(path) and os.listdir(path):
            raise StudyRunError("{} holds files but no {}: not a run of this study; move it away or choose "
                                "another --output-dir".format(path, RUN_MARK))
        return None
    mark = read_json(mark_path, "the run's mark")
    if (mark.get("arm"), mark.get("seed")) != (arm.name, seed) or mark.get("fingerprint") != fp:
        raise StudyRunError("{} holds run {}/seed{} of config {}, not {}/seed{} of config {}: the config or recipe "
                            "changed since; move the folder away or choose another --output-dir".format(
                                path, mark.get("arm"), mark.get("seed"), mark.get("fingerprint"), arm.name, seed, fp))
    record_path = os.path.join(path, RUN_RECORD)
    if not os.path.isfile(record_path):
        return None
    record = read_json(record_path, "the finished run's record")
    if record.get("fingerprint") != fp:
        raise StudyRunError("{} records config {}, its mark says {}: the folder is damaged; move it away".format(
            record_path, record.get("fingerprint"), fp))
    return record


def flat_metrics(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """detectron2's results as flat ``"task/metric"`` names, plus the shapes groups' mean AP.

    ``<task>/AP-context`` is the mean AP of the ``marker_*`` classes (they differ only by a distant scene
    band, so only context separates them), ``<task>/AP-shapes`` that of the other classes.
    """
    from afa_d2.data.shapes import MARKER_CLASSES

    flat = {}
    for task, metrics in (results or {}).items():
        if not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():  # NaN (a class without ground truth) is written as null
            flat["{}/{}".format(task, name)] = float(value) if math.isfinite(float(value)) else None
        per_class = {k[3:]: float(v) for k, v in metrics.items() if k.startswith("AP-") and math.isfinite(float(v))}
        context = [v for k, v in per_class.items() if k in MARKER_CLASSES]
        others = [v for k, v in per_class.items() if k not in MARKER_CLASSES]
        if context:
            flat["{}/AP-context".format(task)] = sum(context) / len(context)
        if others:
            flat["{}/AP-shapes".format(task)] = sum(others) / len(others)
    return flat


def _clear_attempt(path: str, resume_iter: Optional[int]) -> None:
    """Undo what a stopped attempt left after its last checkpoint: metrics rows past it, or everything."""
    metrics = os.path.join(path, "metrics.json")
    if os.path.isfile(metrics):
        from afa_d2.storage import atomic_write_text
        from afa_d2.engine.metrics_json import read_metrics

        rows = read_metrics(metrics) if resume_iter is not None else []
        kept = [r for r in rows if r.get("iteration", -1) <= resume_iter] if resume_iter is not None else []
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), metrics)
    if resume_iter is None:
        for f in os.listdir(path):
            if f.startswith("events.out.tfevents"):
                os.remove(os.path.join(path, f))


def _last_checkpoint_iter(path: str) -> Optional[int]:
    last = os.path.join(path, "last_checkpoint")
    if not os.path.isfile(last):
        return None
    with open(last) as f:
        name = f.read().strip()
    if not os.path.isfile(os.path.join(path, name)):
        return None
    m = re.match(r"model_(\d+)\.pth$", name)
    return int(m.group(1)) if m else None


def _peak_rss_mib() -> Optional[float]:
    try:
        import resource
    except ImportError:  # not on Linux / macOS
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def train_run(design: StudyDesign, arm: Arm, seed: int, output_dir: str, *, init_checkpoint: Optional[str] = None,
              sharing: int = 1) -> Dict:
    """Train, evaluate and time run (``arm``, ``seed``) in this process; write its ``run.json``; return it.

    Args:
        init_checkpoint (str): the weights of the run ``arm`` starts from (``arm.init_from``).
        sharing (int): runs that share the host meanwhile (recorded beside the timings).
    """
    import torch

    from afa_d2.model_zoo.publish import read_run
    from afa_d2.model_zoo.train import train_and_time
    from afa_d2.storage import atomic_write_text

    torch.set_num_threads(design.recipe.threads)
    cfg = run_config(design, arm, seed, output_dir)
    fp = fingerprint(cfg, design.recipe.threads)
    path = cfg.train.output_dir
    if check_run_dir(path, arm, seed, fp) is not None:
        raise StudyRunError("{} is finished already (its {} exists)".format(path, RUN_RECORD))
    if arm.init_from:
        if not init_checkpoint or not os.path.isfile(init_checkpoint):
            raise StudyRunError("run {}/seed{} starts from {}/seed{}, whose weights {!r} are missing".format(
                arm.name, seed, arm.init_from, seed, init_checkpoint))
        cfg.train.init_checkpoint = init_checkpoint
    os.makedirs(path, exist_ok=True)
    atomic_write_text(json.dumps({"arm": arm.name, "seed": seed, "fingerprint": fp, "study": design.name},
                                 indent=1), os.path.join(path, RUN_MARK))
    resume_iter = _last_checkpoint_iter(path)
    _clear_attempt(path, resume_iter)
    if resume_iter is not None:
        logger.info("Resuming %s/seed%d from its checkpoint at iteration %d", arm.name, seed, resume_iter)
    done = train_and_time(cfg, arm.config, arm.overrides, resume=resume_iter is not None,
                          inference_images=INFERENCE_IMAGES)
    results = done["results"]
    if not results:
        raise StudyRunError("run {}/seed{} ended without an evaluation (see {})".format(
            arm.name, seed, os.path.join(path, "log.txt")))
    for f in os.listdir(path):  # the final weights stay; the resume points are not needed any more
        if re.match(r"model_\d+\.pth$", f):
            os.remove(os.path.join(path, f))
    record = {
        "arm": arm.name,
        "seed": seed,
        "fingerprint": fp,
        "metrics": flat_metrics(results),
        "iterations": int(cfg.train.max_iter),
        "time": {"train_s_per_iter": read_run(path).get("training", {}).get("seconds_per_iter"),
                 "inference_s_per_image": done["inference_seconds_per_image"],
                 "wall_s": round(done["train_seconds"], 1), "threads": torch.get_num_threads(),
                 "runs_sharing_host": sharing, "peak_rss_mib": _peak_rss_mib()},
        "run_dir": path,
    }
    atomic_write_text(json.dumps(record, indent=1), os.path.join(path, RUN_RECORD))
    return record
