"""train_net.py end to end (subprocesses, tiny models and images) and the engine's pieces."""
import os

import pytest
import torch

import afa_d2  # noqa: F401

import _engine_fixtures as fx
from afa_d2.engine import DeterministicTrainingSampler, create_ddp_model, do_train
from afa_d2.engine.hooks import GradientClipper

SHAPES_DIR = os.path.join(fx.REPO, "configs", "shapes")


def _assert_ok(proc):
    assert proc.returncode == 0, "train_net.py failed (rc={}):\n{}".format(proc.returncode, proc.stderr[-6000:])


@pytest.mark.parametrize("kind", ["mask_rcnn", "cascade"])
def test_few_iterations_train_and_evaluate(kind, data_root, tmp_path):
    """5 iterations + evaluation write model_final.pth, last_checkpoint and metrics.json."""
    out = str(tmp_path / "out")
    cfg = fx.write_config(str(tmp_path / "cfg.py"), kind, data_root, out, max_iter=5)
    proc = fx.run_train_net(cfg)
    _assert_ok(proc)
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    state = fx.load_model_state(os.path.join(out, "model_final.pth"))
    assert any(k.startswith("roi_heads.") for k in state), sorted(state)[:5]
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 4
    assert ckpt["trainer"]["hooks"]["SamplerState"] == {"seed": 0}  # the data stream's seed (train.seed)
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 5
    metrics = fx.read_metrics(out)
    train_rows = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in train_rows] == [0, 1, 2, 3, 4]  # log_period=1
    assert all(m["total_loss"] > 0 for m in train_rows)
    stage = "_stage2" if kind == "cascade" else ""
    for key in ("loss_cls" + stage, "loss_box_reg" + stage, "loss_mask", "loss_rpn_cls", "lr"):
        assert key in train_rows[-1], (key, sorted(train_rows[-1]))
    eval_rows = [m for m in metrics if "bbox/AP" in m]
    assert len(eval_rows) == 1 and "segm/AP" in eval_rows[0], metrics[-1]
    assert 0.0 <= eval_rows[0]["bbox/AP"] <= 100.0
    # the start-up log: the schedule in iterations, the CPU fall-back is not needed (device=cpu)
    assert "Schedule: 12 epochs x ceil(16 images / total batch 2) = 12 x 8 = 96 iterations" in proc.stdout + proc.stderr
    assert os.path.isfile(os.path.join(out, "config.yaml"))
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(out))


def test_two_processes_match_one_process(data_root, tmp_path):
    """--num-gpus 2 on CPU (gloo, detectron2's launch) = 1 process with the same total batch.

    Exactness by construction: a model without normalization whose loss is a mean over images,
    8 distinct images per step split 4 + 4 by DeterministicTrainingSampler (the union of the
    ranks' batches is the single process's batch), no random augmentation, fixed seed (DDP
    broadcasts rank 0's initial weights). What remains is float summation order (gloo sums the
    two ranks' gradients, one process sums 8 images), so weights agree to float32 rounding:
    tolerance 1e-6 absolute (measured: about 2e-8 after 6 AdamW steps, i.e. one ulp).
    """
    outs = {}
    for n in (1, 2):
        out = str(tmp_path / "out{}".format(n))
        cfg = fx.write_config(str(tmp_path / "cfg{}.py".format(n)), "toy", data_root, out,
                              max_iter=6, total_batch=8, lr=1e-3)
        args = ["--num-gpus", str(n), "--dist-url", fx.rendezvous_url(str(tmp_path))]
        if n == 1:  # the configs' default device; there is no CUDA here (CUDA_VISIBLE_DEVICES="")
            args.append("train.device=cuda")
        proc = fx.run_train_net(cfg, *args)
        _assert_ok(proc)
        if n == 1:
            assert "CUDA is not available: train.device set to cpu" in proc.stdout + proc.stderr
        outs[n] = out
    assert "World size: 2" in open(os.path.join(outs[2], "log.txt")).read()
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth"):
        a = fx.load_model_state(os.path.join(outs[1], name))
        b = fx.load_model_state(os.path.join(outs[2], name))
        assert sorted(a) == sorted(b)
        for k in a:
            diff = (a[k] - b[k]).abs().max().item()
            assert diff <= 1e-6, "{} {}: 1 vs 2 processes differ by {:.3g}".format(name, k, diff)
    # and training did move the weights (the comparison is not between two untouched models)
    first = fx.load_model_state(os.path.join(outs[1], "model_0000001.pth"))
    final = fx.load_model_state(os.path.join(outs[1], "model_final.pth"))
    moved = max((first[k] - final[k]).abs().max().item() for k in first)
    assert moved > 1e-3, moved
    losses = {n: [m["total_loss"] for m in fx.read_metrics(outs[n]) if "total_loss" in m] for n in (1, 2)}
    assert len(losses[1]) == len(losses[2]) == 6
    for l1, l2 in zip(losses[1], losses[2]):
        assert abs(l1 - l2) <= 1e-5 * max(1.0, abs(l1)), losses


