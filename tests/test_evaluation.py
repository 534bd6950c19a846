"""COCO / LVIS evaluators: equal to pycocotools' and the official LVIS API's numbers."""
import contextlib
import copy
import io
import json
import os
import zipfile

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

import afa_d2  # noqa: F401  (compat patches before detectron2)
import afa_d2.data  # noqa: F401
from afa_d2.data import shapes
from afa_d2.evaluation import COCOEvaluator, LVISEvaluator, build_evaluator, evaluate_coco_results

# third-party noise: pycocotools' decode under NumPy 2 (and lvis' logger.warn)
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
]

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 16/10-image shapes split, registered, and synthetic predictions on its val images."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = str(tmp_path_factory.mktemp("afa_eval_cache"))
    shapes.register_shapes(root, prefix="shapes_ev", num_train=16, num_val=10)
    for name in ("shapes_ev_val", "shapes_ev_lvis_val", "shapes_ev_lvis_train"):
        DatasetCatalog.get(name)
    with open(MetadataCatalog.get("shapes_ev_val").json_file) as f:
        gt = json.load(f)
    return gt, _fake_predictions(gt, seed=0)


def _fake_predictions(gt, seed):
    """Ground truth jittered (boxes and masks), some with a wrong class, plus false positives;
    random scores. Dataset category ids; each has "bbox", "segmentation" (RLE) and "score"."""
    rng = np.random.default_rng(seed)
    imgs = {im["id"]: im for im in gt["images"]}
    ncat = len(gt["categories"])
    out = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # missed
        im = imgs[a["image_id"]]
        m = mask_util.decode(a["segmentation"])
        dy, dx = rng.integers(-2, 3, 2)
        m = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
        x, y, w, h = a["bbox"]
        box = [x + rng.normal(0, 0.08) * w, y + rng.normal(0, 0.08) * h, w * rng.uniform(0.8, 1.2),
               h * rng.uniform(0.8, 1.2)]
        cat = a["category_id"] if rng.random() < 0.8 else int(rng.integers(1, ncat + 1))
        out.append(_det(im["id"], cat, box, m, rng.random()))
    for im in gt["images"]:
        for _ in range(int(rng.integers(0, 8))):  # false positives
            H, W = im["height"], im["width"]
            w, h = rng.uniform(4, W / 2), rng.uniform(4, H / 2)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            m = np.zeros((H, W), np.uint8)
            m[int(y):int(y + h), int(x):int(x + w)] = 1
            out.append(_det(im["id"], int(rng.integers(1, ncat + 1)), [x, y, w, h], m, rng.random() * 0.8))
    return out


def _det(img_id, cat, box, mask, score):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"image_id": img_id, "category_id": cat, "bbox": [float(v) for v in box], "segmentation": rle,
            "score": float(score)}


