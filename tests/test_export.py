"""afa_d2.export: ONNX (onnxruntime) and traced TorchScript equal PyTorch; sizes, RoIAlign, errors.

Models are the ``configs/shapes`` Mask R-CNN / Cascade Mask R-CNN (ResNet-18 at half width, 64-channel
pyramid), random weights, every box kept (``test_score_thresh=0``) so each image has detections to
compare; and tests/test_detectors.py's tiny RetinaNet and FCOS (``configs/common/models/*_afpn.py``, p3-p7,
a few-thousand-parameter ResNet). Inputs are not multiples of 32 (97x131 and 150x203, padded to 128x160
and 160x224). PyTorch's side is :func:`afa_d2.modeling.inference.raw_inference`, what the export traces.
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

import afa_d2  # noqa: F401  (before detectron2)
from afa_d2 import compat, export
from afa_d2.export import cli as export_cli
from afa_d2.export import tracing
from afa_d2.model_zoo import CheckpointMismatchError, get_config
from afa_d2.modeling.inference import raw_inference
from _engine_fixtures import one_thread  # noqa: F401  (autouse: one thread for this module)
from test_detectors import _build, afpn_config  # the tiny RetinaNet / FCOS

SIZES = [(97, 131), (150, 203)]
ATOL = 1e-3
DENSE_OUTPUTS = ["pred_boxes", "pred_classes", "scores", "image_size"]
# The cap on candidates a level (test_topk_candidates) is chosen so that at 97x131 a level has fewer
# candidates than it (RetinaNet: p6 162 of 200; FCOS: p4 240 of 300, every box above the 0.001 threshold)
# and at 150x203 more (p6 324; p4 420): a graph that froze the sample's count would keep too many there.
DENSE_TOPK = {"retinanet": 200, "fcos": 300}


def _config(op, cascade=False, score_thresh=0.0):
    name = "shapes/{}_R_18_{}.py".format("cascade_mask_rcnn" if cascade else "mask_rcnn", "msca")
    cfg = get_config(name)
    cfg.model.backbone.aggregation = op
    predictors = cfg.model.roi_heads.box_predictors if cascade else [cfg.model.roi_heads.box_predictor]
    for p in predictors:
        p.test_score_thresh = score_thresh
        p.test_topk_per_image = 50
    cfg.model.proposal_generator.post_nms_topk = (250, 150)
    return cfg


_MODELS = {}


def _model(op, cascade=False, score_thresh=0.0):
    key = (op, cascade, score_thresh)
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = export.load_model(_config(op, cascade, score_thresh))[0]
    return _MODELS[key]


def _dense_model(kind, op, max_detections=100):
    """tests/test_detectors.py's tiny RetinaNet / FCOS (scores above 0.001), the cap of :data:`DENSE_TOPK`."""
    key = (kind, op, max_detections)
    if key not in _MODELS:
        model = _build(afpn_config(kind, op))
        model.test_topk_candidates = DENSE_TOPK[kind]
        model.max_detections_per_image = max_detections
        _MODELS[key] = model
    return _MODELS[key]


def _image(h, w, seed=1):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def _eager(model, image):
    """PyTorch's detections, as the export traces them: field name -> tensor (boxes as their (N, 4) tensor)."""
    with torch.no_grad():
        inst = raw_inference(model, [{"image": image}])[0]
    return {k: (v.tensor if k == "pred_boxes" else v) for k, v in inst.get_fields().items()}


def _assert_equal_outputs(got, ref, atol, what):
    """Every field of ``ref`` equal in ``got``, detection by detection, after pairing near-tied scores
    (:func:`afa_d2.export.align_detections`)."""
    n = ref["scores"].shape[0]
    assert n > 0, "{}: no detections to compare".format(what)
    got = export.align_detections(ref, got, atol)
    for k in ref:
        g = torch.as_tensor(np.asarray(got[k]))
        assert tuple(g.shape) == tuple(ref[k].shape), "{} {}: shape {} vs PyTorch {}".format(
            what, k, tuple(g.shape), tuple(ref[k].shape))
        if k == "pred_classes":
            assert torch.equal(g, ref[k]), "{}: classes differ at {}".format(what, (g != ref[k]).nonzero()[:5].tolist())
        else:
            diff = float((g.double() - ref[k].double()).abs().max())
            assert diff <= atol, "{} {}: max |exported - PyTorch| = {:.3g} > {}".format(what, k, diff, atol)


