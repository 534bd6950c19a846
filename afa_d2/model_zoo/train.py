"""Train and publish the built-in-dataset model zoo in one command (``tools/train_model_zoo.py``).

For each config (default :data:`ZOO_CONFIGS`: Mask R-CNN with sum, concat, MSSA and MSCA,
Cascade Mask R-CNN with MSCA, RetinaNet and FCOS with sum, MSSA and MSCA, all on ``shapes``), in its own
process (so that its peak memory is its own): train ``max_iter`` iterations with the config's schedule
re-sized to that length (:func:`afa_d2.engine.fit_schedule_to_iters`), evaluate on the val split, time inference per val
image. Then publish each final checkpoint into the zoo folder (:func:`~.publish.publish_checkpoint`,
named by hash, with its metadata), rewrite the zoo's index and ``MODEL_ZOO.md`` from the published
files. A config whose run folder already holds a finished run (``zoo_run.json``) is not trained
again, so an interrupted command picks up where it stopped.

``python -m afa_d2.model_zoo.train --one CONFIG --run-dir DIR ...`` is the per-config worker.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, Optional, Sequence

__all__ = ["ZOO_CONFIGS", "DEFAULT_MAX_ITER", "fit_run_schedule", "shapes_config", "shapes_run_config",
           "train_and_time", "train_one", "train_zoo", "main"]

ZOO_CONFIGS = (
    "shapes/mask_rcnn_R_18_sum.py",
    "shapes/mask_rcnn_R_18_concat.py",
    "shapes/mask_rcnn_R_18_mssa.py",
    "shapes/mask_rcnn_R_18_msca.py",
    "shapes/cascade_mask_rcnn_R_18_msca.py",
    "shapes/retinanet_R_18_sum.py",
    "shapes/retinanet_R_18_mssa.py",
    "shapes/retinanet_R_18_msca.py",
    "shapes/fcos_R_18_sum.py",
    "shapes/fcos_R_18_mssa.py",
    "shapes/fcos_R_18_msca.py",
)
# The fresh-clone demo's length on a 2-core host (configs/README.md): about 9 minutes a model.
DEFAULT_MAX_ITER = 1300
# Val images timed for the inference figure (after one untimed image).
INFERENCE_IMAGES = 20
RUN_RECORD = "zoo_run.json"


def shapes_config(config: str, run_dir: str, *, num_train: int, num_val: int, seed: int = 0,
                  workers: Optional[int] = None, opts: Sequence[str] = (), device: Optional[str] = None):
    """The LazyConfig of ``config`` (a zoo name or a file) with ``opts``, set to train on ``shapes``: the splits of
    ``num_train`` / ``num_val`` images, ``run_dir``, ``seed``, the loader ``workers`` (default:
    :func:`~afa_d2.engine.cpu_training.cpu_loader_workers`) and ``device`` (default: the config's where CUDA is there,
    else "cpu"). The schedule is the config's (:func:`fit_run_schedule` re-sizes it)."""
    import torch

    from afa_d2.data import shapes_split_names
    from afa_d2.engine import load_config
    from afa_d2.engine.cpu_training import cpu_loader_workers

    names = shapes_split_names(num_train, num_val)
    cfg = load_config(_config_file(config), list(opts))
    cfg.dataloader.train.dataset.names = names["train"]
    cfg.dataloader.test.dataset.names = names["val"]
    cfg.train.output_dir = run_dir
    if device is None:
        device = "cuda" if torch.cuda.is_available() and str(cfg.train.device).startswith("cuda") else "cpu"
    cfg.train.device = device
    cfg.train.seed = seed
    cfg.dataloader.train.num_workers = cpu_loader_workers() if workers is None else workers
    return cfg


