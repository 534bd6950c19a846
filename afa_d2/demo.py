"""``python -m afa_d2.demo``: train Mask R-CNN with MSCA on ``shapes`` on the CPU, within a time budget.

What it does, in order, printing where everything is at the end:

1. generates the built-in ``shapes`` dataset into the cache (first run only; docs/DESIGN.md, "The data");
2. times a few training steps and an inference, and sizes the schedule so that training and
   evaluation fit in ``--minutes`` (default 10, counted from the process's start, dataset
   generation included): the schedule keeps the config's shape (warm-up, lr x 0.1 at its
   fractions of training: 0.85 and 0.95 in the shapes configs) and the engine turns it into
   iterations, as for every config;
3. trains ``configs/shapes/mask_rcnn_R_18_msca.py`` with ``afa_d2.engine.do_train``
   (tqdm progress bar) to a deadline: the engine's ``TimeBudget`` re-sizes the schedule from
   the speed of the training loop itself until 60% of it (the start-up timing, on a fresh
   model, was 0.88x-1.28x of a run's real step), times the evaluation again on the half-trained
   model, and ends training early if the machine slows down after 60%; saves
   ``model_final.pth``, evaluates box and mask AP on ``shapes_val``;
4. writes ``predictions.png``: a few val images with their ground truth (left) and the model's
   predictions (right), drawn by detectron2's ``Visualizer``, and ``demo_metrics.json``.

``--max-iter N`` skips the timing and trains exactly N iterations (tests, reproducible runs);
``--num-train`` / ``--num-val`` register smaller ``shapes`` splits under their own names.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from typing import Dict, Optional, Sequence


def _process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 elsewhere).

    ``python -m afa_d2.demo`` imports the ``afa_d2`` package, and with it torch and detectron2,
    before this module's first line runs: several seconds the budget must count.
    """
    try:
        with open("/proc/self/stat") as f:
            # the command name (field 2) may hold spaces: fields are counted after its ")"
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


# The budget counts from the process's start (``time.perf_counter()`` scale).
_T_START = time.perf_counter() - _process_age_s()

import afa_d2  # noqa: F401,E402  (detectron2 compat patches first; already imported under -m)
from afa_d2.engine.inference_timing import first_test_batches, seconds_per_image  # noqa: E402

__all__ = ["deadline_from_trained_model", "default_config_file", "main", "parse_args", "run_demo"]

logger = logging.getLogger("afa_d2.demo")

DEFAULT_CONFIG = os.path.join("configs", "shapes", "mask_rcnn_R_18_msca.py")
# shapes_train / shapes_val as registered by ``import afa_d2`` (afa_d2.data.shapes.register_shapes)
from afa_d2.data.shapes.catalog import DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL  # noqa: E402
# Time kept aside (seconds) after training: the final checkpoint, the COCO evaluation itself
# (inference is estimated apart), drawing the PNG, and the process's exit.
_OVERHEAD_S = 15.0
# Val images timed on the half-trained model, and the slack on the evaluation time they predict
# (image sizes vary; the model keeps learning). A fresh model keeps many more low-score boxes than a
# trained one, so its inference time over-estimates the evaluation's: it is timed again half-way.
_REFRESH_IMAGES = 6
_EVAL_SLACK = 1.25
# Training steps run before the timed ones (first allocations, first kernels).
_WARMUP_STEPS = 2