def _assert_plain_attention(graph, levels=(2, 3, 4, 5)):
    """Every MS-Att block's attention is MatMul, Softmax, MatMul (SDPA's ONNX form), its token linears MatMul;
    the only convolution of an operator is the DW-MLP's depth-wise one."""
    import re

    for level in levels:
        own = [n.op_type for n in graph.node if re.search(r"(^|/)fpn_aggregation{}/(attn/)?[^/]+$".format(level), n.name)]
        assert own.count("MatMul") == 2 and own.count("Softmax") == 1, (level, sorted(set(own)))
        linears = [n.name for n in graph.node if n.op_type == "MatMul"
                   and re.search(r"fpn_aggregation{}/(attn/)?(q|kv|proj|mlp/fc1|mlp/fc2)/".format(level), n.name)]
        assert len(linears) == 5, (level, linears)
    convs = [n.name for n in graph.node if n.op_type == "Conv" and "fpn_aggregation" in n.name]
    assert all(name.endswith("/mlp/dwconv/Conv") for name in convs) and len(convs) == len(levels), convs


# ------------------------------------------------------------------------------------ the adapter
def test_tracing_adapter_is_detectron2s_on_this_build():
    cls = export.tracing_adapter_class()
    assert cls.__name__ == "TracingAdapter" and cls.__module__ == "detectron2.export.flatten", cls
    assert "detectron2.export.flatten" in sys.modules


def test_the_traced_function_is_raw_inference(monkeypatch):
    calls = []
    monkeypatch.setattr(tracing, "raw_inference", lambda m, inputs: calls.append(m) or raw_inference(m, inputs))
    model = _dense_model("retinanet", "mssa")
    with torch.no_grad():
        out = tracing.traced_inference(model, [{"image": _image(*SIZES[0])}])
    assert calls == [model] and len(out[0]["instances"]) > 0


