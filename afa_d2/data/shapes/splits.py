"""Generating, caching and reading ``shapes`` splits: COCO json (``instances.json``) and
LVIS v1 json (``lvis_v1.json``, with LVIS frequencies from :data:`LVIS_TARGET_IMAGES`),
:func:`generate_split`, the cache under :func:`default_cache_root` filled by
:func:`ensure_split` (file-locked, atomic), and :func:`load_lvis_json` into detectron2 dicts.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from .classes import _SPLIT_CODES, CLASSES, VERSION
from .render import render_image

__all__ = [
    "LVIS_TARGET_IMAGES",
    "default_cache_root",
    "lvis_frequency",
    "split_dirname",
    "generate_split",
    "ensure_split",
    "ensure_lvis_val",
    "lvis_image_counts",
    "load_lvis_json",
]

logger = logging.getLogger(__package__)  # "afa_d2.data.shapes", the logger's name before the split

# LVIS train split: how many images keep the annotations of a category (None: all).
# LVIS groups by image count: r (rare) 1-10, c (common) 11-100, f (frequent) > 100.
LVIS_TARGET_IMAGES: Dict[str, Optional[int]] = {
    "pentagon": 8, "cross": 6, "crescent": 9,       # rare
    "hexagon": 60, "star": 40, "ellipse": 90,       # common
}


def default_cache_root() -> str:
    """``$AFA_D2_CACHE/shapes/<VERSION>`` (``$AFA_D2_CACHE`` defaults to ``~/.cache/afa_d2``)."""
    cache = os.environ.get("AFA_D2_CACHE") or os.path.join("~", ".cache", "afa_d2")
    return os.path.join(os.path.expanduser(cache), "shapes", VERSION)


def lvis_frequency(image_count: int) -> str:
    """LVIS v1 frequency group of a category present in ``image_count`` training images."""
    if image_count <= 10:
        return "r"
    if image_count <= 100:
        return "c"
    return "f"


# ----------------------------------------------------------------------------- writing
def _encode(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _categories() -> List[dict]:
    return [
        dict(id=k + 1, name=name, supercategory="marker" if name.startswith("marker_") else "shape")
        for k, name in enumerate(CLASSES)
    ]


def _render_to_coco(args) -> Tuple[dict, List[dict]]:
    seed, split, index, min_size, max_size, image_dir = args
    image, instances, info = render_image(seed, split, index, min_size=min_size, max_size=max_size)
    file_name = "{:06d}.jpg".format(index)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    with open(os.path.join(image_dir, file_name), "wb") as f:
        f.write(buf.tobytes())
    H, W = image.shape[:2]
    img = dict(id=index + 1, file_name=file_name, height=H, width=W, scene=info["scene"])
    anns = []
    for inst in instances:
        rle = _encode(inst["mask"])
        anns.append(dict(
            image_id=index + 1, category_id=CLASSES.index(inst["category"]) + 1, segmentation=rle,
            area=int(inst["mask"].sum()), bbox=[float(v) for v in mask_util.toBbox(rle)], iscrowd=0,
        ))
    return img, anns


def _lvis_json(coco: dict, split: str, seed: int, train_image_counts: Optional[Dict[int, int]]) -> dict:
    """LVIS v1 flavour of a COCO dict. Train: federated subsampling; val: exhaustive."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], 99])
    images = [dict(im) for im in coco["images"]]
    anns = [dict(a) for a in coco["annotations"]]
    present: Dict[int, set] = {im["id"]: set() for im in images}
    for a in anns:
        present[a["image_id"]].add(a["category_id"])
    cat_ids = [c["id"] for c in coco["categories"]]
    if split == "train":
        keep_pairs = set()
        for cid in cat_ids:
            imgs = sorted(i for i, cs in present.items() if cid in cs)
            target = LVIS_TARGET_IMAGES.get(CLASSES[cid - 1])
            if target is not None and len(imgs) > target:
                imgs = sorted(rng.choice(imgs, target, replace=False).tolist())
            keep_pairs.update((i, cid) for i in imgs)
        anns = [a for a in anns if (a["image_id"], a["category_id"]) in keep_pairs]
        # a few images miss one instance of a category: "not exhaustive"
        not_exh: Dict[int, set] = {im["id"]: set() for im in images}
        by_pair: Dict[Tuple[int, int], List[int]] = {}
        for k, a in enumerate(anns):
            by_pair.setdefault((a["image_id"], a["category_id"]), []).append(k)
        drop = set()
        for pair in sorted(by_pair):
            ks = by_pair[pair]
            if len(ks) >= 2 and rng.random() < 0.05:
                drop.add(ks[int(rng.integers(len(ks)))])
                not_exh[pair[0]].add(pair[1])
        anns = [a for k, a in enumerate(anns) if k not in drop]
        pos = {im["id"]: set() for im in images}
        for a in anns:
            pos[a["image_id"]].add(a["category_id"])
    else:
        not_exh = {im["id"]: set() for im in images}
        pos = present
    for im in images:
        absent = [c for c in cat_ids if c not in present[im["id"]]]
        # verified negatives: a random part of the truly absent categories (federated)
        neg = sorted(c for c in absent if rng.random() < 0.7)
        im["neg_category_ids"] = neg
        im["not_exhaustive_category_ids"] = sorted(not_exh[im["id"]])
    for k, a in enumerate(anns):
        a["id"] = k + 1
        a.pop("iscrowd", None)
    counts = {cid: 0 for cid in cat_ids}
    inst = {cid: 0 for cid in cat_ids}
    for i, cs in pos.items():
        for c in cs:
            counts[c] += 1
    for a in anns:
        inst[a["category_id"]] += 1
    if train_image_counts is None:
        train_image_counts = counts
    cats = []
    for c in coco["categories"]:
        n = train_image_counts[c["id"]]
        cats.append({
            "id": c["id"], "name": c["name"], "synset": "{}.n.01".format(c["name"]), "synonyms": [c["name"]],
            "def": "synthetic {} ({})".format(c["name"].replace("_", " "), c["supercategory"]),
            "frequency": lvis_frequency(n), "image_count": n, "instance_count": inst[c["id"]],
        })
    return dict(info=dict(coco["info"], format="LVIS v1"), licenses=[], images=images,
                annotations=anns, categories=cats)