def fit_run_schedule(cfg, num_train: int, max_iter: int, checkpoints: int = 1):
    """Re-size ``cfg``'s schedule to ``max_iter`` iterations on ``num_train`` images (its shape kept:
    :func:`afa_d2.engine.fit_schedule_to_iters`) with ``checkpoints`` evenly spaced checkpoints (the last at the
    end), and resolve it; returns the resolved schedule."""
    from afa_d2.engine import fit_schedule_to_iters, resolve_epoch_schedule

    fit_schedule_to_iters(cfg, num_train, max_iter)
    if checkpoints > 1:
        cfg.train.checkpointer.period_epochs = float(cfg.train.epochs) / checkpoints
        cfg.train.checkpointer.max_to_keep = 1
    return resolve_epoch_schedule(cfg, num_images=num_train)


def shapes_run_config(config: str, run_dir: str, *, max_iter: int, num_train: int, num_val: int, seed: int = 0,
                      workers: Optional[int] = None, opts: Sequence[str] = (), device: Optional[str] = None,
                      checkpoints: int = 1):
    """The LazyConfig of a run of ``config`` on ``shapes``: :func:`shapes_config` with the recipe re-sized to
    ``max_iter`` iterations (:func:`fit_run_schedule`). The one training set-up of the zoo trainer, the operator
    study (``afa_d2.study``) and the demo."""
    cfg = shapes_config(config, run_dir, num_train=num_train, num_val=num_val, seed=seed, workers=workers,
                        opts=opts, device=device)
    fit_run_schedule(cfg, num_train, max_iter, checkpoints)
    return cfg


def _config_file(config: str) -> str:
    from .catalog import get_config_file

    return config if os.path.isfile(config) else get_config_file(config)


def train_and_time(cfg, config: str, opts: Sequence[str] = (), *, resume: bool = False,
                   inference_images: int = INFERENCE_IMAGES, console_log: bool = True, progress_bar: bool = False,
                   deadline: Optional[float] = None, refresh_deadline=None) -> Dict:
    """Train ``cfg`` in this process, then time inference.

    ``console_log``: detectron2's set-up (log to the console and ``log.txt``, ``config.yaml``); else the full log
    goes to ``<output_dir>/log.txt`` only and the console keeps ``progress_bar`` and summaries (the demo).
    ``deadline`` / ``refresh_deadline``: the engine's time budget (:func:`afa_d2.engine.do_train`).

    Returns:
        dict: ``results`` (the final evaluation, detectron2's nested dict), ``train_seconds``, and
        ``inference_seconds_per_image`` of the final weights (eval mode, ``inference_images`` val images
        after one untimed; None for 0 images).
    """
    from afa_d2.engine import do_train
    from afa_d2.engine.cpu_training import log_to_file
    from afa_d2.engine.inference_timing import first_test_batches, seconds_per_image
    from afa_d2.engine.train_loop import default_setup

    from .build import build_model

    os.makedirs(cfg.train.output_dir, exist_ok=True)
    if console_log:
        default_setup(cfg, argparse.Namespace(config_file=_config_file(config), opts=list(opts), eval_only=False))
    else:
        log_to_file(os.path.join(cfg.train.output_dir, "log.txt"))
    if cfg.train.device == "cpu":
        from afa_d2.execution.runtime import configure_cpu_runtime

        configure_cpu_runtime("training {}".format(config))
    t0 = time.perf_counter()
    results = do_train(cfg, resume=resume, progress_bar=progress_bar, deadline=deadline,
                       refresh_deadline=refresh_deadline)
    train_seconds = time.perf_counter() - t0
    final = os.path.join(cfg.train.output_dir, "model_final.pth")
    if not os.path.isfile(final):
        raise RuntimeError("training finished without writing {}".format(final))
    per_image = None
    if inference_images > 0:
        model = build_model(cfg, final, cfg.train.device, seed=None, config_name=config)
        per_image = seconds_per_image(model, first_test_batches(cfg, inference_images + 1))
    return {"results": results, "train_seconds": train_seconds, "inference_seconds_per_image": per_image}