# -- engine pieces, in process ------------------------------------------------------------------
def test_sampler_split_composes_the_single_process_batch(monkeypatch):
    from detectron2.utils import comm

    def ranks_batches(world, start_iter, total=8, steps=5):
        batches = []
        for rank in range(world):
            monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
            monkeypatch.setattr(comm, "get_world_size", lambda w=world: w)
            s = DeterministicTrainingSampler(13, seed=7)
            s.set_start(start_iter * total)
            it = iter(s)
            per = total // world
            batches.append([[next(it) for _ in range(per)] for _ in range(steps)])
        return [sorted(sum((b[k] for b in batches), [])) for k in range(steps)]

    one = ranks_batches(1, 0, steps=6)
    two = ranks_batches(2, 0, steps=6)
    four = ranks_batches(4, 0, steps=6)
    assert one == two == four
    # resuming at iteration 3 continues the same stream
    assert ranks_batches(2, 3, steps=3) == one[3:]
    # each epoch is a permutation of the 13 images; epochs differ
    stream = DeterministicTrainingSampler(13, seed=7).global_stream()
    e0 = [next(stream) for _ in range(13)]
    e1 = [next(stream) for _ in range(13)]
    assert sorted(e0) == sorted(e1) == list(range(13)) and e0 != e1
    # the stream is a function of the seed only
    again = DeterministicTrainingSampler(13, seed=7).global_stream()
    assert [next(again) for _ in range(13)] == e0


def test_gradient_clipper_full_model_norm():
    p1, p2 = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p1, p2], lr=1.0)
    opt.register_step_pre_hook(GradientClipper("full_model", clip_value=1.0))
    p1.grad = torch.full((3,), 3.0)
    p2.grad = torch.full((4,), 4.0)  # total norm sqrt(27 + 64)
    opt.step()
    norm = torch.cat([p1.grad, p2.grad]).norm().item()
    assert abs(norm - 1.0) < 1e-5, norm
    assert abs(p1[0].item() + 3.0 / 91**0.5) < 1e-5  # the step used the clipped gradient
    with pytest.raises(ValueError, match="clip_type"):
        GradientClipper("global")


def test_create_ddp_model_single_process_is_identity():
    m = torch.nn.Linear(2, 2)
    assert create_ddp_model(m) is m


def test_amp_on_cpu_is_refused_with_a_message(data_root, tmp_path):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(fx.write_config(str(tmp_path / "cfg.py"), "toy", data_root, str(tmp_path / "o")))
    cfg.train.amp.enabled = True
    with pytest.raises(ValueError, match="amp.enabled=True needs a CUDA device"):
        do_train(cfg)


def _shapes_configs():
    if not os.path.isdir(SHAPES_DIR):
        return []
    return sorted(n for n in os.listdir(SHAPES_DIR) if n.endswith(".py"))


@pytest.mark.slow  # generates the shapes dataset on first use (cached under $AFA_D2_CACHE)
@pytest.mark.parametrize("name", _shapes_configs() or ["<none yet>"])
def test_shapes_config_trains_two_iterations(name, tmp_path):
    """Each configs/shapes LazyConfig: 2 iterations + evaluation through train_net.py."""
    if name == "<none yet>":
        pytest.skip("configs/shapes has no LazyConfig yet")
    out = str(tmp_path / "out")
    proc = fx.run_train_net(os.path.join(SHAPES_DIR, name), "train.max_iter=2", "train.output_dir=" + out,
                            "dataloader.train.num_workers=0", timeout=600)
    _assert_ok(proc)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert any("bbox/AP" in m for m in fx.read_metrics(out))