def split_dirname(split: str, num_images: int, seed: int, min_size: int, max_size: int) -> str:
    """Folder name of a split: "train"/"val" with the registered defaults, else with the params."""
    if (split, num_images, seed, min_size, max_size) in (("train", 2000, 0, 192, 320), ("val", 200, 0, 192, 320)):
        return split
    return "{}_n{}_s{}_{}-{}".format(split, num_images, seed, min_size, max_size)


def generate_split(out_dir: str, split: str, num_images: int, *, seed: int = 0, min_size: int = 192,
                   max_size: int = 320, train_image_counts: Optional[Dict[int, int]] = None,
                   workers: Optional[int] = None) -> None:
    """Write ``out_dir/images/*.jpg``, ``out_dir/instances.json`` (COCO) and, for a train
    split or when ``train_image_counts`` is given, ``out_dir/lvis_v1.json``.

    ``train_image_counts`` (category id -> LVIS-train image count) sets the LVIS
    frequencies of a val split; a train split counts its own.
    """
    if num_images < 1:
        raise ValueError("num_images must be >= 1, got {}".format(num_images))
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    jobs = [(seed, split, i, min_size, max_size, image_dir) for i in range(num_images)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if workers > 1 and num_images >= 64:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            results = pool.map(_render_to_coco, jobs, chunksize=16)
    else:
        results = [_render_to_coco(j) for j in jobs]
    images, anns = [], []
    for img, a in results:
        images.append(img)
        anns.extend(a)
    for k, a in enumerate(anns):
        a["id"] = k + 1
    info = dict(description="afa_d2 shapes {} {}".format(VERSION, split), version=VERSION, seed=seed,
                min_size=min_size, max_size=max_size)
    coco = dict(info=info, licenses=[], images=images, annotations=anns, categories=_categories())
    _write_json(os.path.join(out_dir, "instances.json"), coco)
    if split == "train" or train_image_counts is not None:
        _write_json(os.path.join(out_dir, "lvis_v1.json"), _lvis_json(coco, split, seed, train_image_counts))


def _write_json(path: str, obj: dict) -> None:
    """Write json to a temporary name, then rename: readers never see a partial file."""
    tmp = "{}.tmp-{}".format(path, uuid.uuid4().hex[:8])
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def lvis_image_counts(lvis_train_json: str) -> Dict[int, int]:
    """Category id -> image count, from an LVIS train json's categories."""
    with open(lvis_train_json) as f:
        return {c["id"]: c["image_count"] for c in json.load(f)["categories"]}


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename below still protects the result
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_split(split: str, num_images: int, *, root: Optional[str] = None, seed: int = 0,
                 min_size: int = 192, max_size: int = 320,
                 train_image_counts: Optional[Dict[int, int]] = None) -> str:
    """Generate a split into the cache unless it is there; returns its folder.

    Safe with several processes (e.g. ``--num-gpus 2``): a file lock serializes them,
    and a split is written to a temporary folder and renamed into place, so a killed
    generation never leaves a half-written split behind.
    """
    root = root or default_cache_root()
    final = os.path.join(root, split_dirname(split, num_images, seed, min_size, max_size))
    done = os.path.join(final, "instances.json")
    if os.path.isfile(done):
        return final
    os.makedirs(root, exist_ok=True)
    with _file_lock(os.path.join(root, ".{}.lock".format(os.path.basename(final)))):
        if os.path.isfile(done):
            return final
        tmp = os.path.join(root, ".tmp-{}-{}".format(os.path.basename(final), uuid.uuid4().hex[:8]))
        t0 = time.perf_counter()
        logger.info("Generating shapes %s (%d images) into %s ...", split, num_images, final)
        try:
            generate_split(tmp, split, num_images, seed=seed, min_size=min_size, max_size=max_size,
                           train_image_counts=train_image_counts)
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(done):
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("Generated shapes %s in %.1f s", split, time.perf_counter() - t0)
    return final


def ensure_lvis_val(val_dir: str, train_dir: str, *, seed: int = 0) -> str:
    """Write ``val_dir/lvis_v1.json`` (frequencies from the LVIS train split) unless present."""
    path = os.path.join(val_dir, "lvis_v1.json")
    if os.path.isfile(path):
        return path
    with _file_lock(os.path.join(os.path.dirname(val_dir), ".{}.lock".format(os.path.basename(val_dir)))):
        if not os.path.isfile(path):
            with open(os.path.join(val_dir, "instances.json")) as f:
                coco = json.load(f)
            counts = lvis_image_counts(os.path.join(train_dir, "lvis_v1.json"))
            _write_json(path, _lvis_json(coco, "val", seed, counts))
    return path


def load_lvis_json(json_file: str, image_root: str) -> List[dict]:
    """Read an LVIS v1 json whose ``file_name`` is relative to ``image_root`` into detectron2 dicts.

    (detectron2's ``load_lvis_json`` derives paths from COCO urls and knows only LVIS's own
    category sets.) Category ids 1..K become contiguous ids 0..K-1.
    """
    from detectron2.structures import BoxMode

    with open(json_file) as f:
        data = json.load(f)
    cat_ids = sorted(c["id"] for c in data["categories"])
    id_map = {cid: k for k, cid in enumerate(cat_ids)}
    per_image: Dict[int, List[dict]] = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    records = []
    for img in sorted(data["images"], key=lambda d: d["id"]):
        objs = [
            dict(bbox=a["bbox"], bbox_mode=BoxMode.XYWH_ABS, category_id=id_map[a["category_id"]],
                 segmentation=a["segmentation"])
            for a in per_image.get(img["id"], [])
        ]
        records.append(dict(
            file_name=os.path.join(image_root, img["file_name"]), height=img["height"], width=img["width"],
            image_id=img["id"], not_exhaustive_category_ids=img.get("not_exhaustive_category_ids", []),
            neg_category_ids=img.get("neg_category_ids", []), annotations=objs,
        ))
    return records