def train_one(config: str, run_dir: str, *, max_iter: int, num_train: int, num_val: int, seed: int = 0,
              threads: Optional[int] = None, workers: Optional[int] = None,
              opts: Sequence[str] = ()) -> Dict:
    """Train ``config`` (a zoo name) in this process; write ``<run_dir>/zoo_run.json`` and return it.

    The record holds what the run folder does not: the evaluation metrics as numbers, inference
    seconds per val image (eval mode, ``INFERENCE_IMAGES`` images), threads and wall time.
    """
    import torch

    from afa_d2.data import shapes_split_names
    from afa_d2.evaluation import summarize_results
    from afa_d2.storage import atomic_write_text

    if threads:
        torch.set_num_threads(threads)
    names = shapes_split_names(num_train, num_val)
    cfg = shapes_run_config(config, run_dir, max_iter=max_iter, num_train=num_train, num_val=num_val, seed=seed,
                            workers=workers, opts=opts)
    done = train_and_time(cfg, config, opts)
    results, train_seconds, per_image = done["results"], done["train_seconds"], done["inference_seconds_per_image"]
    record = {
        "config": config,
        "config_overrides": list(opts),
        "metrics": summarize_results(results),
        "inference": {"seconds_per_image": per_image, "images": INFERENCE_IMAGES, "device": str(cfg.train.device),
                      "threads": torch.get_num_threads()},
        "training": {"iterations": int(cfg.train.max_iter), "wall_seconds": round(train_seconds, 1),
                     "peak_memory_measure": "torch.cuda.max_memory_allocated" if str(cfg.train.device) != "cpu"
                     else "peak resident memory of the training process (ru_maxrss)",
                     "device": str(cfg.train.device), "threads": torch.get_num_threads(),
                     "total_batch": int(cfg.dataloader.train.total_batch_size), "seed": seed},
        "dataset": {"train": names["train"], "test": names["val"]},
    }
    atomic_write_text(json.dumps(record, indent=1), os.path.join(run_dir, RUN_RECORD))
    return record


def _run_name(config: str) -> str:
    return os.path.splitext(config.replace("/", "_"))[0]