# ------------------------------------------------------------------------------------ ONNX == PyTorch
@pytest.mark.parametrize("op", ["sum", "mssa", "msca"])
@pytest.mark.parametrize("size", SIZES, ids=["97x131", "150x203"])
def test_onnx_equals_pytorch(tmp_path, op, size):
    import onnx  # the `export` extra, part of the `test` extra

    model = _model(op)
    image = _image(*size)
    info = export.export_model(model, str(tmp_path / "m.onnx"), sample=image, verify=False)
    assert info.opset == export.DEFAULT_OPSET == 17 and info.operators["p2"] == op
    assert info.padded_size == [-(-s // 32) * 32 for s in size]
    got = export.ExportedModel(info.path)(image)
    _assert_equal_outputs(got, _eager(model, image), ATOL, "{} {}x{}".format(op, *size))
    assert list(got["image_size"]) == list(size)

    graph = onnx.load(info.path).graph
    roi_aligns = [n for n in graph.node if n.op_type == "RoiAlign"]
    assert roi_aligns, "no RoiAlign in the graph"
    for n in roi_aligns:  # torchvision's aligned=True at opset >= 16
        modes = [a.s.decode() for a in n.attribute if a.name == "coordinate_transformation_mode"]
        assert modes == ["half_pixel"], (n.name, modes)
    if op != "sum":
        _assert_plain_attention(graph)


def test_cascade_onnx_and_torchscript_equal_pytorch(tmp_path):
    model = _model("msca", cascade=True)
    assert type(model.roi_heads).__name__ == "CascadeROIHeads"
    image = _image(*SIZES[1])
    ref = _eager(model, image)
    onnx_info = export.export_model(model, str(tmp_path / "c.onnx"), sample=image, verify=False)
    assert onnx_info.roi_heads == onnx_info.head == "CascadeROIHeads"
    assert onnx_info.meta_architecture == "GeneralizedRCNN" and onnx_info.masks != "none"
    _assert_equal_outputs(export.ExportedModel(onnx_info.path)(image), ref, ATOL, "cascade ONNX")
    ts_info = export.export_model(model, str(tmp_path / "c.ts"), sample=image, verify=False)
    traced = torch.jit.load(ts_info.path)
    with torch.no_grad():
        out = dict(zip(ts_info.output_names, traced(image)))
    _assert_equal_outputs(out, ref, 1e-5, "cascade TorchScript")


# ------------------------------------------------------------------------------------ RetinaNet and FCOS
@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
@pytest.mark.parametrize("op", ["mssa", "msca"])
def test_one_stage_detectors_export_and_equal_pytorch(tmp_path, kind, op):
    """ONNX and TorchScript of RetinaNet / FCOS: boxes, scores, classes (no masks) equal ``raw_inference`` at
    the export size and at a larger one.

    ONNX keeps detectron2's 100 detections an image: a level's top-k cut falls among candidates whose scores
    (around the random head's prior) are 1e-7 apart, as close as onnxruntime's rounding, so the cut can take
    one or the other, but such low scores never reach the top 100. TorchScript equals PyTorch bit for bit, so
    it keeps 1000 detections, where the cut itself shows: at 150x203 the cap takes detections away."""
    sample = _image(*SIZES[0])
    model = _dense_model(kind, op)
    info = export.export_model(model, str(tmp_path / "m.onnx"), sample=sample)  # verify: checked on the sample
    assert set(info.max_abs_diff) == set(DENSE_OUTPUTS), info.max_abs_diff
    assert info.output_names == DENSE_OUTPUTS and info.masks == "none"
    arch = {"retinanet": "RetinaNet", "fcos": "FCOS"}[kind]
    assert (info.meta_architecture, info.head, info.roi_heads) == (arch, arch + "Head", None)
    assert info.operators == {"p3": op, "p4": op, "p5": op}
    # p3-p5 with pooling strides (8, 16), (4, 8), (2, 4): each map at least its largest stride from 128 up
    assert info.min_padded_size == [128, 128] and info.max_padded_size is None
    exported = export.ExportedModel(info.path)
    for size in SIZES:
        image = _image(*size, seed=3)
        ref = _eager(model, image)
        assert set(ref) == {"pred_boxes", "scores", "pred_classes"} and len(ref["scores"]) == 100
        _assert_equal_outputs(exported(image), ref, ATOL, "ONNX {} {} {}x{}".format(kind, op, *size))

    model = _dense_model(kind, op, max_detections=1000)
    info = export.export_model(model, str(tmp_path / "m.ts"), sample=sample, verify=False)
    assert info.output_names == DENSE_OUTPUTS and info.min_padded_size == [128, 128]
    exported = export.ExportedModel(info.path)
    for size in SIZES:
        image = _image(*size, seed=3)
        ref = _eager(model, image)
        _assert_equal_outputs(exported(image), ref, 1e-5, "TorchScript {} {} {}x{}".format(kind, op, *size))
    uncapped = _build(afpn_config(kind, op))
    uncapped.max_detections_per_image = model.max_detections_per_image
    uncapped.test_topk_candidates = 10 ** 6
    assert len(_eager(uncapped, image)["scores"]) > len(ref["scores"]), "the cap takes nothing away at 150x203"


def test_one_stage_topk_cap_needs_the_traced_clamp_on_detectron2_v0_6(tmp_path, monkeypatch):
    """Without :func:`afa_d2.compat.traceable_min`, detectron2 v0.6's graph keeps the sample's uncapped count
    on a level the sample left under the cap (too many detections on a larger input); later detectron2
    clamps the traced count itself and needs nothing."""
    import inspect

    from detectron2.modeling.meta_arch.dense_detector import DenseDetector

    v0_6 = "min(topk_candidates" in inspect.getsource(DenseDetector._decode_per_level_predictions)
    monkeypatch.setattr(compat, "traceable_min", min)
    model = _dense_model("retinanet", "mssa", max_detections=1000)
    info = export.export_model(model, str(tmp_path / "r.ts"), sample=_image(*SIZES[0]), verify=False)
    image = _image(*SIZES[1], seed=3)
    got, want = len(export.ExportedModel(info.path)(image)["scores"]), len(_eager(model, image)["scores"])
    assert (got > want) if v0_6 else (got == want), (got, want)


def test_size_limits_of_a_p3_pyramid():
    model = _dense_model("retinanet", "msca")
    assert model.backbone.levels == ("p3", "p4", "p5")
    assert [model.backbone.get_submodule("fpn_aggregation{}".format(i)).attn.pool_strides for i in (3, 4, 5)] == [
        (8, 16), (4, 8), (2, 4)]
    assert export.graph_size_limits(model, (256, 128), 32) == ([128, 128], None)
    assert export.graph_size_limits(model, (128, 96), 32) == ([128, 96], [128, 96])  # p3 12 wide < 16
    agg = model.backbone.fpn_aggregation5.attn
    agg.pool_strides = (8, 16)  # p5's kernels at most 16: 16 x 32 = 512
    try:
        assert export.graph_size_limits(model, (512, 640), 32) == ([512, 512], None)
    finally:
        agg.pool_strides = (2, 4)


def _run_exported_on_a_random_image(model, info, tmp_path):
    """run_exported on a random 100x140 image file (detections, JSON and drawing in ``tmp_path``), the PyTorch
    model's own forward on the same image (``detector_postprocess`` included), the image and its file."""
    import cv2

    bgr = (np.random.default_rng(5).random((100, 140, 3)) * 255).astype(np.uint8)
    image_file = str(tmp_path / "im.png")
    assert cv2.imwrite(image_file, bgr)
    dets = export.run_exported(info.path, image_file, str(tmp_path / "dets.json"), draw_threshold=0.0)
    with torch.no_grad():
        ref = model([{"image": torch.as_tensor(bgr.transpose(2, 0, 1).astype(np.float32))}])[0]["instances"]
    return dets, ref, bgr, image_file


def test_run_exported_without_masks(tmp_path, capsys):
    """An image file through an exported RetinaNet: the detections of the PyTorch model's own forward
    (``detector_postprocess`` included), JSON without masks, a drawing, no instance-id map."""
    import cv2

    model = _dense_model("retinanet", "msca", max_detections=25)
    info = export.export_model(model, str(tmp_path / "r.onnx"), sample=_image(*SIZES[0]), class_names=["a", "b", "c"])
    dets, ref, bgr, image_file = _run_exported_on_a_random_image(model, info, tmp_path)
    ref = {"pred_boxes": ref.pred_boxes.tensor, "scores": ref.scores, "pred_classes": ref.pred_classes}
    got = {"pred_boxes": dets["boxes"], "scores": dets["scores"], "pred_classes": dets["classes"]}
    _assert_equal_outputs(got, ref, ATOL, "run_exported")
    assert len(dets["scores"]) == 25 and "masks" not in dets and "mask_probs" not in dets
    with open(tmp_path / "dets.json") as f:
        record = json.load(f)
    assert record["image_size"] == [100, 140] and len(record["detections"]) == 25
    assert all(set(d) == {"box", "score", "class", "class_name"} for d in record["detections"]), record["detections"][0]
    assert not (tmp_path / "dets_ids.png").exists()
    drawn = cv2.imread(str(tmp_path / "dets.png"), cv2.IMREAD_COLOR)
    assert drawn.shape == (100, 140, 3) and np.abs(drawn.astype(int) - bgr.astype(int)).mean() > 1, "nothing drawn"

    code = export_cli.run_main([info.path, image_file, "--output", str(tmp_path / "t.json")])
    printed = capsys.readouterr().out
    assert code == 0 and (tmp_path / "t.png").is_file() and not (tmp_path / "t_ids.png").exists()
    assert "25 detections" in printed and "_ids.png" not in printed, printed


def test_models_the_export_does_not_take_are_refused_in_one_line(tmp_path):
    cases = [
        (_build(afpn_config("panoptic_fpn", "msca")), "does not export a PanopticFPN"),
        (_build(afpn_config("keypoint_rcnn", "msca")), "does not export keypoints"),
        (torch.nn.Conv2d(3, 3, 1), "needs a detectron2 GeneralizedRCNN (Mask / Cascade Mask R-CNN), RetinaNet or FCOS, "
                                   "got Conv2d"),
    ]
    for model, words in cases:
        for name in ("m.onnx", "m.ts"):
            with pytest.raises(export.ExportError) as e:
                export.export_model(model, str(tmp_path / name), height=97, width=131)
            assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
            assert not (tmp_path / name).exists()


def test_align_detections_pairs_near_tied_scores_only():
    ref = {"scores": torch.tensor([0.9, 0.5, 0.5 - 1e-7, 0.2]), "pred_classes": torch.tensor([0, 1, 2, 1]),
           "pred_boxes": torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3], [3, 3, 4, 4]]),
           "image_size": torch.tensor([10, 10])}
    swapped = [0, 2, 1, 3]  # the tied pair in the other order
    got = {k: (v.numpy()[swapped] if k != "image_size" else v.numpy()) for k, v in ref.items()}
    aligned = export.align_detections(ref, got, 1e-3)
    for k in ref:
        assert np.array_equal(aligned[k], ref[k].numpy()), k
    got["scores"] = ref["scores"].numpy()[[1, 0, 2, 3]]  # scores 0.5 and 0.9 are not tied: left as they are
    got["pred_boxes"] = ref["pred_boxes"].numpy()[[1, 0, 2, 3]]
    got["pred_classes"] = ref["pred_classes"].numpy()[[1, 0, 2, 3]]
    assert export.align_detections(ref, got, 1e-3) is got
    assert export.align_detections(ref, {"scores": got["scores"][:3]}, 1e-3)["scores"].shape == (3,)


