"""The ``shapes`` command line: ``python -m afa_d2.data.shapes --out DIR [--preview] [--generate]``
draws a few images into a preview grid (:func:`preview`, masks, boxes and labels beside each
image) and, with ``--generate``, writes a split (images and json) with :func:`generate_split`.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import List, Optional, Sequence

import cv2
import numpy as np

from .. import shapes as _package
from .classes import _SPLIT_CODES
from .render import render_image
from .splits import generate_split


def preview(images: Sequence[np.ndarray], instances: Sequence[List[dict]], cols: int = 4) -> np.ndarray:
    """A grid (BGR uint8) of images, each beside a copy with its masks, boxes and labels."""
    tiles = []
    for image, insts in zip(images, instances):
        over = image.copy()
        rng = np.random.default_rng(0)
        for inst in insts:
            color = rng.uniform(60, 255, 3)
            m = inst["mask"].astype(bool)
            over[m] = (0.45 * over[m] + 0.55 * color).astype(np.uint8)
            ys, xs = np.nonzero(m)
            cv2.rectangle(over, (int(xs.min()), int(ys.min())), (int(xs.max()), int(ys.max())),
                          tuple(int(c) for c in color), 1)
            label = inst["category"].replace("marker_", "m_")
            cv2.putText(over, label, (int(xs.min()), max(8, int(ys.min()) - 2)), cv2.FONT_HERSHEY_PLAIN,
                        0.7, (255, 255, 255), 1, cv2.LINE_AA)
        pair = np.concatenate([image, np.full((image.shape[0], 4, 3), 255, np.uint8), over], 1)
        tiles.append(pair)
    th = max(t.shape[0] for t in tiles) + 6
    tw = max(t.shape[1] for t in tiles) + 6
    rows = math.ceil(len(tiles) / cols)
    grid = np.full((rows * th, min(cols, len(tiles)) * tw, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * th:r * th + t.shape[0], c * tw:c * tw + t.shape[1]] = t
    return grid


def main(argv: Optional[Sequence[str]] = None) -> None:
    # the package's docstring, as when this was ``shapes.py``; prog: this file is ``__main__.py``
    parser = argparse.ArgumentParser(prog="python -m afa_d2.data.shapes",
                                     description=_package.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", default="val", choices=sorted(_SPLIT_CODES))
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", action="store_true", help="write preview.png (images and their masks)")
    parser.add_argument("--generate", action="store_true", help="also write the split (images + json)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.generate:
        t0 = time.perf_counter()
        generate_split(args.out, args.split, args.num_images, seed=args.seed)
        print("wrote {} images in {:.1f} s to {}".format(args.num_images, time.perf_counter() - t0, args.out))
    if args.preview or not args.generate:
        rendered = [render_image(args.seed, args.split, i) for i in range(args.num_images)]
        grid = preview([r[0] for r in rendered], [r[1] for r in rendered], cols=2)
        path = os.path.join(args.out, "preview.png")
        cv2.imwrite(path, grid)
        for i, (_, insts, info) in enumerate(rendered):
            print("image {}: scene={} band={} instances: {}".format(
                i, info["scene"], info["side"], ", ".join(d["category"] for d in insts)))
        print("wrote", path)


if __name__ == "__main__":
    main()
