"""tools/table1_shapes.py: every operator trains the same budget, and the table (with the context
group's AP) is written after each operator."""
import importlib.util
import json
import os

import pytest

import afa_d2  # noqa: F401  (detectron2 compat patches first)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def table1():
    spec = importlib.util.spec_from_file_location("table1_shapes", os.path.join(REPO, "tools", "table1_shapes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_context_ap_is_the_mean_of_the_marker_classes(table1):
    results = {"bbox": {"AP-marker_sea": 30.0, "AP-marker_forest": 10.0, "AP-marker_city": 20.0, "AP-circle": 90.0}}
    assert table1.context_ap(results) == pytest.approx(20.0)
    assert table1.context_ap({"bbox": {}}) != table1.context_ap({"bbox": {}})  # nan when absent


def test_tiny_table(table1, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "t1"
    assert table1.main(["--ops", "sum", "msca", "--max-iter", "2", "--num-train", "6", "--num-val", "2",
                        "--output-dir", str(out), "--threads", "2"]) == 0
    saved = json.loads((out / "table1_shapes.json").read_text())
    assert [r["op"] for r in saved["rows"]] == ["sum", "msca"]
    for row in saved["rows"]:
        assert row["config"] == "configs/shapes/mask_rcnn_R_18_{}.py".format(row["op"])
        assert os.path.isfile(out / "mask_rcnn_{}".format(row["op"]) / "model_final.pth")
        assert "bbox" in row["results"] and "segm" in row["results"]
    table = (out / "table1_shapes.md").read_text()
    assert "| sum-up (FPN) |" in table and "| MSCA |" in table and "context box AP (markers)" in table
    assert "2 iterations x batch 2" in table
    assert table.strip() in capsys.readouterr().out
