#!/usr/bin/env python
"""The paper's Table 1 in miniature: sum-up, concat, MSSA and MSCA on the built-in ``shapes``.

Each operator trains the same small model (``configs/shapes/<arch>_R_18_<op>.py``: same
bottom-up, heads, data, optimizer) for the same number of iterations from the same seed
(same initialisation of the shared parts' RNG stream, same data order), then is evaluated
on ``shapes_val``. Prints a markdown table of box / mask AP, AP50, small-object AP, the
context group's AP (the three ``marker_*`` classes) and run time, and writes it with the raw
results to ``<output-dir>/table1_shapes.{md,json}`` after every operator. Not part of CI: about
``4 x (max_iter x 0.4 s + 1 min)`` on 2 CPU cores::

    python tools/table1_shapes.py --max-iter 300
    python tools/table1_shapes.py --arch cascade_mask_rcnn --ops sum mssa msca --max-iter 300

The schedule keeps the shapes configs' shape at any length (warm-up, lr x 0.1 at 0.85 and 0.95
of training; ``afa_d2.engine.fit_schedule_to_iters``). On the paper's claim: the ``marker_*`` classes of
``shapes`` differ only by a distant scene band, so the per-class AP of those three (in the json)
is where global, cross-scale context should help most.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import afa_d2  # noqa: F401  (detectron2 compat patches first)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("sum", "concat", "mssa", "msca")
LABELS = {"sum": "sum-up (FPN)", "concat": "concat (FPN-cat)", "mssa": "MSSA", "msca": "MSCA"}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="mask_rcnn", choices=["mask_rcnn", "cascade_mask_rcnn"])
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--max-iter", type=int, default=300, help="training iterations per operator (same for all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader workers (default: as the demo, none on 2 cores or fewer)")
    p.add_argument("--output-dir", default="./output/table1_shapes")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value for every run")
    return p.parse_args(argv)


def run_one(args, op: str, names: Dict[str, str]) -> Dict:
    from afa_d2.engine import do_train, fit_schedule_to_iters, load_config, resolve_epoch_schedule
    from afa_d2.engine.runs import cpu_loader_workers
    from afa_d2.evaluation import summarize_results

    path = os.path.join(REPO, "configs", "shapes", "{}_R_18_{}.py".format(args.arch, op))
    if not os.path.isfile(path):
        raise FileNotFoundError("no shapes config for {} with {}: {}".format(args.arch, op, path))
    cfg = load_config(path, list(args.opts or []))
    cfg.dataloader.train.dataset.names = names["train"]
    cfg.dataloader.test.dataset.names = names["val"]
    cfg.train.output_dir = os.path.join(args.output_dir, "{}_{}".format(args.arch, op))
    cfg.train.seed = args.seed
    cfg.train.device = "cpu"
    cfg.dataloader.train.num_workers = cpu_loader_workers() if args.workers is None else args.workers
    fit_schedule_to_iters(cfg, args.num_train, args.max_iter)
    resolve_epoch_schedule(cfg, num_images=args.num_train)
    t0 = time.perf_counter()
    results = do_train(cfg, resume=False, progress_bar=True)
    seconds = time.perf_counter() - t0
    return dict(op=op, config=os.path.relpath(path, REPO), seconds=seconds, metrics=summarize_results(results),
                batch=int(cfg.dataloader.train.total_batch_size),
                results=json.loads(json.dumps(results, default=float)))


def context_ap(results: Dict, task: str = "bbox") -> float:
    """Mean AP of the three ``marker_*`` classes: the group that only context separates."""
    from afa_d2.data.shapes import MARKER_CLASSES

    values = [results.get(task, {}).get("AP-" + name) for name in MARKER_CLASSES]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def markdown(rows: List[Dict], args) -> str:
    lines = [
        "Table 1 on shapes: {} R-18 (half width, GN), {} iterations x batch {}, seed {}, {} train / {} val images".format(
            args.arch, args.max_iter, rows[0].get("batch", "?") if rows else "?", args.seed, args.num_train,
            args.num_val),
        "",
        "| operator | box AP | box AP50 | box APs | context box AP (markers) | mask AP | mask AP50 "
        "| train + eval time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append("| {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} min |".format(
            LABELS[r["op"]], m.get("box_AP", float("nan")), m.get("box_AP50", float("nan")),
            r["results"].get("bbox", {}).get("APs", float("nan")), context_ap(r["results"]),
            m.get("mask_AP", float("nan")), m.get("mask_AP50", float("nan")), r["seconds"] / 60))
    return "\n".join(lines)


def _write(rows: List[Dict], args) -> str:
    """The table and the raw results so far (after every operator: a stopped run keeps its rows)."""
    from afa_d2.engine.checkpoint import atomic_write_text

    table = markdown(rows, args)
    atomic_write_text(table + "\n", os.path.join(args.output_dir, "table1_shapes.md"))
    atomic_write_text(json.dumps(dict(args=vars(args), rows=rows), indent=2),
                      os.path.join(args.output_dir, "table1_shapes.json"))
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from afa_d2.data import shapes_split_names
    from afa_d2.engine.runs import log_to_file

    os.makedirs(args.output_dir, exist_ok=True)
    log_to_file(os.path.join(args.output_dir, "log.txt"))
    names = shapes_split_names(args.num_train, args.num_val)
    rows = []
    for op in args.ops:
        print("== {} ({}), {} iterations".format(LABELS[op], args.arch, args.max_iter), flush=True)
        row = run_one(args, op, names)
        rows.append(row)
        print("   box AP {box_AP:.1f} / AP50 {box_AP50:.1f}, mask AP {mask_AP:.1f} / AP50 {mask_AP50:.1f}, "
              "context (markers) box AP {ctx:.1f}, {t:.1f} min".format(
                  t=row["seconds"] / 60, ctx=context_ap(row["results"]), **row["metrics"]), flush=True)
        table = _write(rows, args)
    print("\n" + table + "\n\nwritten to {}".format(os.path.abspath(args.output_dir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