# ------------------------------------------------------------------------------------ TorchScript
def test_traced_torchscript_equals_eager_and_checks_its_input_size(tmp_path):
    model = _model("msca")
    image = _image(*SIZES[0], seed=2)
    info = export.export_model(model, str(tmp_path / "m.ts"), sample=image, verify=False)
    assert info.format == "torchscript" and info.output_names == ["pred_boxes", "pred_classes", "pred_masks", "scores",
                                                                  "image_size"]
    assert model.training is False and all(p.requires_grad for p in model.parameters()), "export changed the model"
    extra = {export.METADATA_KEY + ".json": ""}
    traced = torch.jit.load(info.path, _extra_files=extra)  # plain torch: no afa_d2 needed to run it
    assert json.loads(extra[export.METADATA_KEY + ".json"])["padded_size"] == info.padded_size == [128, 160]
    out = dict(zip(info.output_names, traced(image)))  # autograd on: the saved weights need no grad
    _assert_equal_outputs(out, _eager(model, image), 1e-5, "TorchScript {}x{}".format(*SIZES[0]))

    assert info.min_padded_size == [128, 128] and info.max_padded_size is None
    for other in [(110, 150), SIZES[1], (160, 128)]:  # the same padded size, a larger one, transposed
        image = _image(*other, seed=3)
        out = dict(zip(info.output_names, traced(image)))
        _assert_equal_outputs(out, _eager(model, image), 1e-5, "TorchScript 97x131 trace on {}x{}".format(*other))
    with pytest.raises(Exception) as e:  # the file's own scripted check, a torch.jit.Error
        traced(_image(60, 150))
    assert "padded to at least 128x128" in str(e.value) and "padded to 64x160" in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------ input sizes
