"""afa_d2.inspection's predictions, attention, drawing, energy / tools/visualize.py: predictions side by side,
attention maps from the blocks' own weights (each drawn map sums to 1 over the keys), pyramid-level energy; PNG
sizes; one-line errors."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import afa_d2  # noqa: F401  (before detectron2)
from afa_d2.inspection import attention, drawing, energy, models, predictions
from afa_d2.inspection.cli import visualize_main
from afa_d2.inspection.drawing import DPI, PANEL_INCHES
from afa_d2.inspection.energy import ENERGY_INCHES, ENERGY_METRICS
from afa_d2.inspection.predictions import GAP_PX, HEADER_PX
from afa_d2.model_zoo.build import build_model, load_any_config
from afa_d2.modeling import MSAttention

DATASET = "afa_d2_visualize_test"
SIZES = [(97, 131), (64, 80)]  # (H, W): an odd size and a small one


def _draw_image(path, hw, seed):
    rng = np.random.default_rng(seed)
    h, w = hw
    img = np.full((h, w, 3), rng.integers(20, 80, 3), np.uint8)
    img[10:40, 12:50] = (220, 40, 40)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h * 0.6) ** 2 + (xx - w * 0.7) ** 2 < (min(h, w) / 5) ** 2] = (40, 200, 60)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny weights (the shapes configs at random init, saved) for sum, mssa, msca; two images; a two-image
    dataset with ground truth registered in detectron2's catalogs."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from afa_d2.data.shapes import CLASSES

    root = tmp_path_factory.mktemp("vis")
    weights = {}
    for k, op in enumerate(("sum", "mssa", "msca")):
        model = build_model(load_any_config("shapes/mask_rcnn_R_18_{}.py".format(op)), seed=k)
        weights[op] = str(root / "{}.pth".format(op))
        torch.save({"model": model.state_dict()}, weights[op])
    images = [_draw_image(str(root / "img{}.png".format(i)), hw, i) for i, hw in enumerate(SIZES)]

    def records():
        return [{"file_name": f, "image_id": i, "height": hw[0], "width": hw[1], "annotations": [
            {"bbox": [12, 10, 38, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
             "segmentation": [[12, 10, 50, 10, 50, 40, 12, 40]], "iscrowd": 0}]}
            for i, (f, hw) in enumerate(zip(images, SIZES))]

    if DATASET not in DatasetCatalog.list():
        DatasetCatalog.register(DATASET, records)
        MetadataCatalog.get(DATASET).set(thing_classes=list(CLASSES))
    return {"root": root, "weights": weights, "images": images}


FEW = "model.roi_heads.box_predictor.test_topk_per_image=3"  # random weights: draw few detections (time)


def _model(setup, op):
    return models.load_model("shapes/mask_rcnn_R_18_{}.py={}".format(op, setup["weights"][op]), [FEW])


def _png_size(path):
    with Image.open(path) as im:
        return im.size[1], im.size[0]  # (H, W)


# ----------------------------------------------------------------------------------- predictions
def test_predictions_side_by_side(setup, tmp_path):
    loaded = [_model(setup, "sum"), _model(setup, "msca")]
    assert [m.label for m in loaded] == ["sum-up (FPN)", "MSCA"]
    images = [(models.read_image(r["file_name"]), r) for r in models.dataset_records(DATASET, 2)]
    out = predictions.draw_predictions(loaded, images, str(tmp_path / "fig3.png"), score_thresh=0.0, dataset=DATASET)
    assert out["columns"] == ["ground truth", "sum-up (FPN)", "MSCA"]
    # header band, then one row per image (its own height), gaps of 8 px; three columns of the widest image
    expected = (HEADER_PX + 97 + GAP_PX + 64, 3 * 131 + 2 * GAP_PX)
    assert out["size"] == expected and _png_size(out["path"]) == expected
    for row, (rgb, _) in zip(out["detections"], images):  # every detection above the threshold is drawn
        assert row == [len(models.predict(m, rgb)) for m in loaded]
    grid = np.asarray(Image.open(out["path"]).convert("RGB")).astype(int)
    header = grid[: HEADER_PX]
    assert (header.sum(axis=2) < 200).any(), "the column titles are not drawn"
    gt = grid[HEADER_PX: HEADER_PX + 97, :131]
    original = np.asarray(Image.open(setup["images"][0]).convert("RGB")).astype(int)
    assert np.abs(gt - original).max() > 50, "the ground truth is not drawn over the image"


def test_predictions_command_without_ground_truth(setup, tmp_path, capsys):
    path = str(tmp_path / "p.png")
    rc = visualize_main(["predictions", "--model", "shapes/mask_rcnn_R_18_sum.py={}".format(setup["weights"]["sum"]),
                   "--model", "shapes/mask_rcnn_R_18_msca.py={}".format(setup["weights"]["msca"]),
                   "--images", setup["images"][1], "--scale", "2", "--output", path, FEW])
    assert rc == 0 and "wrote {}".format(path) in capsys.readouterr().out
    assert _png_size(path) == (HEADER_PX + 128, 2 * 160 + GAP_PX)  # two columns: no ground truth


# ----------------------------------------------------------------------------------- attention
def test_attention_maps_sum_to_one_and_are_drawn(setup, tmp_path):
    lm = _model(setup, "msca")
    rgb = models.read_image(setup["images"][0])
    qa = attention.attention_maps(lm, rgb, [(50.0, 40.0)])[0]
    assert [la.level for la in qa.levels] == ["p2", "p3", "p4", "p5"]
    out = drawing.draw_attention(rgb, qa, str(tmp_path / "att.png"))
    for la in qa.levels:
        drawn = out["weights"][la.level]
        assert drawn.shape == (4, sum(len(p.boxes) for p in la.pools))
        assert np.abs(drawn.sum(axis=-1) - 1.0).max() < 1e-5, la.level  # each head's map sums to 1 over the keys
        assert (drawn > 0).all()
        assert [p.name for p in la.pools] == ["r={}".format(r) for r in {"p2": (16, 32), "p3": (8, 16),
                                                                          "p4": (4, 8), "p5": (2, 4)}[la.level]]
        for h in range(4):
            for pool, sl in zip(la.pools, la.pool_slices()):
                panel = out["panels"][(la.level, h, pool.name)]
                assert panel.shape == rgb.shape[:2]
                # the panel shows this pool's token weights, each over its window
                assert np.isclose(panel.max(), drawn[h, sl][_visible(la, pool, qa)].max(), atol=1e-6)
    # nine columns (the image, 4 heads x 2 pools) and a colour bar; a row per level; the title band
    cols, rows = 1 + 4 * 2, 4
    expected = (round((rows * PANEL_INCHES + 0.6) * DPI), round((cols * PANEL_INCHES + 0.35) * DPI))
    assert out["size"] == expected and _png_size(out["path"]) == expected


def _visible(la, pool, qa):
    """The tokens whose windows reach into the image (not only the padding)."""
    sy = qa.input_hw[0] / la.stride
    sx = qa.input_hw[1] / la.stride
    return (pool.boxes[:, 0] < sy) & (pool.boxes[:, 2] < sx)


def test_query_cell_follows_the_test_resize(setup):
    lm = _model(setup, "mssa")
    rgb = models.read_image(setup["images"][0])  # 97 x 131 -> shortest edge 192: 192 x 259
    qa = attention.attention_maps(lm, rgb, [(50.0, 40.0), (130.0, 96.0)])
    assert qa[0].input_hw == (192, 259)
    for la in qa[0].levels:
        s = la.stride
        assert la.cell == (int(40 * 192 / 97 // s), int(50 * 259 / 131 // s)), la.level
    assert [la.cell for la in qa[1].levels][0] == (int(96 * 192 / 97 // 4), int(130 * 259 / 131 // 4))


def test_recomputed_attention_is_the_blocks_own(setup):
    """The hooks capture the blocks' real inputs (the block recomputed from them gives its output), and the
    weights reproduce the block's scaled_dot_product_attention."""
    for op in ("mssa", "msca"):
        lm = _model(setup, op)
        prep = models.prepare_input(lm, models.read_image(setup["images"][0]))
        blocks = attention.capture_aggregations(lm.model, [prep.inputs])
        assert list(blocks) == ["p2", "p3", "p4", "p5"]
        assert blocks["p5"].top_down is None and blocks["p4"].top_down is not None
        for level, b in blocks.items():
            with torch.no_grad():
                again = b.module.forward_reference(b.lateral, b.top_down)
            assert (again - b.output).abs().max() < 1e-4, (op, level)
            x_q, x_kv = b.module.attention_inputs(b.lateral, b.top_down)
            attn = b.module.attn
            h, w = x_q.shape[-2:]
            cells = [(0, 0), (h - 1, w - 1), (h // 2, w // 3)]
            with torch.no_grad():
                weights = attn.attention_weights(x_q, x_kv, [r * w + c for r, c in cells])  # (1, heads, 3, M)
            with torch.no_grad():
                f_q = x_q.flatten(2).transpose(1, 2)
                q = attn.q(attn.norm_q(f_q)).view(1, h * w, attn.num_heads, attn.head_dim).transpose(1, 2)
                kv = attn.kv(attn.norm_kv(attn.kv_tokens(x_kv)))
                kv = kv.view(1, -1, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
                sdpa = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (1, heads, H*W, d)
            rows = [r * w + c for r, c in cells]
            assert (weights @ kv[1] - sdpa[:, :, rows]).abs().max() < 1e-5, (op, level)


@pytest.mark.parametrize("pooling,stride,hw", [("multi_scale", 4, (7, 11)), ("single_scale", 3, (10, 13)),
                                               ("adaptive", 7, (10, 13)), ("multi_scale", 16, (5, 3))])
def test_token_windows_are_what_the_pools_average(pooling, stride, hw):
    attn = MSAttention(8, 2, pooling=pooling, pool_stride=stride, adaptive_pool_size=stride)
    x = torch.randn(1, 8, *hw)
    tokens = attn.kv_tokens(x)[0]  # (M, C)
    pools = attention.kv_token_regions(attn, hw)
    boxes = np.concatenate([p.boxes for p in pools])
    assert len(boxes) == tokens.shape[0] == sum(p.grid[0] * p.grid[1] for p in pools)
    for t, (y0, y1, x0, x1) in enumerate(boxes):
        assert (x[0, :, y0:y1, x0:x1].mean(dim=(1, 2)) - tokens[t]).abs().max() < 1e-5, (t, (y0, y1, x0, x1))
    w = np.random.default_rng(0).random(len(pools[0].boxes))
    painted = attention.paint_tokens(w, pools[0].boxes, hw)
    for wt, (y0, y1, x0, x1) in zip(w, pools[0].boxes):
        assert np.all(painted[y0:y1, x0:x1] >= wt - 1e-12)


def test_attention_grid_command(setup, tmp_path, capsys):
    out_dir = tmp_path / "grid"
    rc = visualize_main(["attention", "--model", "shapes/mask_rcnn_R_18_mssa.py={}".format(setup["weights"]["mssa"]),
                   "--images", setup["images"][1], "--grid", "2x2", "--levels", "p4", "p5",
                   "--output-dir", str(out_dir)])
    assert rc == 0
    files = sorted(os.listdir(out_dir))
    assert len(files) == 5 and "attention_overview.png" in files, files
    assert "wrote" in capsys.readouterr().out
    # the overview: a row per point, a column per level
    assert _png_size(str(out_dir / "attention_overview.png")) == (round((4 * PANEL_INCHES + 0.6) * DPI),
                                                                  round(2 * PANEL_INCHES * DPI))
    detail = [f for f in files if f != "attention_overview.png"][0]
    assert _png_size(str(out_dir / detail)) == (round((2 * PANEL_INCHES + 0.6) * DPI),
                                                round((9 * PANEL_INCHES + 0.35) * DPI))
    assert attention.grid_points((64, 80), 2, 2) == [(20.0, 16.0), (60.0, 16.0), (20.0, 48.0), (60.0, 48.0)]


def test_attention_for_several_dataset_images(setup, tmp_path):
    out_dir = tmp_path / "several"
    assert visualize_main(["attention", "--model", "shapes/mask_rcnn_R_18_msca.py={}".format(setup["weights"]["msca"]),
                     "--dataset", DATASET, "--num-images", "2", "--point", "10", "12", "--levels", "p5",
                     "--output-dir", str(out_dir)]) == 0
    assert sorted(os.listdir(out_dir)) == ["img0_attention_x10_y12.png", "img1_attention_x10_y12.png"]
    assert _png_size(str(out_dir / "img0_attention_x10_y12.png")) == (
        round((PANEL_INCHES + 0.6) * DPI), round((9 * PANEL_INCHES + 0.35) * DPI))


# ----------------------------------------------------------------------------------- energy
def test_energy_per_level(setup, tmp_path):
    m = _model(setup, "msca")
    rgbs = [models.read_image(f) for f in setup["images"]]
    energies = {metric: energy.pyramid_energy(m, rgbs, metric) for metric in ENERGY_METRICS}
    expected = {metric: dict.fromkeys(["p2", "p3", "p4", "p5", "p6"], 0.0) for metric in ENERGY_METRICS}
    for rgb in rgbs:  # the mean over the images of each level's mean x^2 / mean L2 norm over channels
        with torch.no_grad():
            feats = m.model.backbone(m.model.preprocess_image([models.prepare_input(m, rgb).inputs]).tensor)
        for k, f in feats.items():
            expected["mean_square"][k] += float((f ** 2).mean()) / len(rgbs)
            expected["l2"][k] += float(f.norm(dim=1).mean()) / len(rgbs)
    for metric, e in energies.items():
        assert list(e) == ["p2", "p3", "p4", "p5", "p6"]
        for k in e:
            assert e[k] == pytest.approx(expected[metric][k], rel=1e-5), (metric, k)
    chart = {"sum-up (FPN)": {k: 1.0 for k in energies["mean_square"]}, "MSCA": energies["mean_square"]}
    out = energy.draw_energy(chart, str(tmp_path / "energy.png"))
    expected_size = (round(ENERGY_INCHES[1] * DPI), round(ENERGY_INCHES[0] * DPI))
    assert out["size"] == expected_size and _png_size(out["path"]) == expected_size


def test_energy_command_with_a_published_checkpoint(setup, tmp_path, capsys):
    published = str(tmp_path / "msca_published.pth")
    state = torch.load(setup["weights"]["msca"], weights_only=True)["model"]
    torch.save({"model": state, "afa_d2_metadata": {"config": "shapes/mask_rcnn_R_18_msca.py"}}, published)
    path = str(tmp_path / "e.png")
    rc = visualize_main(["energy", "--model", published, "--model", "shapes/mask_rcnn_R_18_sum.py",
                   "--dataset", DATASET, "--num-images", "1", "--metric", "l2", "--output", path])
    out = capsys.readouterr().out
    assert rc == 0 and os.path.isfile(path)
    assert "MSCA: p2 " in out and "sum-up (FPN) (random weights): p2 " in out


# ----------------------------------------------------------------------------------- bad input
def _error(capsys, argv):
    assert visualize_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    msca = "shapes/mask_rcnn_R_18_msca.py={}".format(setup["weights"]["msca"])
    img = setup["images"][1]  # 64 x 80
    line = _error(capsys, ["attention", "--model", msca, "--images", img, "--point", "90", "10"])
    assert "(90, 10) is outside the image" in line and "0 <= x < 80, 0 <= y < 64" in line
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    line = _error(capsys, ["predictions", "--model", msca, "--images", str(bad)])
    assert "is not a readable image file" in line and "broken.png" in line
    line = _error(capsys, ["predictions", "--model", msca, "--images", str(tmp_path / "missing.png")])
    assert "no such file" in line
    line = _error(capsys, ["predictions", "--model", "shapes/mask_rcnn_R_18_mscx.py", "--images", img])
    assert "is not a config" in line and "shapes/mask_rcnn_R_18_msca.py" in line
    line = _error(capsys, ["predictions", "--model", "shapes/mask_rcnn_R_18_msca.py={}".format(
        setup["weights"]["sum"]), "--images", img])
    assert "does not fit the model of shapes/mask_rcnn_R_18_msca.py" in line and "fpn_aggregation" in line
    line = _error(capsys, ["predictions", "--model", msca, "--images", img, "model.backbone.aggregation=msac"])
    assert "'msac'" in line and "'msca'" in line
    line = _error(capsys, ["attention", "--model", "shapes/mask_rcnn_R_18_sum.py={}".format(setup["weights"]["sum"]),
                           "--images", img])
    assert "no attention block" in line and "mssa or msca" in line
    line = _error(capsys, ["attention", "--model", msca, "--images", img, "--levels", "p6"])
    assert "p6" in line and "p2, p3, p4, p5" in line
    line = _error(capsys, ["energy", "--model", msca, "--images", img, "--metric", "rms"])
    assert "'rms'" in line and "mean_square, l2" in line
    line = _error(capsys, ["predictions", "--model", msca, "--dataset", "shapes_vall"])
    assert "'shapes_vall' is not registered" in line and "shapes_val" in line
    no_meta = tmp_path / "plain.pth"
    torch.save({"model": {}}, str(no_meta))
    line = _error(capsys, ["predictions", "--model", str(no_meta), "--images", img])
    assert "no afa_d2_metadata" in line and "CONFIG=" in line


def test_a_predictions_output_without_a_picture_suffix_is_refused_before_any_model_loads(tmp_path, capsys):
    """cv2 cannot write a file without a picture suffix: refused at argument parsing (it was a traceback at the
    end, after every model ran)."""
    with pytest.raises(SystemExit) as e:
        visualize_main(["predictions", "--model", "shapes/mask_rcnn_R_18_msca.py", "--dataset", "shapes_val",
                        "--output", str(tmp_path / "figure")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--output '{}': expected a picture file name ending in .png".format(tmp_path / "figure") in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "figure")