def train_zoo(output_dir: str, zoo_dir: Optional[str] = None, *, configs: Sequence[str] = ZOO_CONFIGS,
              max_iter: int = DEFAULT_MAX_ITER, num_train: int = 2000, num_val: int = 200, seed: int = 0,
              threads: Optional[int] = None, workers: Optional[int] = None, opts: Sequence[str] = (),
              model_zoo_md: Optional[str] = None) -> Dict:
    """Train every config in its own process, publish them, write the index and ``MODEL_ZOO.md``.

    Args:
        output_dir (str): the runs go to ``<output_dir>/<config name>/``.
        zoo_dir (str): the zoo folder to publish into (default ``$AFA_D2_CACHE/model_zoo``, where
            ``model_zoo.get(..., trained=True)`` looks when ``$AFA_D2_ZOO_URL`` is not set).
        configs (list[str]): zoo config names.
        max_iter, num_train, num_val, seed, threads, workers, opts: for every run (see :func:`train_one`).
        model_zoo_md (str): where to write MODEL_ZOO.md (default ``<zoo_dir>/MODEL_ZOO.md``).

    Returns:
        dict: the zoo's index.
    """
    from afa_d2.storage import atomic_write_text

    from .catalog import get_config_file
    from .publish import publish_checkpoint, write_index, write_model_zoo_md
    from .zoo import default_zoo_dir

    for config in configs:
        get_config_file(config)  # every name checked before the first hour of training
    if int(max_iter) < 1:
        raise ValueError("max_iter must be >= 1, got {!r}".format(max_iter))
    zoo_dir = zoo_dir or default_zoo_dir()
    for i, config in enumerate(configs):
        run_dir = os.path.join(output_dir, _run_name(config))
        record_path = os.path.join(run_dir, RUN_RECORD)
        if os.path.isfile(record_path) and os.path.isfile(os.path.join(run_dir, "model_final.pth")):
            with open(record_path) as f:
                done = json.load(f)
            if done["training"]["iterations"] == max_iter:
                print("[{}/{}] {}: trained already ({})".format(i + 1, len(configs), config, run_dir), flush=True)
            else:
                raise RuntimeError("{} holds a run of {} iterations, not {}: remove it or pick another "
                                   "--output-dir".format(run_dir, done["training"]["iterations"], max_iter))
        else:
            print("[{}/{}] training {} for {} iterations in {}".format(i + 1, len(configs), config, max_iter, run_dir),
                  flush=True)
            cmd = [sys.executable, "-m", "afa_d2.model_zoo.train", "--one", config, "--run-dir", run_dir,
                   "--max-iter", str(max_iter), "--num-train", str(num_train), "--num-val", str(num_val),
                   "--seed", str(seed)]
            if threads:
                cmd += ["--threads", str(threads)]
            if workers is not None:
                cmd += ["--workers", str(workers)]
            proc = subprocess.run(cmd + list(opts))
            if proc.returncode != 0:
                raise RuntimeError("training {} failed (exit {}); its log: {}".format(
                    config, proc.returncode, os.path.join(run_dir, "log.txt")))
            with open(record_path) as f:
                done = json.load(f)
        published = os.path.join(zoo_dir, done.get("published_file", ""))
        if done.get("published_file") and os.path.isfile(published):
            print("      published already: {}".format(published), flush=True)
            continue
        extra = {k: done[k] for k in ("config_overrides", "metrics", "inference", "dataset")}
        extra["training"] = done["training"]
        entry = publish_checkpoint(os.path.join(run_dir, "model_final.pth"), zoo_dir, config=config,
                                   name=_run_name(config).replace("shapes_", "") + "_shapes",
                                   metadata=extra, update_index=False)
        done["published_file"] = entry["file"]
        atomic_write_text(json.dumps(done, indent=1), record_path)
        print("      published {}".format(entry["path"]), flush=True)
    index = write_index(zoo_dir)
    md_path = model_zoo_md or os.path.join(zoo_dir, "MODEL_ZOO.md")
    write_model_zoo_md(index, md_path)
    print("zoo index: {}\nMODEL_ZOO.md: {}".format(os.path.join(zoo_dir, "model_zoo.json"), md_path), flush=True)
    return index


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tools/train_model_zoo.py",
        description="Train and publish the built-in-dataset model zoo (shapes): Mask R-CNN with sum, concat, "
        "MSSA and MSCA, Cascade Mask R-CNN with MSCA, RetinaNet and FCOS with sum, MSSA and MSCA, then write the "
        "zoo's index and MODEL_ZOO.md.")
    p.add_argument("--output-dir", default="./output/model_zoo", help="where the training runs go")
    p.add_argument("--zoo-dir", default=None,
                   help="the zoo folder to publish into (default $AFA_D2_CACHE/model_zoo)")
    p.add_argument("--configs", nargs="+", default=list(ZOO_CONFIGS), help="zoo config names")
    p.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER, help="training iterations of every model")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers")
    p.add_argument("--md", default=None, help="where to write MODEL_ZOO.md (default <zoo-dir>/MODEL_ZOO.md)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the per-config worker
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value for every run")
    args = p.parse_args(argv)
    if args.max_iter < 1:
        p.error("--max-iter must be >= 1, got {}".format(args.max_iter))
    for name in ("num_train", "num_val"):
        if getattr(args, name) < 1:
            p.error("--{} must be >= 1, got {}".format(name.replace("_", "-"), getattr(args, name)))
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    import afa_d2  # noqa: F401  (detectron2 compat patches first)

    args = parse_args(argv)
    if args.one:
        return train_one(args.one, args.run_dir, max_iter=args.max_iter, num_train=args.num_train,
                         num_val=args.num_val, seed=args.seed, threads=args.threads, workers=args.workers,
                         opts=args.opts)
    return train_zoo(args.output_dir, args.zoo_dir, configs=args.configs, max_iter=args.max_iter,
                     num_train=args.num_train, num_val=args.num_val, seed=args.seed, threads=args.threads,
                     workers=args.workers, opts=args.opts, model_zoo_md=args.md)


if __name__ == "__main__":
    main()