@pytest.fixture(scope="module")
def msca_onnx_97x131(tmp_path_factory):
    """MSCA Mask R-CNN exported at 97x131, scores above 0.12 only (so the detection count varies)."""
    model = _model("msca", score_thresh=0.12)
    path = str(tmp_path_factory.mktemp("export") / "msca.onnx")
    info = export.export_model(model, path, sample=_image(97, 131))
    return model, info


def test_one_graph_serves_every_padded_size_from_its_minimum(msca_onnx_97x131):
    model, info = msca_onnx_97x131
    assert info.padded_size == [128, 160] and info.min_padded_size == [128, 128] and info.max_padded_size is None
    assert info.height_range == [97, None] and info.width_range == [97, None]
    assert max(info.max_abs_diff.values()) <= ATOL, info.max_abs_diff  # export's own check on its sample
    exported = export.ExportedModel(info.path)
    counts = set()
    # the same padded size, larger ones, and 160x128 (token counts equal to 128x160's, another grid)
    for size in [(120, 150), (150, 203), (160, 128), (250, 300)]:
        image = _image(*size, seed=3)
        ref = _eager(model, image)
        counts.add(len(ref["scores"]))
        _assert_equal_outputs(exported(image), ref, ATOL, "ONNX 97x131 graph on {}x{}".format(*size))
    assert len(counts) > 1, "want different numbers of detections"

    with pytest.raises(export.ExportedSizeError) as e:  # a map below p2's pooling stride of 32
        exported(_image(60, 150))
    msg = str(e.value)
    assert "\n" not in msg and "at least 128x128" in msg and "padded to 64x160" in msg, msg
    assert "export again at 60x150" in msg, msg


def test_a_graph_whose_pooling_kernels_were_clamped_serves_only_its_padded_size(tmp_path):
    model = _model("msca")
    info = export.export_model(model, str(tmp_path / "small.onnx"), sample=_image(60, 90), verify=False)
    assert info.padded_size == info.min_padded_size == info.max_padded_size == [64, 96]  # p2 16x24 < 32
    exported = export.ExportedModel(info.path)
    image = _image(50, 70, seed=2)
    _assert_equal_outputs(exported(image), _eager(model, image), ATOL, "ONNX 60x90 graph on 50x70")
    with pytest.raises(export.ExportedSizeError, match=r"H in 33\.\.64, W in 65\.\.96 \(padded to 64x96\)"):
        exported(_image(*SIZES[0]))
    assert export.graph_size_limits(model, (128, 96), 32) == ([128, 96], [128, 96])  # W's p2 map 24 < 32
    assert export.graph_size_limits(model, (256, 128), 32) == ([128, 128], None)
    model.backbone.fpn_aggregation2.attn.pooling = "adaptive"  # a fixed output grid: its own size only
    try:
        assert export.graph_size_limits(model, (256, 128), 32) == ([256, 128], [256, 128])
    finally:
        model.backbone.fpn_aggregation2.attn.pooling = "multi_scale"


