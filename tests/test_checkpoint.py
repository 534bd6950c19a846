"""AtomicCheckpointer: atomic saves, weights-only loading of full training checkpoints, shape report."""
import logging
import os

import pytest
import torch
from torch import nn

import afa_d2  # noqa: F401
from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver import LRMultiplier

from afa_d2.engine import checkpoint as ck
from afa_d2.engine.checkpoint import AtomicCheckpointer, CheckpointShapeError, UntrustedCheckpointError
from afa_d2.engine.schedule import epoch_lr_multiplier


class Net(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(self.norm(self.body(x)).mean(dim=(2, 3)))


def _trained_checkpoint(out, amp_scaler=False):
    """A full training checkpoint as do_train writes it: model, optimizer, iteration, lr hook."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.05)
    trainer = SimpleTrainer(model, [None], opt)
    lr_hook = hooks.LRScheduler(scheduler=epoch_lr_multiplier(12, [8, 11], 0.1, 5, 0.001, iters_per_epoch=2))
    trainer.register_hooks([lr_hook])
    trainer.iter, trainer.max_iter = 0, 24
    lr_hook.before_train()  # wraps the multiplier in detectron2's LRMultiplier
    for _ in range(3):
        loss = model(torch.randn(2, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_hook.scheduler.step()
    trainer.iter = 3
    c = AtomicCheckpointer(model, out, trainer=trainer)
    c.save("model_0000003", iteration=3)
    return model, opt


def test_full_training_checkpoint_loads_weights_only(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    model, opt = _trained_checkpoint(out)
    path = os.path.join(out, "model_0000003.pth")
    # no fallback needed: loads as an *untrusted* file (which may not be fully unpickled)
    monkeypatch.delenv(ck.TRUST_ENV, raising=False)
    data = ck.load_checkpoint_file(path, trusted_dirs=[])
    assert data["iteration"] == 3 and data["trainer"]["iteration"] == 3
    assert data["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3
    # torch's own default (weights_only=True since 2.6) reads it as well
    assert torch.load(path, map_location="cpu")["iteration"] == 3

    # resume into fresh objects: model, optimizer state and iteration come back
    torch.manual_seed(1)
    model2 = Net()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.05)
    trainer2 = SimpleTrainer(model2, [None], opt2)
    c2 = AtomicCheckpointer(model2, out, trainer=trainer2)
    c2.resume_or_load("", resume=True)
    assert trainer2.iter == 3
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), n
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert sorted(s1) == sorted(s2)
    for k in s1:
        assert torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) and torch.equal(s1[k]["step"], s2[k]["step"])
    assert c2.last_load_report.fits and len(c2.last_load_report.loaded) == len(model.state_dict())


class Opaque:
    """An arbitrary object: the weights-only unpickler refuses it."""

    def __init__(self):
        self.x = 1


def test_untrusted_pickle_is_refused_trusted_is_loaded(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(ck.TRUST_ENV, raising=False)
    elsewhere = tmp_path / "downloaded"
    elsewhere.mkdir()
    path = str(elsewhere / "odd.pth")
    torch.save({"model": Net().state_dict(), "extra": Opaque()}, path)

    c = AtomicCheckpointer(Net(), str(tmp_path / "run"))
    with pytest.raises(UntrustedCheckpointError) as e:
        c.load(path)
    msg = str(e.value)
    assert path in msg and ck.TRUST_ENV in msg and "Opaque" in msg, msg

    # the same file in the checkpointer's own output directory: written by this trainer
    own = AtomicCheckpointer(Net(), str(elsewhere))
    with caplog.at_level(logging.WARNING):
        extra = own.load(path)
    assert isinstance(extra["extra"], Opaque)
    assert "weights_only=False" in caplog.text

    monkeypatch.setenv(ck.TRUST_ENV, "1")
    assert isinstance(c.load(path)["extra"], Opaque)


def test_shape_mismatch_says_which_keys_and_what_was_loaded(tmp_path, caplog):
    src = Net(classes=5)
    path = str(tmp_path / "five_classes.pth")
    torch.save({"model": {**src.state_dict(), "old.bias": torch.zeros(2)}}, path)

    dst = Net(classes=3)
    c = AtomicCheckpointer(dst, str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        c.load(path)
    r = c.last_load_report
    assert r.mismatched == [("head.weight", (5, 4), (3, 4)), ("head.bias", (5,), (3,))]
    assert r.missing == [] and r.unexpected == ["old.bias"]
    n_model = len(dst.state_dict())
    assert len(r.loaded) == n_model - 2 and "body.weight" in r.loaded and "head.weight" not in r.loaded
    assert torch.equal(dst.body.weight, src.body.weight)  # what fits was loaded
    for text in (r.describe(), caplog.text):
        assert "loaded {} of the model's {} tensors".format(n_model - 2, n_model) in text, text
        assert "head.weight: (5, 4) in the checkpoint vs (3, 4) in the model" in text, text
        assert "head.bias: (5,) in the checkpoint vs (3,) in the model" in text, text
        assert "old.bias" in text

    strict = AtomicCheckpointer(Net(classes=3), str(tmp_path / "run"), strict_shapes=True)
    with pytest.raises(CheckpointShapeError) as e:
        strict.load(path)
    assert "head.weight: (5, 4) in the checkpoint vs (3, 4) in the model" in str(e.value)
    assert e.value.report.mismatched[0][0] == "head.weight"


def test_failed_load_leaves_the_checkpointer_usable(tmp_path, monkeypatch):
    """A load that raises (refused pickle, shapes that do not fit, no such file) must not leave
    detectron2's per-load state behind: the same checkpointer then loads a good file, and its
    report describes that file. (Latest detectron2 asserts ``_parsed_url_during_load is None``
    at the start of every load and clears it only after a successful one.)"""
    monkeypatch.delenv(ck.TRUST_ENV, raising=False)
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    untrusted = str(downloaded / "odd.pth")
    torch.save({"model": Net().state_dict(), "extra": Opaque()}, untrusted)
    five = str(downloaded / "five_classes.pth")
    torch.save({"model": Net(classes=5).state_dict()}, five)
    good_src = Net()
    good = str(downloaded / "good.pth")
    torch.save({"model": good_src.state_dict()}, good)

    model = Net()
    c = AtomicCheckpointer(model, str(tmp_path / "run"), strict_shapes=True)
    failures = [
        (untrusted, UntrustedCheckpointError),
        (five, CheckpointShapeError),
        (str(downloaded / "missing.pth"), (OSError, AssertionError)),
    ]
    for path, error in failures:
        with pytest.raises(error):
            c.load(path)
        assert getattr(c, "_parsed_url_during_load", None) is None, path
        c.load(good)  # the next load works, and loads everything
        assert c.last_load_report.path == good and c.last_load_report.fits
        assert len(c.last_load_report.loaded) == len(model.state_dict())
        for (name, a), b in zip(model.state_dict().items(), good_src.state_dict().values()):
            assert torch.equal(a, b), (path, name)
        with torch.no_grad():  # so that the next round's load must write the weights again
            model.head.bias.add_(1.0)


def test_failed_write_leaves_previous_checkpoint_and_tag(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    model = Net()
    c = AtomicCheckpointer(model, out)
    c.save("model_a")
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        c.save("model_b")
    monkeypatch.setattr(torch, "save", real_save)
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_a.pth"
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_a.pth"]  # no partial file, no temp
    assert torch.load(os.path.join(out, "model_a.pth"), weights_only=True)["model"].keys() == model.state_dict().keys()


def test_overwriting_a_checkpoint_is_atomic(tmp_path):
    out = str(tmp_path / "run")
    model = Net()
    c = AtomicCheckpointer(model, out)
    c.save("model_final")
    with torch.no_grad():
        model.head.bias.fill_(7.0)
    c.save("model_final")
    data = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert data["model"]["head.bias"].tolist() == [7.0, 7.0, 7.0]
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_final.pth"]


def test_lr_multiplier_state_is_plain(tmp_path):
    """The lr hook's state is (base_lrs, last_epoch): nothing the weights-only loader refuses."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4)
    sched = LRMultiplier(opt, epoch_lr_multiplier(12, iters_per_epoch=10), max_iter=120)
    assert set(sched.state_dict()) == {"base_lrs", "last_epoch"}
