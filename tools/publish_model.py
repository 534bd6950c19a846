#!/usr/bin/env python
"""Publish a training checkpoint into a model zoo folder: weights and metadata, named by hash.

    python tools/publish_model.py output/shapes/mask_rcnn_R_18_msca/model_final.pth \\
        --config shapes/mask_rcnn_R_18_msca.py --zoo-dir /srv/afa_d2_zoo

Drops the optimizer, scheduler, iteration and trainer state; keeps the model weights and a
metadata record (config, operator, afa_d2 version, git commit, metrics and training cost read from
the run folder's config.yaml and metrics.json, plus what the flags add); writes
``<name>-<first 8 hex of sha256>.pth``, rewrites the folder's ``model_zoo.json``, and prints the
row of MODEL_ZOO.md's table for it. See :mod:`afa_d2.model_zoo.publish`.
"""
import argparse
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.catalog import get_config_file
from afa_d2.model_zoo.publish import TABLE_HEADER, publish_checkpoint, table_row, write_index, write_model_zoo_md
from afa_d2.model_zoo.zoo import default_zoo_dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a training checkpoint, e.g. <output_dir>/model_final.pth")
    p.add_argument("--config", default=None,
                   help="the config's zoo name, e.g. shapes/mask_rcnn_R_18_msca.py (the index maps it to the file)")
    p.add_argument("--zoo-dir", default=None, help="the zoo folder (default $AFA_D2_CACHE/model_zoo)")
    p.add_argument("--name", default=None, help="the file name's stem (default: the config's)")
    p.add_argument("--run-dir", default=None, help="the run folder with config.yaml and metrics.json "
                   "(default: the checkpoint's folder)")
    p.add_argument("--inference-seconds-per-image", type=float, default=None,
                   help="inference time to record (e.g. from python tools/benchmark.py)")
    p.add_argument("--md", default=None, help="also rewrite this MODEL_ZOO.md from the zoo folder")
    args = p.parse_args(argv)
    if args.config is not None:
        try:
            get_config_file(args.config)
        except FileNotFoundError as e:
            p.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    extra = {}
    if args.inference_seconds_per_image is not None:
        extra["inference"] = {"seconds_per_image": args.inference_seconds_per_image}
    zoo_dir = args.zoo_dir or default_zoo_dir()
    entry = publish_checkpoint(args.checkpoint, zoo_dir, name=args.name, config=args.config,
                               run_dir=args.run_dir, metadata=extra)
    print("published {}\nsha256 {}\n".format(entry["path"], entry["sha256"]))
    print(TABLE_HEADER)
    print(table_row(entry))
    if args.md:
        write_model_zoo_md(write_index(zoo_dir), args.md)
        print("\nwrote {}".format(args.md))
    return entry


if __name__ == "__main__":
    from afa_d2.cli import run_command

    sys.exit(run_command("publish_model.py", main))