def _pycocotools_stats(json_file, results, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = copy.deepcopy(results)
    for r in results:  # the same convention as detectron2 / afa_d2: masks are evaluated without boxes
        r.pop("bbox" if iou_type == "segm" else "segmentation")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.array(ev.stats)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_ap_equals_pycocotools(data, iou_type):
    from detectron2.data import MetadataCatalog
    from faster_coco_eval import COCO

    gt, preds = data
    json_file = MetadataCatalog.get("shapes_ev_val").json_file
    ours = evaluate_coco_results(COCO(json_file), preds, iou_type).stats[:12]
    ref = _pycocotools_stats(json_file, preds, iou_type)
    assert 0.1 < ref[0] < 0.9, ref  # neither trivial nor empty
    for name, a, b in zip(STAT_NAMES, ours, ref):
        assert abs(a - b) < 1e-4, "{} {}: faster-coco-eval {} vs pycocotools {}".format(iou_type, name, a, b)


def _official_lvis(json_file, results, iou_type, monkeypatch):
    # lvis 0.5.3 uses np.float & co., removed in NumPy 1.24: give them back for this test only
    for alias, typ in (("float", float), ("int", int), ("bool", bool)):
        monkeypatch.setattr(np, alias, typ, raising=False)
    from lvis import LVIS, LVISEval, LVISResults

    results = copy.deepcopy(results)
    for r in results:
        r.pop("bbox" if iou_type == "segm" else "segmentation")
    gt = LVIS(json_file)
    ev = LVISEval(gt, LVISResults(gt, results, max_dets=300), iou_type)
    ev.run()
    return ev.get_results()


@pytest.mark.parametrize("split", ["val", "train"])  # train: federated negatives and not-exhaustive images
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_ap_equals_official_lvis(data, split, iou_type, monkeypatch, tmp_path):
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get("shapes_ev_lvis_" + split)
    with open(meta.json_file) as f:
        lvis_gt = json.load(f)
    # a 16-image train split has no frequent category: relabel a few so that r, c and f all occur
    for k, c in enumerate(lvis_gt["categories"]):
        c["frequency"] = "rcf"[k % 3]
    json_file = str(tmp_path / "lvis_gt.json")
    with open(json_file, "w") as f:
        json.dump(lvis_gt, f)
    name = "afa_lvis_test_{}_{}".format(split, iou_type)
    MetadataCatalog.get(name).set(json_file=json_file, evaluator_type="lvis", thing_classes=meta.thing_classes,
                                  thing_dataset_id_to_contiguous_id=meta.thing_dataset_id_to_contiguous_id)
    preds = data[1] if split == "val" else _fake_predictions(lvis_gt, seed=1)
    # many low-score detections on one image: the 300-per-image limit must act alike
    img = lvis_gt["images"][0]
    rng = np.random.default_rng(3)
    for k in range(320):
        m = np.zeros((img["height"], img["width"]), np.uint8)
        m[k % 50:k % 50 + 9, 5:15] = 1
        preds = preds + [_det(img["id"], int(rng.integers(1, 14)), [5, k % 50, 10, 9], m, 0.01 * rng.random())]

    ev = LVISEvaluator(name, tasks=(iou_type,), distributed=False, output_dir=str(tmp_path / "out"))
    to_contiguous = meta.thing_dataset_id_to_contiguous_id
    ev._predictions = [dict(p, category_id=to_contiguous[p["category_id"]]) for p in preds]
    ours = ev.evaluate()[iou_type]
    ref = _official_lvis(json_file, preds, iou_type, monkeypatch)
    assert all(np.isfinite(ours[k]) for k in ("APr", "APc", "APf"))
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        a, b = ours[key] / 100, ref[key]
        if b == -1:
            assert np.isnan(a), key
            continue
        assert abs(a - b) < 1e-4, "{} {} {}: ours {} vs official LVIS {}".format(split, iou_type, key, a, b)
    assert 0.05 < ref["AP"] < 0.95


def _instances(preds, gt, contiguous):
    """detectron2 model outputs (per image) from result dicts."""
    from detectron2.structures import Boxes, Instances

    by_img = {im["id"]: [] for im in gt["images"]}
    for p in preds:
        by_img[p["image_id"]].append(p)
    inputs, outputs = [], []
    for im in gt["images"]:
        ps = by_img[im["id"]]
        inst = Instances((im["height"], im["width"]))
        xywh = torch.tensor([p["bbox"] for p in ps], dtype=torch.float32).reshape(-1, 4)
        inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        inst.scores = torch.tensor([p["score"] for p in ps], dtype=torch.float32)
        inst.pred_classes = torch.tensor([contiguous[p["category_id"]] for p in ps], dtype=torch.int64)
        masks = [mask_util.decode(p["segmentation"]).astype(bool) for p in ps]
        inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(
            (0, im["height"], im["width"]), dtype=torch.bool)
        inputs.append({"image_id": im["id"], "height": im["height"], "width": im["width"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def test_evaluator_process_evaluate_end_to_end(data, tmp_path):
    from detectron2.data import MetadataCatalog

    gt, preds = data
    meta = MetadataCatalog.get("shapes_ev_val")
    ev = build_evaluator("shapes_ev_val", str(tmp_path))
    assert type(ev) is COCOEvaluator
    assert type(build_evaluator("shapes_ev_lvis_val", str(tmp_path))) is LVISEvaluator
    inputs, outputs = _instances(preds, gt, meta.thing_dataset_id_to_contiguous_id)
    ev.reset()
    for k in range(0, len(inputs), 3):  # batches of 3
        ev.process(inputs[k:k + 3], outputs[k:k + 3])
    res = ev.evaluate()
    assert set(res) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert key in res[task]
        assert {"AP-" + c for c in meta.thing_classes} <= set(res[task])
    written = json.load(open(os.path.join(str(tmp_path), "coco_instances_results.json")))
    assert len(written) == len(preds)
    assert {r["category_id"] for r in written} <= {c["id"] for c in gt["categories"]}
    for task in ("bbox", "segm"):
        ref = _pycocotools_stats(meta.json_file, written, task)
        for key, r in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ref):
            assert abs(res[task][key] - r * 100) < 1e-2, (task, key, res[task][key], r * 100)
    # masks went through Instances -> RLE unchanged
    assert sorted(r["segmentation"]["counts"] for r in written) == sorted(
        p["segmentation"]["counts"] for p in preds)


def test_test_dev_writes_the_server_file(data, tmp_path):
    from detectron2.data import MetadataCatalog

    gt, preds = data
    info = {k: v for k, v in gt.items() if k != "annotations"}  # a test set: images, no annotations
    json_file = tmp_path / "image_info_test-dev2017.json"
    json_file.write_text(json.dumps(info))
    name = "afa_test_dev_fake"
    MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(tmp_path), evaluator_type="coco",
                                  thing_classes=[c["name"] for c in gt["categories"]],
                                  thing_dataset_id_to_contiguous_id={c["id"]: k for k, c in
                                                                    enumerate(gt["categories"])})
    out = tmp_path / "out"
    ev = build_evaluator(name, str(out), algorithm="mssa")
    inputs, outputs = _instances(preds, gt, MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id)
    ev.process(inputs, outputs)
    assert ev.evaluate() == {}
    path = out / "detections_test-dev2017_mssa_results.json"
    results = json.loads(path.read_text())
    assert len(results) == len(preds)
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert len(r["bbox"]) == 4 and isinstance(r["segmentation"]["counts"], str)
        assert r["category_id"] in {c["id"] for c in gt["categories"]}
    with zipfile.ZipFile(out / "detections_test-dev2017_mssa_results.zip") as z:
        assert z.namelist() == [path.name]
    # the name can be set
    ev = COCOEvaluator(name, output_dir=str(out), results_file_name="segmentations_x.json", distributed=False)
    ev.process(inputs[:1], outputs[:1])
    assert ev.evaluate() == {} and (out / "segmentations_x.json").is_file()


def test_bad_arguments():
    with pytest.raises(ValueError, match="keypoints"):
        COCOEvaluator("shapes_val", tasks=("keypoints",))
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("afa_no_eval_type").set(json_file="x.json")
    with pytest.raises(ValueError, match="evaluator_type"):
        build_evaluator("afa_no_eval_type")