def default_config_file() -> str:
    """``configs/shapes/mask_rcnn_R_18_msca.py`` of the source tree afa_d2 runs from."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(afa_d2.__file__)))
    path = os.path.join(repo, DEFAULT_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            "the demo's config {} is not there: run the demo from a clone of afa_d2 (pip install -e .), "
            "or pass --config-file".format(path)
        )
    return path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m afa_d2.demo",
        description="Train Mask R-CNN with MSCA on the built-in shapes dataset on CPU, evaluate it, "
        "save the checkpoint and a PNG of predictions, within a time budget.",
    )
    p.add_argument("--output-dir", default="./output/demo", help="where everything is written")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="wall-clock budget for the whole demo, dataset generation included (default 10)")
    p.add_argument("--config-file", default=None, help="LazyConfig (default: {})".format(DEFAULT_CONFIG))
    p.add_argument("--max-iter", type=int, default=None,
                   help="train exactly this many iterations instead of sizing them to --minutes")
    p.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="shapes training images")
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="shapes validation images")
    p.add_argument("--num-vis", type=int, default=4, help="val images drawn in predictions.png")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the faster of torch's default and 1, timed at start-up)")
    p.add_argument("--workers", type=int, default=None,
                   help="training data-loader worker processes (default: 0 on a machine with 2 cores or "
                   "fewer, where they take CPU from the training step; else up to 2)")
    p.add_argument("--seed", type=int, default=0, help="training seed (data order, sampling, init)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides key=value, e.g. model.backbone.aggregation=mssa")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be > 0, got {}".format(args.minutes))
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0, got {}".format(args.workers))
    if args.max_iter is not None and args.max_iter < 1:
        p.error("--max-iter must be >= 1, got {}".format(args.max_iter))
    for name in ("num_train", "num_val", "num_vis"):
        if getattr(args, name) < (0 if name == "num_vis" else 1):
            p.error("--{} must be positive, got {}".format(name.replace("_", "-"), getattr(args, name)))
    return args


def default_workers() -> int:
    """Loader workers for the demo: :func:`afa_d2.engine.cpu_training.cpu_loader_workers`."""
    from afa_d2.engine.cpu_training import cpu_loader_workers

    return cpu_loader_workers()


def _load_config(args, num_train: int):
    """The demo's config: the zoo trainer's set-up (:func:`afa_d2.model_zoo.train.shapes_config`) on the demo's
    splits, output folder, CPU, seed and loader workers."""
    from afa_d2.model_zoo.train import shapes_config

    return shapes_config(args.config_file or default_config_file(), args.output_dir, num_train=num_train,
                         num_val=args.num_val, seed=args.seed,
                         workers=default_workers() if args.workers is None else args.workers,
                         opts=list(args.opts or []), device="cpu")


def _time_steps(cfg, num_steps: int = 5, threads: Sequence[int] = ()) -> Dict[str, float]:
    """Seconds per training step (batch of the config) and per val image at inference.

    With several ``threads`` counts, each is timed and the fastest is kept (``torch.set_num_threads``):
    on a busy machine one thread can beat two.
    """
    import torch
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    torch.manual_seed(cfg.train.seed)
    model = instantiate(cfg.model).to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    threads = list(threads) or [torch.get_num_threads()]
    loader = iter(instantiate(cfg.dataloader.train))
    batches = [next(loader) for _ in range(_WARMUP_STEPS + num_steps * len(threads))]
    del loader  # its workers (if any) stop prefetching: the steps are timed alone
    times: Dict[int, list] = {n: [] for n in threads}
    with EventStorage(0):
        for i, batch in enumerate(batches):
            n = threads[max(0, i - _WARMUP_STEPS) // num_steps]
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= _WARMUP_STEPS:
                times[n].append(time.perf_counter() - t0)
    # The median: a step that meets an image size for the first time also builds its convolution
    # kernels (oneDNN caches them by shape), which the long run pays only once per size.
    per_thread = {n: statistics.median(t) for n, t in times.items()}
    best = min(per_thread, key=per_thread.get)
    torch.set_num_threads(best)
    model.eval()
    per_image = seconds_per_image(model, first_test_batches(cfg, 3))
    return {"train_step_s": per_thread[best], "infer_image_s": per_image, "threads": float(best)}


def deadline_from_trained_model(cfg, end: float, num_val: int, report: Optional[Dict] = None):
    """A ``refresh_deadline`` for the engine's ``TimeBudget``: when called (half-way through
    training), it times the model being trained on a few val images and returns ``end`` less the
    evaluation of ``num_val`` images that this predicts (with :data:`_EVAL_SLACK`).

    The val images are loaded now, not during training. ``report["infer_image_trained_s"]`` gets
    the measured seconds per image.
    """
    inputs = first_test_batches(cfg, _REFRESH_IMAGES + 1)

    def refresh(trainer) -> float:
        model = trainer.model
        was_training = model.training
        model.eval()
        try:
            per_image = seconds_per_image(model, inputs)
        finally:
            model.train(was_training)
        if report is not None:
            report["infer_image_trained_s"] = per_image
        logger.info("Inference on the half-trained model: %.3f s an image", per_image)
        return end - per_image * num_val * _EVAL_SLACK

    return refresh


def draw_predictions(cfg, checkpoint: str, dataset_name: str, path: str, num_images: int = 4,
                     score_thresh: float = 0.5) -> str:
    """Write a PNG of ``num_images`` images of ``dataset_name``: ground truth | predictions.

    Returns ``path``.
    """
    import cv2
    import numpy as np
    import torch
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    from afa_d2.data import read_image
    from afa_d2.model_zoo.build import build_model

    model = build_model(cfg, checkpoint, cfg.train.device, seed=None, config_name="the demo's config")
    metadata = MetadataCatalog.get(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    mapper = instantiate(cfg.dataloader.test.mapper)  # the test loader's own mapping: its resize and format
    rows = []
    for record in dicts:
        rgb = read_image(record["file_name"], "RGB")
        inputs = mapper(dict(record))
        with torch.no_grad():
            instances = model([inputs])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        gt = Visualizer(rgb, metadata, scale=2.0).draw_dataset_dict(record).get_image()
        pred = Visualizer(rgb, metadata, scale=2.0).draw_instance_predictions(instances).get_image()
        rows.append(np.concatenate([gt, np.full((gt.shape[0], 8, 3), 255, np.uint8), pred], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = np.concatenate(rows, axis=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, grid[:, :, ::-1]):
        raise OSError("could not write {}".format(path))
    return path


def _size_training(args: argparse.Namespace, cfg, t_start: float):
    """``(max_iter, deadline, refresh_deadline, timing)``: ``--max-iter`` as given, else the iterations that fit
    the budget from timed training steps and a timed inference, with the engine's deadline and its half-way
    refresh (:func:`deadline_from_trained_model`)."""
    if args.max_iter is not None:
        print("[2/4] training {} iterations (--max-iter)".format(args.max_iter), flush=True)
        return args.max_iter, None, None, {}
    import torch

    budget_s = args.minutes * 60.0
    choices = [args.threads] if args.threads else sorted({torch.get_num_threads(), 1}, reverse=True)
    timing = _time_steps(cfg, threads=choices)
    # Training must end in time for the evaluation and what follows it. The evaluation is
    # timed here on the fresh model, which keeps more low-score boxes than a trained one (an
    # over-estimate), then again half-way through training (deadline_from_trained_model).
    deadline = t_start + budget_s - timing["infer_image_s"] * args.num_val - _OVERHEAD_S
    train_s = deadline - time.perf_counter()
    if train_s <= 0:
        raise RuntimeError(
            "--minutes {:g} leaves no time to train: start-up took {:.0f} s and the evaluation of {} "
            "images needs about {:.0f} s; give more minutes or fewer --num-val images".format(
                args.minutes, time.perf_counter() - t_start, args.num_val, timing["infer_image_s"] * args.num_val)
        )
    max_iter = max(1, int(train_s / timing["train_step_s"]))
    refresh = deadline_from_trained_model(cfg, t_start + budget_s - _OVERHEAD_S, args.num_val, timing)
    print("[2/4] {:.1f} s per training step, {:.2f} s per val image ({} CPU threads): about {} iterations "
          "fit in the {:g}-minute budget; re-sized from the measured speed while training".format(
              timing["train_step_s"], timing["infer_image_s"], int(timing["threads"]), max_iter, args.minutes),
          flush=True)
    return max_iter, deadline, refresh, timing


def run_demo(args: argparse.Namespace) -> Dict:
    """Run the demo as ``args`` says (see :func:`parse_args`); returns what it wrote and measured."""
    # As a command (``python -m afa_d2.demo``), the budget includes importing torch and detectron2.
    t_start = _T_START if __name__ == "__main__" else time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from detectron2.data import DatasetCatalog

    import afa_d2.data  # noqa: F401  (registers shapes_train / shapes_val)
    from afa_d2.data import shapes_split_names
    from afa_d2.engine.cpu_training import log_to_file
    from afa_d2.evaluation import summarize_results
    from afa_d2.model_zoo.train import fit_run_schedule, train_and_time

    log_to_file(os.path.join(args.output_dir, "log.txt"))
    from afa_d2.execution.runtime import configure_cpu_runtime

    configure_cpu_runtime("the demo")

    names = shapes_split_names(args.num_train, args.num_val)
    print("[1/4] shapes dataset ({} train / {} val images; generated on first use) ...".format(
        args.num_train, args.num_val), flush=True)
    t0 = time.perf_counter()
    num_train = len(DatasetCatalog.get(names["train"]))
    DatasetCatalog.get(names["val"])
    t_data = time.perf_counter() - t0
    print("      ready in {:.0f} s".format(t_data), flush=True)

    cfg = _load_config(args, args.num_train)
    max_iter, deadline, refresh, timing = _size_training(args, cfg, t_start)
    info = fit_run_schedule(cfg, num_train, max_iter)
    logger.info("%s", info.summary())

    print("[3/4] training Mask R-CNN ({}) on {}; log: {}".format(
        cfg.model.backbone.aggregation, names["train"], os.path.join(args.output_dir, "log.txt")), flush=True)
    t0 = time.perf_counter()
    results = train_and_time(cfg, args.config_file or DEFAULT_CONFIG, list(args.opts or []), inference_images=0,
                             console_log=False, progress_bar=True, deadline=deadline,
                             refresh_deadline=refresh)["results"]
    t_train_eval = time.perf_counter() - t0
    metrics = summarize_results(results)
    checkpoint = os.path.join(args.output_dir, "model_final.pth")

    print("[4/4] drawing predictions on {} val images ...".format(args.num_vis), flush=True)
    png = None
    if args.num_vis > 0:
        png = draw_predictions(cfg, checkpoint, names["val"], os.path.join(args.output_dir, "predictions.png"),
                               num_images=args.num_vis)
    total_s = time.perf_counter() - t_start
    report = dict(
        config=args.config_file or DEFAULT_CONFIG,
        aggregation=str(cfg.model.backbone.aggregation),
        train_dataset=names["train"],
        val_dataset=names["val"],
        max_iter=int(cfg.train.max_iter),
        total_batch=int(cfg.dataloader.train.total_batch_size),
        metrics=metrics,
        results=json.loads(json.dumps(results, default=float)),
        seconds=dict(dataset=round(t_data, 1), train_and_eval=round(t_train_eval, 1), total=round(total_s, 1),
                     **{k: round(v, 3) for k, v in timing.items()}),
        budget_minutes=args.minutes,
        files=dict(checkpoint=checkpoint, predictions_png=png,
                   metrics_json=os.path.join(args.output_dir, "demo_metrics.json"),
                   training_metrics=os.path.join(args.output_dir, "metrics.json"),
                   log=os.path.join(args.output_dir, "log.txt")),
    )
    with open(report["files"]["metrics_json"], "w") as f:
        json.dump(report, f, indent=2, allow_nan=True)
    _print_report(report)
    return report


def _print_report(report: Dict) -> None:
    m = report["metrics"]
    lines = [
        "",
        "afa_d2 demo: Mask R-CNN ({}) on shapes, {} iterations x {} images, {:.1f} min in all".format(
            report["aggregation"], report["max_iter"], report["total_batch"], report["seconds"]["total"] / 60),
        "  box AP {:.1f}  AP50 {:.1f}   mask AP {:.1f}  AP50 {:.1f}   ({})".format(
            m.get("box_AP", float("nan")), m.get("box_AP50", float("nan")),
            m.get("mask_AP", float("nan")), m.get("mask_AP50", float("nan")), report["val_dataset"]),
    ]
    for key, label in (("checkpoint", "checkpoint"), ("predictions_png", "predictions"),
                       ("metrics_json", "metrics"), ("training_metrics", "train log"), ("log", "full log")):
        if report["files"].get(key):
            lines.append("  {:<12} {}".format(label, os.path.abspath(report["files"][key])))
    print("\n".join(lines), flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    run_demo(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
