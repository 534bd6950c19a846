"""afa_d2.inspection.analysis / tools/analyze_model.py: FLOPs per module and per pyramid level with attention counted,
activations, parameters, structure, on random weights or a checkpoint; bad input is one line."""
import os

import pytest
import torch

import afa_d2  # noqa: F401  (before detectron2)
from afa_d2.inspection import analysis, cli
from afa_d2.model_zoo import CheckpointMismatchError
from afa_d2.model_zoo.build import build_model, default_image_size, load_any_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 128, 160  # divisible by 32: p2..p5 grids 32x40, 16x20, 8x10, 4x5
C = 64  # the shapes configs' pyramid channels


def _ceil(a, b):
    return -(-a // b)


def _tokens(h, w, r):
    """Pooled key/value tokens of multi-scale MS-Att (strides r and 2r, each clamped to the map)."""
    return sum(_ceil(h, min(s, h)) * _ceil(w, min(s, w)) for s in (r, 2 * r))


@pytest.fixture(scope="module")
def msca_model():
    cfg = load_any_config("shapes/mask_rcnn_R_18_msca.py")
    return build_model(cfg, seed=0)


@pytest.fixture(scope="module")
def msca_result(msca_model):
    return analysis.analyze_model(msca_model, analysis.TASKS, (H, W), max_depth=2, config_name="msca")


def test_attention_flops_per_level_are_exact(msca_result):
    """Each level's attention is N_q * N_kv * 2C multiply-adds, N_kv the pooled tokens (r = 16, 8, 4, 2)."""
    by_level = msca_result["flop"]["by_level"]
    assert list(by_level) == ["p2", "p3", "p4", "p5", "p6", "neck"]
    for level, stride, r in (("p2", 4, 16), ("p3", 8, 8), ("p4", 16, 4), ("p5", 32, 2)):
        h, w = H // stride, W // stride
        expected = h * w * _tokens(h, w, r) * 2 * C
        assert by_level[level]["attention"] == expected, (level, by_level[level]["attention"], expected)
        assert by_level[level]["aggregation"] > by_level[level]["attention"], level  # + linears, DW-MLP
    # the lateral 1x1 conv of p2: res2 (32 channels of the half-width R-18) -> C, on 32x40
    assert by_level["p2"]["lateral"] == 32 * C * (H // 4) * (W // 4)
    # the output 3x3 conv of p3: C -> C, on 16x20
    assert by_level["p3"]["output"] == 9 * C * C * (H // 8) * (W // 8)
    assert by_level["p6"]["total"] == 0  # the max-pool: no multiply-adds


def test_levels_add_up_to_the_neck_and_the_model(msca_result, msca_model):
    f = msca_result["flop"]
    levels = [v for k, v in f["by_level"].items() if k != "neck"]
    neck = f["by_level"]["neck"]
    assert neck["other"] == 0
    assert neck["total"] == sum(v["total"] for v in levels)
    assert neck["attention"] == sum(v["attention"] for v in levels) == f["by_operator"]["scaled_dot_product_attention"]
    assert 0 < neck["total"] < f["total"]
    table = f["level_table"]
    assert "| p2 | MSCA |" in table and "| p6 | max-pool |" in table and "| **neck** | MSCA |" in table
    assert "of which attention" in table


def test_parameter_activation_structure(msca_result, msca_model):
    assert msca_result["parameter"]["total"] == sum(p.numel() for p in msca_model.parameters())
    assert "backbone.fpn_aggregation2" in msca_result["parameter"]["table"]
    assert msca_result["activation"]["total"] > 0
    assert "| backbone.fpn_aggregation2 |" in msca_result["activation"]["table"]
    assert "AttentionFPN" in msca_result["structure"] and "MSAttention" in msca_result["structure"]
    text = msca_result.text()
    for heading in ("## FLOPs", "## Activations", "## Parameters", "## Structure", "Per pyramid level"):
        assert heading in text, heading
    assert msca_result["operator"] == "MSCA" and msca_result["image_size"] == (H, W)


def test_sum_has_no_attention_and_costs_less():
    cfg = load_any_config(os.path.join(REPO, "configs", "shapes", "mask_rcnn_R_18_sum.py"))
    model = build_model(cfg, seed=0)
    res = analysis.analyze_model(model, ["flop"], (H, W))
    assert res["operator"] == "sum-up (FPN)"
    assert all(v["attention"] == 0 for v in res["flop"]["by_level"].values())
    assert "scaled_dot_product_attention" not in res["flop"]["by_operator"]
    assert res["flop"]["by_level"]["p2"]["lateral"] == 32 * C * (H // 4) * (W // 4)  # shared parts: the same


def test_command_line_with_op_and_checkpoint(tmp_path, capsys):
    cfg = load_any_config("shapes/mask_rcnn_R_18_mssa.py")
    model = build_model(cfg, seed=3)
    path = str(tmp_path / "mssa.pth")
    torch.save({"model": model.state_dict()}, path)
    loaded = build_model(cfg, path, seed=7)  # another seed: every weight must come from the file
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    # --op mssa turns the sum config into the checkpoint's model; --tasks swallows no override
    rc = cli.analyze_main(["--config", "shapes/mask_rcnn_R_18_sum.py", "--op", "mssa", "--weights", path,
                        "--height", "96", "--width", "128", "--tasks", "flop", "parameter",
                        "model.roi_heads.box_predictor.test_topk_per_image=5"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "image: 96x128 (H x W)" in out and "operator: MSSA" in out and "| p2 | MSSA |" in out
    assert "## Parameters: {:.3f} M".format(sum(p.numel() for p in model.parameters()) / 1e6) in out


def test_default_image_size_is_the_test_resize():
    assert default_image_size(load_any_config("shapes/mask_rcnn_R_18_sum.py")) == (192, 336)
    assert default_image_size(load_any_config("COCO/mask_rcnn_R_50_msca_1x.py")) == (800, 1333)


def test_yacs_config_builds():
    cfg = load_any_config("shapes/mask_rcnn_R_18_msca.yaml", ["MODEL.AFA.AGGREGATION=mssa"])
    model = build_model(cfg)
    res = analysis.analyze_model(model, ["parameter", "structure"], (64, 64))
    assert res["operator"] == "MSSA" and res["parameter"]["total"] == sum(p.numel() for p in model.parameters())


def _error(capsys, argv):
    assert cli.analyze_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line(tmp_path, capsys):
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_mscaa.py"])
    assert "is not a config" in line and "shapes/mask_rcnn_R_18_msca.py" in line  # the closest name
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_sum.py", "--op", "attention"])
    assert "'attention'" in line and "sum, concat, mssa, msca" in line
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_sum.py", "model.backbone.aggregation=foo"])
    assert "'foo'" in line and "valid" in line
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_sum.py", "--tasks", "flops"])
    assert "'flops'" in line and "flop activation parameter structure" in line
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_sum.py", "model.backbone.agregation=msca"])
    assert "agregation" in line and "model.backbone.aggregation" in line
    sum_weights = str(tmp_path / "sum.pth")
    torch.save({"model": build_model(load_any_config("shapes/mask_rcnn_R_18_sum.py")).state_dict()},
               sum_weights)
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_msca.py", "--weights", sum_weights])
    assert "does not fit" in line and "fpn_aggregation" in line
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_msca.py", "--weights", str(tmp_path / "none.pth")])
    assert "no such file" in line
    line = _error(capsys, ["--config", "shapes/mask_rcnn_R_18_msca.py", "--height", "0"])
    assert "--height 0" in line
    with pytest.raises(CheckpointMismatchError):
        build_model(load_any_config("shapes/mask_rcnn_R_18_msca.py"), sum_weights)


@pytest.mark.parametrize("detector, top_in, top_channels", [("retinanet", "res5", 256), ("fcos", "p5", C)])
def test_one_stage_levels_p3_to_p5_and_the_p6_p7_top_block(detector, top_in, top_channels):
    """RetinaNet / FCOS: rows p3, p4, p5 (lateral, operator, output conv) and one row for LastLevelP6P7;
    MSCA's attention on p3..p5 with pool strides 64 / stride (8, 4, 2), none in p6-p7 nor anywhere for sum."""
    by_op = {}
    for op in ("sum", "msca"):
        model = build_model(load_any_config("shapes/{}_R_18_{}.py".format(detector, op)), seed=0)
        by_op[op] = analysis.analyze_model(model, ["flop"], (H, W))["flop"]
    msca, fpn = by_op["msca"], by_op["sum"]
    for f in (msca, fpn):
        assert list(f["by_level"]) == ["p3", "p4", "p5", "p6-p7", "neck"]
        assert f["by_level"]["neck"]["other"] == 0
        # p6: a 3x3 stride-2 conv of the top block's input (res5: 256 channels of the half-width R-18; or p5: C)
        # on 4x5 -> 2x3; p7: C -> C on 2x3 -> 1x2
        top = f["by_level"]["p6-p7"]
        assert top["output"] == top["total"] == 9 * top_channels * C * 2 * 3 + 9 * C * C * 1 * 2
        assert top["lateral"] == top["aggregation"] == top["attention"] == 0
        assert "| p6-p7 | convs from {} |".format(top_in) in f["level_table"]
        assert f["by_level"]["p3"]["lateral"] == 64 * C * (H // 8) * (W // 8)  # res3 (64 channels) -> C on 16x20
    for level, stride, r in (("p3", 8, 8), ("p4", 16, 4), ("p5", 32, 2)):
        h, w = H // stride, W // stride
        assert msca["by_level"][level]["attention"] == h * w * _tokens(h, w, r) * 2 * C, level
        assert fpn["by_level"][level]["attention"] == 0, level
        assert msca["by_level"][level]["output"] == fpn["by_level"][level]["output"], level  # the same 3x3 conv
    assert msca["by_level"]["neck"]["attention"] == msca["by_operator"]["scaled_dot_product_attention"] > 0
    assert "scaled_dot_product_attention" not in fpn["by_operator"]
    assert "| p3 | MSCA |" in msca["level_table"] and "| p3 | sum-up (FPN) |" in fpn["level_table"]