def test_eval_only_with_a_checkpoint_that_does_not_fit(data_root, tmp_path):
    """--eval-only refuses a checkpoint whose shapes differ, naming keys, shapes and what loaded."""
    from detectron2.config import LazyConfig, instantiate

    from afa_d2.engine import CheckpointShapeError, do_eval_only, resolve_epoch_schedule

    cfg = LazyConfig.load(fx.write_config(str(tmp_path / "cfg.py"), "mask_rcnn", data_root, str(tmp_path / "o")))
    resolve_epoch_schedule(cfg)
    two_classes = instantiate(cfg.model)
    path = str(tmp_path / "two_classes.pth")
    torch.save({"model": two_classes.state_dict()}, path)
    cfg.model.roi_heads.num_classes = 3
    cfg.train.init_checkpoint = path
    with pytest.raises(CheckpointShapeError) as e:
        do_eval_only(cfg)
    msg = str(e.value)
    assert "roi_heads.box_predictor.cls_score.weight: (3, 32) in the checkpoint vs (4, 32) in the model" in msg, msg
    assert "roi_heads.mask_head.predictor.weight: (2, 16, 1, 1) in the checkpoint vs (3, 16, 1, 1) in the model" in msg
    n = len(two_classes.state_dict())
    assert "loaded {} of the model's {} tensors".format(n - 6, n) in msg, msg


YACS = """
MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  DEVICE: cuda
  WEIGHTS: ""
  MASK_ON: True
  BACKBONE: {{NAME: build_resnet_attention_fpn_backbone}}
  RESNETS: {{DEPTH: 18, RES2_OUT_CHANNELS: 64, NORM: BN, OUT_FEATURES: [res2, res3, res4, res5]}}
  FPN: {{IN_FEATURES: [res2, res3, res4, res5], OUT_CHANNELS: 16}}
  AFA: {{AGGREGATION: sum}}
  ANCHOR_GENERATOR: {{SIZES: [[8], [16], [32], [64], [128]]}}
  RPN: {{IN_FEATURES: [p2, p3, p4, p5, p6], PRE_NMS_TOPK_TRAIN: 200, POST_NMS_TOPK_TRAIN: 40,
         PRE_NMS_TOPK_TEST: 100, POST_NMS_TOPK_TEST: 40}}
  ROI_HEADS: {{NAME: StandardROIHeads, IN_FEATURES: [p2, p3, p4, p5], NUM_CLASSES: 2, BATCH_SIZE_PER_IMAGE: 32,
              SCORE_THRESH_TEST: 0.0}}
  ROI_BOX_HEAD: {{NAME: FastRCNNConvFCHead, NUM_FC: 1, FC_DIM: 32, POOLER_RESOLUTION: 7}}
  ROI_MASK_HEAD: {{NAME: MaskRCNNConvUpsampleHead, NUM_CONV: 1, CONV_DIM: 16, POOLER_RESOLUTION: 14}}
DATASETS: {{TRAIN: [{train}], TEST: [{val}]}}
DATALOADER: {{NUM_WORKERS: 0}}
INPUT: {{MIN_SIZE_TRAIN: [64], MAX_SIZE_TRAIN: 80, MIN_SIZE_TEST: 64, MAX_SIZE_TEST: 80, RANDOM_FLIP: none}}
SOLVER: {{IMS_PER_BATCH: 2, BASE_LR: 0.0001, MAX_ITER: 2, CHECKPOINT_PERIOD: 100, WARMUP_ITERS: 1}}
TEST: {{EVAL_PERIOD: 0}}
OUTPUT_DIR: {out}
"""


def test_yacs_yaml_path_trains_and_evaluates(data_root, tmp_path):
    """A .yaml with the registered backbone goes through DefaultTrainer with afa_d2's pieces."""
    train = fx.register_tiny("tiny_yacs_train", os.path.join(data_root, "train"), 16)
    val = fx.register_tiny("tiny_yacs_val", os.path.join(data_root, "val"), 4, seed=1)
    out = str(tmp_path / "out")
    path = tmp_path / "tiny.yaml"
    path.write_text(YACS.format(train=train, val=val, out=out))
    from detectron2.engine import default_argument_parser

    from afa_d2.engine.yacs_trainer import run_yacs

    results = run_yacs(default_argument_parser().parse_args(["--config-file", str(path)]))
    assert set(results) == {"bbox", "segm"}, results
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read() == "model_final.pth"
    assert fx.read_metrics(out)[-1]["iteration"] >= 1
