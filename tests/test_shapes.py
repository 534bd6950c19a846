"""The built-in ``shapes`` dataset: deterministic, hard, context-dependent, COCO and LVIS."""
import hashlib
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

import afa_d2  # noqa: F401  (compat patches before detectron2)
import afa_d2.data  # noqa: F401  (registrations)
from afa_d2.data import shapes
from afa_d2.data.shapes import CLASSES, MARKER_CLASSES, SCENES

# third-party noise: pycocotools' decode under NumPy 2 (and lvis' logger.warn)
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]


def _digest(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def rendered():
    """30 val images, drawn in memory."""
    return [shapes.render_image(0, "val", i) for i in range(30)]


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """A registered 24/8-image shapes split under a temporary cache."""
    root = str(tmp_path_factory.mktemp("afa_cache"))
    names = shapes.register_shapes(root, prefix="shapes_t", num_train=24, num_val=8)
    return root, names


def test_generation_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    shapes.generate_split(a, "train", 5, workers=1)
    shapes.generate_split(b, "train", 5, workers=1)
    da, db = _digest(a), _digest(b)
    assert set(da) == {"instances.json", "lvis_v1.json"} | {"images/{:06d}.jpg".format(i) for i in range(5)}
    assert da == db
    # an image does not depend on the size of its split
    c = str(tmp_path / "c")
    shapes.generate_split(c, "train", 2, workers=1)
    assert _digest(c)["images/000001.jpg"] == da["images/000001.jpg"]


def test_concurrent_generation_is_safe(tmp_path):
    """Two ranks asking for the same split at once (a file lock, then an atomic rename)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        dirs = list(pool.map(lambda _: shapes.ensure_split("val", 3, root=str(tmp_path)), range(2)))
    assert dirs[0] == dirs[1]
    with open(os.path.join(dirs[0], "instances.json")) as f:
        assert len(json.load(f)["images"]) == 3
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith(".tmp")]


def test_cache_path_has_version_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path))
    assert shapes.default_cache_root() == os.path.join(str(tmp_path), "shapes", shapes.VERSION)


def test_categories_sizes_and_occlusion(rendered):
    assert len(CLASSES) >= 10 and len(set(CLASSES)) == len(CLASSES)
    sides, areas, occluded, holes, sizes_hw = [], [], 0, 0, set()
    seen = set()
    for image, insts, info in rendered:
        H, W = image.shape[:2]
        sizes_hw.add((H, W))
        assert 192 <= H <= 320 and 192 <= W <= 320
        for d in insts:
            seen.add(d["category"])
            m = d["mask"]
            ys, xs = np.nonzero(m)
            sides.append(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / min(H, W))
            areas.append(m.sum())
            occluded += int(m.sum() < d["full_area"])
            rle = mask_util.encode(np.asfortranarray(m))
            holes += int(mask_util.area(rle) < (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) * 0.2)
    assert any(h % 2 == 1 or w % 2 == 1 for h, w in sizes_hw), "odd image sizes expected"
    assert min(areas) <= 16, "objects of about 4 px expected, smallest has {} px".format(min(areas))
    assert max(sides) >= 0.6, "objects spanning most of the image expected, largest: {:.2f}".format(max(sides))
    assert occluded >= 10, "occlusion expected, {} occluded instances".format(occluded)
    assert len(seen) >= 10, seen


def test_context_group_differs_only_by_the_distant_band():
    checked = 0
    for i in range(12):
        runs = {s: shapes.render_image(0, "val", i, scene=s) for s in SCENES}
        ref_img, ref_insts, ref_info = runs["sea"]
        if not any(d["category"] in MARKER_CLASSES for d in ref_insts):
            continue
        band = ref_info["band_mask"]
        for scene, (img, insts, info) in runs.items():
            assert np.array_equal(info["band_mask"], band)
            # every pixel outside the band and every mask are the same in all three scenes ...
            assert np.array_equal(img[~band], ref_img[~band]), "pixels outside the band depend on the scene"
            assert len(insts) == len(ref_insts)
            for d, r in zip(insts, ref_insts):
                assert np.array_equal(d["mask"], r["mask"])
                # ... but a marker's category is the scene's
                if r["category"] in MARKER_CLASSES:
                    assert d["category"] == "marker_" + scene
                    checked += 1
                    # and the marker lies in the half away from the band
                    ys, xs = np.nonzero(d["mask"])
                    by, bx = np.nonzero(band)
                    H, W = band.shape
                    gap = {"top": ys.min() - by.max(), "bottom": by.min() - ys.max(),
                           "left": xs.min() - bx.max(), "right": bx.min() - xs.max()}[info["side"]]
                    assert gap >= 0.2 * (H if info["side"] in ("top", "bottom") else W)
                else:
                    assert d["category"] == r["category"]
    assert checked >= 6


def test_lvis_frequencies_follow_image_counts():
    # a large fake split, so that every frequency group appears (no rendering needed)
    rng = np.random.default_rng(0)
    images = [dict(id=i + 1, file_name="x.jpg", height=10, width=10) for i in range(400)]
    anns = []
    for im in images:
        for cid in rng.choice(np.arange(1, len(CLASSES) + 1), 6, replace=False):
            for _ in range(int(rng.integers(1, 3))):
                anns.append(dict(image_id=im["id"], category_id=int(cid), bbox=[0, 0, 2, 2], area=4, iscrowd=0,
                                 segmentation={"size": [10, 10], "counts": "0"}))
    coco = dict(info={}, images=images, annotations=anns, categories=shapes._categories())
    lvis = shapes._lvis_json(coco, "train", 0, None)
    counts = {c["id"]: len({a["image_id"] for a in lvis["annotations"] if a["category_id"] == c["id"]})
              for c in lvis["categories"]}
    groups = {}
    for c in lvis["categories"]:
        assert c["image_count"] == counts[c["id"]], c
        assert c["frequency"] == shapes.lvis_frequency(counts[c["id"]]), c
        assert c["frequency"] == {"r": "r", "c": "c", "f": "f"}[
            "r" if counts[c["id"]] <= 10 else "c" if counts[c["id"]] <= 100 else "f"]
        groups.setdefault(c["frequency"], []).append(c["name"])
    assert set(groups) == {"r", "c", "f"}, groups
    assert all(n in groups["f"] for n in MARKER_CLASSES)
    assert any(im["not_exhaustive_category_ids"] for im in lvis["images"])
    for im in lvis["images"]:
        pos = {a["category_id"] for a in lvis["annotations"] if a["image_id"] == im["id"]}
        assert not pos & set(im["neg_category_ids"])


def test_registration_is_lazy(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = tmp_path / "lazy"
    names = shapes.register_shapes(str(root), prefix="shapes_lazy", num_train=3, num_val=2)
    assert names == ["shapes_lazy_train", "shapes_lazy_val", "shapes_lazy_lvis_train", "shapes_lazy_lvis_val"]
    assert not root.exists(), "registering must not generate"
    # the default names: registered by `import afa_d2.data`, sizes fixed, nothing generated here
    for name, n, kind in [("shapes_train", 2000, "coco"), ("shapes_val", 200, "coco"),
                          ("shapes_lvis_train", 2000, "lvis"), ("shapes_lvis_val", 200, "lvis")]:
        assert name in DatasetCatalog.keys()
        meta = MetadataCatalog.get(name)
        assert meta.num_images == n and meta.evaluator_type == kind
        assert meta.thing_classes == list(CLASSES)
        assert os.path.join("shapes", shapes.VERSION) in meta.json_file
        assert meta.image_root.endswith(os.path.join(name.split("_")[-1], "images"))


def test_dataset_catalog_and_images(small_split):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image

    root, names = small_split
    for name in names:
        dicts = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        assert len(dicts) == meta.num_images
        assert os.path.isfile(meta.json_file)
        assert meta.thing_classes == list(CLASSES)
        d = dicts[0]
        img = read_image(d["file_name"], format="BGR")
        assert img.shape == (d["height"], d["width"], 3)
        for a in d["annotations"]:
            assert 0 <= a["category_id"] < len(CLASSES)
            assert isinstance(a["segmentation"], dict)  # RLE: visible part, holes included
        if "lvis" in name:
            assert "neg_category_ids" in d and "not_exhaustive_category_ids" in d
    # LVIS val frequencies come from the LVIS train split
    with open(MetadataCatalog.get("shapes_t_lvis_train").json_file) as f:
        train_cats = json.load(f)["categories"]
    with open(MetadataCatalog.get("shapes_t_lvis_val").json_file) as f:
        val_cats = json.load(f)["categories"]
    assert [c["frequency"] for c in train_cats] == [c["frequency"] for c in val_cats]
    assert {c["frequency"] for c in train_cats} <= {"r", "c", "f"}
    # a second load finds the cache (no temporary folders left behind)
    assert sorted(p for p in os.listdir(root) if not p.startswith(".")) == ["train_n24_s0_192-320",
                                                                            "val_n8_s0_192-320"]
    assert not [p for p in os.listdir(root) if p.startswith(".tmp")]


def test_mapper_reads_rle_masks(small_split):
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.data import transforms as T

    from afa_d2.data import DatasetMapper

    d = DatasetCatalog.get("shapes_t_train")[0]
    mapper = DatasetMapper(is_train=True, augmentations=[T.RandomFlip(1.0)], image_format="BGR",
                           use_instance_mask=True)  # instance_mask_format="polygon" by default
    out = mapper(d)
    inst = out["instances"]
    assert len(inst) == len(d["annotations"])
    assert inst.gt_masks.tensor.shape[1:] == (d["height"], d["width"])
    first = mask_util.decode(d["annotations"][0]["segmentation"]).astype(bool)[:, ::-1].copy()
    assert torch.equal(inst.gt_masks.tensor[0], torch.from_numpy(first))
