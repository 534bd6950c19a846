"""Bad input on the data side: a missing dataset root, a missing image, a corrupt image."""
import os

import cv2
import numpy as np
import pytest

import afa_d2  # noqa: F401  (compat patches before detectron2)
import afa_d2.data  # noqa: F401  (registrations)
from afa_d2.data import DatasetMapper, DatasetNotFoundError, ImageReadError, check_dataset_files


@pytest.mark.parametrize("name", ["coco_2017_train", "coco_2017_val", "lvis_v1_val"])
def test_missing_dataset_root_names_variable_and_layout(name, tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    json_file = MetadataCatalog.get(name).json_file
    if os.path.isabs(json_file):  # DETECTRON2_DATASETS was set when detectron2 registered it
        pytest.skip("registered under an absolute DETECTRON2_DATASETS")
    monkeypatch.chdir(tmp_path)  # detectron2's default root, ./datasets, does not exist here
    with pytest.raises(DatasetNotFoundError) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert "DETECTRON2_DATASETS" in msg, msg
    assert name in msg and json_file in msg, msg
    assert "coco/annotations/instances_train2017.json" in msg and "train2017/" in msg, msg
    assert "lvis_v1_train.json" in msg, msg
    assert isinstance(e.value, FileNotFoundError)


def test_check_dataset_files_names_the_missing_path(tmp_path, monkeypatch):
    from detectron2.data.datasets import register_coco_instances

    root = tmp_path / "d2data"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "annotations" / "instances_val2017.json").write_text("{}")
    register_coco_instances("afa_test_missing_images", {}, str(root / "coco/annotations/instances_val2017.json"),
                            str(root / "coco/val2017"))
    with pytest.raises(DatasetNotFoundError) as e:
        check_dataset_files("afa_test_missing_images")
    msg = str(e.value)
    assert str(root / "coco" / "val2017") in msg and "json_file" not in msg.split("\n")[0], msg
    assert "DETECTRON2_DATASETS='{}'".format(root) in msg, msg


def _mapper():
    return DatasetMapper(is_train=False, augmentations=[], image_format="BGR")


def test_missing_image_names_the_file(tmp_path):
    path = str(tmp_path / "images" / "000123.jpg")
    with pytest.raises(ImageReadError) as e:
        _mapper()({"file_name": path, "image_id": 123, "height": 10, "width": 10})
    assert path in str(e.value) and "123" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_corrupt_image_names_the_file(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError) as e:
        _mapper()({"file_name": str(path), "image_id": 7, "height": 10, "width": 10})
    assert str(path) in str(e.value)


def test_truncated_image_names_the_file(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageReadError) as e:
        _mapper()({"file_name": str(path), "image_id": 8, "height": 64, "width": 80})
    assert str(path) in str(e.value)


def test_good_image_still_loads(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (31, 47, 3), dtype=np.uint8)
    path = str(tmp_path / "ok.png")
    cv2.imwrite(path, img)
    out = _mapper()({"file_name": path, "image_id": 1, "height": 31, "width": 47})
    assert tuple(out["image"].shape) == (3, 31, 47)
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), img)
