"""``python -m afa_d2.demo``: a tiny run writes the checkpoint, the metrics and the PNG; the full
10-minute run (slow-marked) reaches the AP the README promises within its budget."""
import json
import math
import os
import subprocess
import sys

import pytest

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2 import demo
from afa_d2.engine import fit_schedule_to_iters

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_args_rejects_bad_values(capsys):
    for argv in (["--minutes", "0"], ["--max-iter", "0"], ["--num-train", "0"], ["--workers", "-1"]):
        with pytest.raises(SystemExit):
            demo.parse_args(argv)
    err = capsys.readouterr().err
    assert "--minutes must be > 0" in err and "--workers must be >= 0, got -1" in err


def test_loader_workers_follow_the_cores(monkeypatch):
    """No worker processes on 2 cores (they slow the step there), up to 2 where cores are spare;
    --workers wins."""
    for cores, workers in ((1, 0), (2, 0), (3, 1), (4, 2), (64, 2)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert demo.default_workers() == workers
    args = demo.parse_args(["--workers", "3"])
    cfg = demo._load_config(args, {"train": "shapes_train", "val": "shapes_val"})
    assert cfg.dataloader.train.num_workers == 3


def test_demo_accepts_the_overrides_train_net_accepts():
    """The keys the schedule fills at start-up (``train.eval_period``, ``train.checkpointer.period``)
    are overridable in the demo as in train_net.py: both load configs with afa_d2.engine.load_config."""
    args = demo.parse_args(["train.eval_period=7", "train.checkpointer.period=3"])
    cfg = demo._load_config(args, {"train": "shapes_train", "val": "shapes_val"})
    assert (cfg.train.eval_period, cfg.train.checkpointer.period) == (7, 3)
    from afa_d2.engine import UnknownConfigKeyError

    with pytest.raises(UnknownConfigKeyError, match="train.eval_perod"):
        demo._load_config(demo.parse_args(["train.eval_perod=7"]), {"train": "shapes_train", "val": "shapes_val"})


def test_default_config_is_the_shapes_msca_config():
    path = demo.default_config_file()
    assert path == os.path.join(REPO, "configs", "shapes", "mask_rcnn_R_18_msca.py")


@pytest.mark.parametrize("num_train,max_iter", [(2000, 137), (2000, 1), (16, 40)])
def test_schedule_sized_to_max_iter(num_train, max_iter):
    """The demo's fractional epochs resolve to exactly max_iter, with the shapes config's decays
    at 0.85 and 0.95 of training."""
    from afa_d2.engine import resolve_epoch_schedule
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(demo.default_config_file())
    fit_schedule_to_iters(cfg, num_train, max_iter)
    info = resolve_epoch_schedule(cfg, num_images=num_train)
    assert info.max_iter == cfg.train.max_iter == max_iter
    assert info.decay_iters == [round(max_iter * 0.85), round(max_iter * 0.95)]
    assert cfg.train.eval_period == max_iter and cfg.train.checkpointer.period == max_iter
    assert 1 <= info.warmup_iters <= max(1, max_iter // 10)


def test_schedule_keeps_overridden_decay_fractions():
    """``lr_multiplier.decay_epochs=[2,3]`` on the command line (4-epoch config: 0.5 and 0.75
    of training) moves the demo's decays with it instead of being replaced by the config's."""
    from afa_d2.engine import resolve_epoch_schedule

    args = demo.parse_args(["lr_multiplier.decay_epochs=[2,3]"])
    cfg = demo._load_config(args, {"train": "shapes_train", "val": "shapes_val"})
    fit_schedule_to_iters(cfg, 2000, 1000)
    info = resolve_epoch_schedule(cfg, num_images=2000)
    assert info.max_iter == 1000 and info.decay_iters == [500, 750]


def test_tiny_demo_writes_checkpoint_metrics_and_png(tmp_path, monkeypatch, capsys):
    import cv2

    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    report = demo.run_demo(demo.parse_args([
        "--output-dir", str(out), "--max-iter", "2", "--num-train", "8", "--num-val", "3", "--num-vis", "2",
        # every proposal becomes a detection, so the 2-iteration model's AP is a number, not "no predictions"
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
    ]))
    printed = capsys.readouterr().out
    assert report["max_iter"] == 2
    for key in ("checkpoint", "predictions_png", "metrics_json", "training_metrics", "log"):
        path = report["files"][key]
        assert os.path.isfile(path), "{} ({}) was not written".format(key, path)
        assert os.path.abspath(path) in printed, "the demo does not print where {} is".format(key)
    with open(report["files"]["metrics_json"]) as f:
        metrics = json.load(f)["metrics"]
    # the demo reports the evaluator's numbers: those of the evaluation logged in metrics.json
    evaluated = [json.loads(line) for line in open(report["files"]["training_metrics"]) if "bbox/AP" in line]
    assert len(evaluated) == 1, evaluated
    for key, logged in (("box_AP", "bbox/AP"), ("box_AP50", "bbox/AP50"), ("mask_AP", "segm/AP"),
                        ("mask_AP50", "segm/AP50")):
        assert key in metrics and math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 100.0, (key, metrics)
        assert metrics[key] == pytest.approx(evaluated[0][logged]), (key, metrics, evaluated[0])
    png = cv2.imread(report["files"]["predictions_png"])
    assert png is not None and png.ndim == 3
    assert png.shape[0] >= 2 * 192 and png.shape[1] >= 2 * 192  # 2 rows of (ground truth | predictions)
    import torch

    state = torch.load(report["files"]["checkpoint"], map_location="cpu", weights_only=False)
    assert any(k.startswith("backbone.fpn_aggregation") for k in state["model"])


@pytest.mark.slow
def test_full_demo_reaches_its_ap_within_ten_minutes(tmp_path):
    """The README's demo: box AP50 >= 25 on shapes val, box AP < 70 (not saturated), <= 10 minutes."""
    out = tmp_path / "demo"
    env = dict(os.environ, AFA_D2_CACHE=str(tmp_path / "cache"))  # dataset generation included
    subprocess.run([sys.executable, "-m", "afa_d2.demo", "--output-dir", str(out)], cwd=REPO, env=env,
                   check=True, timeout=15 * 60)
    with open(out / "demo_metrics.json") as f:
        report = json.load(f)
    m = report["metrics"]
    assert report["seconds"]["total"] <= 600, report["seconds"]
    assert m["box_AP50"] >= 25, m
    assert m["box_AP"] < 70, m


def test_the_budget_counts_from_the_process_start():
    """``python -m afa_d2.demo`` imports torch and detectron2 before the demo module's first line:
    the budget must count that time, so the age of the process is read from /proc."""
    code = "import time; time.sleep(1.0); from afa_d2.demo import _process_age_s; print(_process_age_s())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1.0 <= age < 120.0


def test_deadline_from_trained_model_times_inference_and_restores_training_mode(data_root, tmp_path):
    """The demo's refresh_deadline: it runs the model being trained on a few val images in eval
    mode, puts it back in training mode, and returns the end less the evaluation it predicts."""
    import time

    import _engine_fixtures as fx
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(fx.write_config(str(tmp_path / "cfg.py"), "mask_rcnn", data_root, str(tmp_path / "o")))
    model = instantiate(cfg.model).train()

    class Trainer:
        pass

    trainer = Trainer()
    trainer.model = model
    report = {}
    end = time.perf_counter() + 1000.0
    refresh = demo.deadline_from_trained_model(cfg, end, num_val=200, report=report)
    deadline = refresh(trainer)
    per_image = report["infer_image_trained_s"]
    assert per_image > 0 and model.training
    assert deadline == pytest.approx(end - per_image * 200 * demo._EVAL_SLACK)