def test_files_from_before_the_minimum_keep_their_one_size(msca_onnx_97x131):
    _, info = msca_onnx_97x131
    exported = export.ExportedModel(info.path)
    for key in ("min_padded_size", "max_padded_size"):
        exported.meta.pop(key)
    exported.meta["height_range"], exported.meta["width_range"] = [97, 128], [129, 160]
    exported.check_size(120, 150)
    with pytest.raises(export.ExportedSizeError, match="H in 97..128, W in 129..160"):
        exported.check_size(150, 203)


# ------------------------------------------------------------------------------------ RoIAlign
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roialign_aligned_exact_at_opset_17_half_pixel_off_at_11(tmp_path, sampling_ratio):
    """torchvision's roi_align(aligned=True) in onnxruntime: exact from opset 16 (half_pixel), off at 11."""
    import warnings

    import onnxruntime as ort
    from detectron2.layers import ROIAlign

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 20, 24, generator=g)
    pooler = ROIAlign((7, 7), 0.25, sampling_ratio, aligned=True)

    def rois(max_side):
        xy = torch.rand(64, 2, generator=g) * torch.tensor([80.0, 70.0])
        return torch.cat([torch.zeros(64, 1), xy, xy + torch.rand(64, 2, generator=g) * max_side], dim=1)

    cases = {"boxes": rois(40.0), "sub-pixel boxes": rois(3.0), "zero-size boxes": rois(0.0)}
    errors = {}
    for opset in (11, 17):
        path = str(tmp_path / "roi{}.onnx".format(opset))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(pooler, (x, cases["boxes"]), path, dynamo=False, opset_version=opset,
                              input_names=["x", "rois"], dynamic_axes={"rois": {0: "n"}})
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for name, r in cases.items():
            got = session.run(None, {"x": x.numpy(), "rois": r.numpy()})[0]
            errors[(opset, name)] = float(np.abs(got - pooler(x, r).numpy()).max())
    for name in cases:
        assert errors[(17, name)] <= 1e-5, (name, errors)
        assert errors[(11, name)] > 0.1, (name, errors)  # detectron2's opset 11: the unshifted grid


