"""Command-line overrides and train_net.py's bad-input messages (in process, no training)."""

import pytest

import afa_d2  # noqa: F401
from detectron2.config import LazyConfig

import _engine_fixtures as fx
from afa_d2.engine.overrides import UnknownConfigKeyError, apply_overrides, flatten_keys, load_config
from afa_d2.engine.schedule import ensure_schedule_keys
from afa_d2.train_net import parse_args


@pytest.fixture
def cfg_path(tmp_path):
    return fx.write_config(str(tmp_path / "cfg.py"), "mask_rcnn", str(tmp_path / "data"), str(tmp_path / "out"))


def test_valid_overrides_apply(cfg_path):
    cfg = LazyConfig.load(cfg_path)
    ensure_schedule_keys(cfg)
    apply_overrides(cfg, ["train.max_iter=7", "model.roi_heads.num_classes=5", "optimizer.lr=0.0002",
                          "train.checkpointer.period=3", "lr_multiplier.decay_epochs=[6,9]", "+train.note=hello"])
    assert cfg.train.max_iter == 7
    assert cfg.model.roi_heads.num_classes == 5
    assert cfg.optimizer.lr == 0.0002
    assert cfg.train.checkpointer.period == 3
    assert list(cfg.lr_multiplier.decay_epochs) == [6, 9]
    assert cfg.train.note == "hello"  # '+' adds a new key on purpose


def test_flatten_keys_does_not_resolve_interpolations(cfg_path):
    keys = flatten_keys(LazyConfig.load(cfg_path))
    assert "dataloader.evaluator.dataset_name" in keys  # "${..test.dataset.names}", left alone
    assert "model.roi_heads.box_predictor.num_classes" in keys
    assert "model.backbone.bottom_up.stem.out_channels" in keys


@pytest.mark.parametrize(
    "override,nearest",
    [
        ("train.max_itr=5", "train.max_iter"),
        ("model.roi_heads.num_clases=3", "model.roi_heads.num_classes"),
        ("optimizer.weight_decy=0.5", "optimizer.weight_decay"),
    ],
)
def test_unknown_key_lists_nearest_valid_keys(cfg_path, override, nearest):
    cfg = LazyConfig.load(cfg_path)
    before = cfg.train.max_iter
    with pytest.raises(UnknownConfigKeyError) as e:
        apply_overrides(cfg, [override])
    msg = str(e.value)
    key = override.split("=")[0]
    assert "Unknown config key '{}'".format(key) in msg, msg
    assert "Nearest valid keys: " + nearest in msg, msg
    assert e.value.suggestions[0] == nearest
    assert isinstance(e.value, KeyError)
    assert cfg.train.max_iter == before  # nothing applied


def test_unknown_key_far_from_everything_lists_the_parent_keys(cfg_path):
    cfg = LazyConfig.load(cfg_path)
    with pytest.raises(UnknownConfigKeyError) as e:
        apply_overrides(cfg, ["train.amp.zzzzzzzz=1"])
    msg = str(e.value)
    assert "Keys under 'train.amp': enabled" in msg, msg


def test_malformed_override(cfg_path):
    with pytest.raises(ValueError, match="not of the form key=value"):
        apply_overrides(LazyConfig.load(cfg_path), ["train.max_iter"])


def test_train_net_unknown_override_key_exits_with_the_suggestion(cfg_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--config-file", cfg_path, "train.max_itr=5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown config key 'train.max_itr'" in err and "train.max_iter" in err, err


def test_train_net_missing_config_file_names_the_path(tmp_path, capsys):
    missing = str(tmp_path / "configs" / "no_such_config.py")
    with pytest.raises(SystemExit) as e:
        parse_args(["--config-file", missing])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--config-file '{}': no such file".format(missing) in err, err
    with pytest.raises(FileNotFoundError, match="no_such_config.py"):
        load_config(missing, [])


def test_train_net_accepts_the_documented_flags(cfg_path):
    args = parse_args(
        ["--config-file", cfg_path, "--num-gpus", "2", "--num-machines", "1", "--machine-rank", "0",
         "--dist-url", "tcp://127.0.0.1:12345", "--resume", "--eval-only", "train.max_iter=3"]
    )
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (2, 1, 0)
    assert args.resume and args.eval_only and args.opts == ["train.max_iter=3"]
    cfg = load_config(cfg_path, args.opts)
    assert cfg.train.max_iter == 3
