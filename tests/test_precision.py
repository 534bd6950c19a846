"""Inference precision (afa_d2.engine.precision): the refusals, fp32 outputs, and a trained model's
detections under bf16 against fp32."""
import os

import pytest
import torch

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.engine import precision as P


def test_refusals_name_the_value_the_isa_and_what_works(monkeypatch):
    with pytest.raises(P.PrecisionError, match="unknown precision 'fp8'; valid: fp32, bf16, fp16"):
        P.check_precision("fp8", "cpu")
    with pytest.raises(P.PrecisionError, match="precision=fp16 needs a CUDA device; on the CPU"):
        P.check_precision("fp16", "cpu")
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(P.PrecisionError, match="precision=bf16 on .* without AVX512_BF16 / AMX-BF16 .* use fp32, or "
                                               "force it"):
        P.check_precision("bf16", "cpu")
    P.check_precision("bf16", "cpu", force=True)  # forced: no refusal
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    P.check_precision("bf16", "cpu")
    assert P.cpu_bf16_support() == (True, "{} with AVX512_BF16".format(__import__("platform").machine()))
    P.check_precision("fp32", "cpu")


def test_outputs_come_back_in_fp32():
    from detectron2.structures import Boxes, Instances

    inst = Instances((4, 5), pred_boxes=Boxes(torch.ones(2, 4, dtype=torch.bfloat16)),
                     scores=torch.ones(2, dtype=torch.bfloat16), pred_classes=torch.tensor([1, 2]),
                     pred_masks=torch.ones(2, 4, 5, dtype=torch.bool))
    (out,) = P.outputs_to_fp32([{"instances": inst}])
    got = out["instances"]
    assert got.pred_boxes.tensor.dtype == torch.float32 and got.scores.dtype == torch.float32
    assert got.pred_classes.dtype == torch.int64 and got.pred_masks.dtype == torch.bool


def test_train_net_refuses_fp16_on_the_cpu_at_parse_time(tmp_path, capsys):
    from afa_d2.train_net import parse_args

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(repo, "configs", "shapes", "mask_rcnn_R_18_sum.py")
    with pytest.raises(SystemExit) as e:
        parse_args(["--config-file", config, "--eval-only", "--precision", "fp16", "train.device=cpu"])
    assert e.value.code == 2 and "precision=fp16 needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--config-file", config, "--precision", "bf16"])  # training: not this flag
    assert "is for --eval-only" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 400 training iterations: minutes on an idle host, more on a busy one
@pytest.mark.skipif(not P.cpu_bf16_support()[0], reason="this CPU has no native bf16")
def test_a_trained_models_detections_under_bf16_match_fp32(tmp_path, monkeypatch):
    """Train the shapes Mask R-CNN (MSCA) for 400 iterations (minutes: slow-marked), then predict a val
    image in fp32 and in bf16: the confident detections are the same classes, their boxes within 2 px
    (bf16 keeps 8 bits of mantissa: the heads' regression deltas move by about 1% of a box's size)."""
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    from afa_d2.data import read_image, shapes_split_names
    from afa_d2.engine import do_train, fit_schedule_to_iters, load_config, resolve_epoch_schedule
    from afa_d2.model_zoo.catalog import get_config_file
    from afa_d2.predictor import Predictor

    names = shapes_split_names(400, 4)
    cfg = load_config(get_config_file("shapes/mask_rcnn_R_18_msca.py"))
    cfg.dataloader.train.dataset.names = names["train"]
    cfg.dataloader.test.dataset.names = names["val"]
    cfg.dataloader.train.num_workers = 0
    cfg.train.output_dir = str(tmp_path / "run")
    cfg.train.eval_period_epochs = 0
    fit_schedule_to_iters(cfg, 400, 400)
    cfg.train.eval_period = -1
    resolve_epoch_schedule(cfg, num_images=400)
    do_train(cfg)
    from detectron2.data import DatasetCatalog

    image = read_image(DatasetCatalog.get(names["val"])[0]["file_name"], "BGR")
    weights = os.path.join(cfg.train.output_dir, "model_final.pth")
    want = Predictor(cfg, weights, "cpu")(image)["instances"]
    got = Predictor(cfg, weights, "cpu", precision="bf16")(image)["instances"]
    assert got.scores.dtype == torch.float32 and got.pred_boxes.tensor.dtype == torch.float32
    confident = want[want.scores > 0.3]
    assert len(confident) >= 1, "the briefly trained model has no confident detection to compare"
    from detectron2.structures import pairwise_iou

    iou = pairwise_iou(confident.pred_boxes, got.pred_boxes)
    best = iou.max(dim=1)
    matched = got[best.indices]
    assert (best.values > 0.9).all(), best.values
    assert torch.equal(matched.pred_classes, confident.pred_classes)
    assert (matched.pred_boxes.tensor - confident.pred_boxes.tensor).abs().max() < 2.0