# ------------------------------------------------------------------------------------ kernels
def test_attention_exports_as_plain_ops_even_when_conv_kernels_are_forced(tmp_path, monkeypatch):
    import onnxruntime as ort

    from afa_d2.execution import kernels

    import onnx

    calls = []
    conv = kernels._attend_conv
    monkeypatch.setattr(kernels, "_attend_conv", lambda *a: calls.append(1) or conv(*a))
    neck = _model("msca").backbone

    class Neck(torch.nn.Module):  # the pyramid as a tuple of maps
        def __init__(self):
            super().__init__()
            self.neck = neck

        def forward(self, x):
            return tuple(self.neck(x).values())

    x = _image(128, 160)[None]
    names = list(neck.output_shape())
    with kernels.kernel_policy("conv"), torch.no_grad():
        eager = dict(zip(names, Neck()(x)))
        assert len(calls) == 4, "the forced conv kernels did not run in eager mode ({} calls)".format(len(calls))
        del calls[:]
        path = str(tmp_path / "neck.onnx")
        torch.onnx.export(Neck(), (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=names)
    assert not calls, "the conv attention kernel entered the exported graph"
    _assert_plain_attention(onnx.load(path).graph)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(names, {"x": x.numpy()})
    for name, value in zip(names, got):
        diff = float(np.abs(value - eager[name].numpy()).max())
        assert diff <= 1e-3, (name, diff)


# ------------------------------------------------------------------------------------ runner and tools
def test_run_exported_writes_detections_in_image_pixels(tmp_path, msca_onnx_97x131):
    import cv2
    from pycocotools import mask as mask_util

    model, info = msca_onnx_97x131
    dets, ref, bgr, image_file = _run_exported_on_a_random_image(model, info, tmp_path)
    n = len(ref)
    assert n > 0 and len(dets["scores"]) == n
    assert np.abs(dets["boxes"] - ref.pred_boxes.tensor.numpy()).max() <= ATOL
    assert np.abs(dets["scores"] - ref.scores.numpy()).max() <= ATOL
    assert (dets["classes"] == ref.pred_classes.numpy()).all()
    assert dets["mask_probs"].shape == (n, 28, 28) and dets["masks"].shape == (n, 100, 140)
    assert (dets["masks"] != ref.pred_masks.numpy()).mean() < 1e-3

    with open(tmp_path / "dets.json") as f:
        record = json.load(f)
    assert record["image_size"] == [100, 140] and len(record["detections"]) == n
    first = record["detections"][0]
    assert first["class"] == int(ref.pred_classes[0]) and abs(first["score"] - float(ref.scores[0])) < 1e-3
    rle = dict(first["mask"], counts=first["mask"]["counts"].encode())
    assert (mask_util.decode(rle).astype(bool) == dets["masks"][0]).all()
    ids = cv2.imread(str(tmp_path / "dets_ids.png"), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint16 and ids.shape == (100, 140) and ids.max() <= n
    top = int(np.argmax(dets["scores"]))
    assert (ids[dets["masks"][top]] == top + 1).all(), "the best detection is not on top in the id map"
    # the picture a person opens: the image with the detections drawn on it (not black, not the bare image)
    drawn = cv2.imread(str(tmp_path / "dets.png"), cv2.IMREAD_COLOR)
    assert drawn.shape == (100, 140, 3) and drawn.dtype == np.uint8
    assert np.abs(drawn.astype(int) - bgr.astype(int)).mean() > 5, "no detection drawn on the image"
    assert "class_name" not in first  # exported from a bare model: no names to carry
    # the same image given as a (3, H, W) tensor in the model's format (BGR) is drawn in its own colours (read
    # from the model's format, not taken for RGB): where nothing is drawn, both pictures are the image itself
    # (the detections' colours are the Visualizer's random ones, so the drawn pixels may differ)
    export.run_exported(info.path, torch.as_tensor(bgr.transpose(2, 0, 1).copy()), str(tmp_path / "t.json"),
                        draw_threshold=0.0)
    from_tensor = cv2.imread(str(tmp_path / "t.png"), cv2.IMREAD_COLOR)
    undrawn = (drawn == bgr).all(axis=-1)
    assert undrawn.mean() > 0.2 and (from_tensor[undrawn] == bgr[undrawn]).all(axis=-1).mean() > 0.99


def test_tools_export_a_config_with_weights_then_run_it(tmp_path, capsys):
    """The command line: a zoo config + checkpoint -> ONNX (resized as at test time) -> detections
    equal to afa_d2's Predictor on the same image and weights."""
    import cv2

    from afa_d2.predictor import Predictor

    opts = ["model.roi_heads.box_predictor.test_score_thresh=0.0", "model.roi_heads.box_predictor.test_topk_per_image=30"]
    torch.manual_seed(0)
    model, _ = export.load_model("shapes/mask_rcnn_R_18_mssa.py", overrides=opts)
    weights = str(tmp_path / "w.pth")
    torch.save({"model": model.state_dict()}, weights)
    out = str(tmp_path / "exp")
    code = export_cli.export_main(["--config", "shapes/mask_rcnn_R_18_mssa.py", "--weights", weights,
                                   "--output", out, "--height", "97", "--width", "131", *opts])
    printed = capsys.readouterr().out
    assert code == 0 and "ONNX opset 17" in printed and "short edge 192" in printed, printed
    bgr = (np.random.default_rng(6).random((97, 131, 3)) * 255).astype(np.uint8)
    image_file = str(tmp_path / "im.png")
    assert cv2.imwrite(image_file, bgr)
    code = export_cli.run_main([os.path.join(out, "model.onnx"), image_file, "--output", str(tmp_path / "d.json")])
    assert code == 0 and (tmp_path / "d.json").is_file() and (tmp_path / "d.png").is_file()
    assert (tmp_path / "d_ids.png").is_file()
    with open(tmp_path / "d.json") as f:
        record = json.load(f)["detections"]
    # the file carries the config's class names (shapes_val's), the JSON and the printout name each class
    from afa_d2.data.shapes import CLASSES

    names = export.ExportedModel(os.path.join(out, "model.onnx")).meta["class_names"]
    assert names == list(CLASSES), names
    assert all(d["class_name"] == names[d["class"]] for d in record)
    printed = capsys.readouterr().out
    assert names[record[0]["class"]] in printed and "d.png (drawn)" in printed
    ref = Predictor("shapes/mask_rcnn_R_18_mssa.py", weights=weights, device="cpu", opts=opts)(bgr)["instances"]
    assert len(record) == len(ref) == 30
    boxes = np.array([d["box"] for d in record])
    assert np.abs(boxes - ref.pred_boxes.tensor.numpy()).max() <= ATOL + 1e-3  # + the JSON's rounding to 1e-3
    assert [d["class"] for d in record] == ref.pred_classes.tolist()


def test_tools_help():
    for parse in (export_cli.parse_export_args, export_cli.parse_run_args):
        with pytest.raises(SystemExit) as e:
            parse(["--help"])
        assert e.value.code == 0


# ------------------------------------------------------------------------------------ bad input
def test_unreadable_or_missing_image_is_one_line(tmp_path, msca_onnx_97x131):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    for path, words in ((str(bad), "not a readable image file"), (str(tmp_path / "missing.png"), "no such file")):
        with pytest.raises(export.ExportError) as e:
            export.run_exported(msca_onnx_97x131[1].path, path)
        assert words in str(e.value) and path in str(e.value) and "\n" not in str(e.value), str(e.value)
    code = export_cli.run_main([msca_onnx_97x131[1].path, str(bad), "--output", str(tmp_path / "d.json")])
    assert code == 2 and not (tmp_path / "d.json").exists()


def test_checkpoint_that_does_not_fit_the_config_is_one_line(tmp_path):
    weights = str(tmp_path / "sum.pth")
    torch.save({"model": _model("sum").state_dict()}, weights)  # no attention weights
    with pytest.raises(CheckpointMismatchError) as e:
        export.load_model("shapes/mask_rcnn_R_18_msca.py", weights)
    msg = str(e.value)
    assert "\n" not in msg and weights in msg and "missing" in msg and "fpn_aggregation" in msg, msg


def test_missing_onnx_packages_name_the_extra(tmp_path, monkeypatch, msca_onnx_97x131):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(export.MissingExportDependencyError) as e:
        export.run_exported(msca_onnx_97x131[1].path, _image(97, 131))
    assert str(e.value).endswith("pip install 'afa_d2[export]'") and "\n" not in str(e.value), str(e.value)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(export.MissingExportDependencyError) as e:
        export.export_model(_model("sum"), str(tmp_path / "m.onnx"), height=97, width=131)
    assert "onnx" in str(e.value) and "pip install 'afa_d2[export]'" in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments_are_one_line(tmp_path):
    model = _model("sum")
    cases = [
        (dict(output=str(tmp_path / "m.onnx"), height=97, width=131, opset=11), "opset 11"),
        (dict(output=str(tmp_path / "m.zip"), height=97, width=131), "unknown file suffix '.zip'"),
        (dict(output=str(tmp_path / "m.onnx"), format="torchscript", height=97, width=131), "format='torchscript'"),
        (dict(output=str(tmp_path / "m.onnx")), "give a sample image or both height and width"),
        (dict(output=str(tmp_path / "m.onnx"), height=0, width=131), "height must be a positive int, got 0"),
    ]
    for kwargs, words in cases:
        with pytest.raises(export.ExportError) as e:
            export.export_model(model, **kwargs)
        assert words in str(e.value) and "\n" not in str(e.value), (kwargs, str(e.value))
    with pytest.raises(export.ExportError, match="no such file"):
        export.ExportedModel(str(tmp_path / "none.onnx"))


def test_every_format_is_one_backend_in_the_registry(tmp_path):
    """Names, suffixes and default files come from ``formats.BACKENDS``, one ExportBackend a format."""
    from afa_d2.export.formats import BACKENDS, output_path

    assert export.EXPORT_FORMATS == tuple(BACKENDS) == ("onnx", "torchscript")
    assert export.SUFFIXES == {".onnx": "onnx", ".ts": "torchscript", ".pt": "torchscript"}
    assert export.DEFAULT_FILES == {"onnx": "model.onnx", "torchscript": "model.ts"}
    for name, backend in BACKENDS.items():
        assert isinstance(backend, export.ExportBackend) and backend.name == name
        assert all(export.format_of("m" + suffix.upper()) == name for suffix in backend.suffixes)
        assert output_path(str(tmp_path), name) == os.path.join(str(tmp_path), backend.default_file)
