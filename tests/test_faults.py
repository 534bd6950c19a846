"""Faults: SIGKILL at a chosen point of training then --resume; a kill during a checkpoint write.

Every kill here happens at a point fixed by the test, from inside the process (a patched
function sends SIGKILL to its own process), never by a timer: the outcome does not depend on how
fast the host is, and a failure names the exact point.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import afa_d2  # noqa: F401

import _engine_fixtures as fx

MAX_ITER = 10


def _last_checkpoint_iter(out):
    try:
        with open(os.path.join(out, "last_checkpoint")) as f:
            name = f.read().strip()
    except OSError:
        return -1
    if name.startswith("model_") and name[6:13].isdigit():
        return int(name[6:13])
    return MAX_ITER


# Deterministic settings: train.seed=0 (DeterministicTrainingSampler + per-step re-seeding from
# (seed, iteration, rank)), num_workers=0, one thread, no random augmentation, a checkpoint every
# iteration, train.deterministic=True (torch.use_deterministic_algorithms). Evaluation is off.
OPTS = ["train.checkpointer.period=1", "train.checkpointer.max_to_keep=2", "train.eval_period=-1",
        "+train.deterministic=True"]

# Runs train_net.py's command (afa_d2.train_net) in this process after patching one function to
# SIGKILL the process at a fixed point: right after checkpoint model_<k> is written and tagged
# ("after_checkpoint"), or in iteration k's optimizer step, after its forward and backward ("in_step", so the last
# checkpoint is k - 1 and the step's work is lost).
KILL_AT = textwrap.dedent(
    """
    import os, signal, sys
    where, k = sys.argv[1], int(sys.argv[2])
    sys.path.insert(0, os.getcwd())  # the checkout's afa_d2, as train_net.py gets it (run from the repository)
    import afa_d2  # noqa
    import torch
    from afa_d2.engine.checkpoint import AtomicCheckpointer
    from afa_d2.train_net import parse_args, run

    def die():
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "after_checkpoint":
        real_save = AtomicCheckpointer.save

        def save(self, name, **kwargs):
            real_save(self, name, **kwargs)
            if name == "model_{:07d}".format(k):
                die()

        AtomicCheckpointer.save = save
    else:
        real_step, steps = torch.optim.AdamW.step, []

        def step(self, *args, **kwargs):
            steps.append(1)
            if len(steps) == k + 1:  # iteration k (iterations count from 0)
                die()
            return real_step(self, *args, **kwargs)

        torch.optim.AdamW.step = step
    sys.exit(run(parse_args(sys.argv[3:])))
    """
)


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory):
    """The uninterrupted run both kill points are compared with (trained once)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = str(tmp / "out")
    cfg = fx.write_config(str(tmp / "ref.py"), "mask_rcnn", data_root, out, max_iter=MAX_ITER)
    ref = fx.run_train_net(cfg, *OPTS)
    assert ref.returncode == 0, ref.stderr[-4000:]
    return out


@pytest.mark.parametrize("where,k,last_saved", [("after_checkpoint", 2, 2), ("in_step", 6, 5)])
def test_sigkill_then_resume_equals_uninterrupted_run(where, k, last_saved, data_root, reference_run, tmp_path):
    """Mask R-CNN (random RPN/ROI sampling inside) killed with SIGKILL, resumed: same weights."""
    ref_out, cut_out = reference_run, str(tmp_path / "interrupted")
    cut_cfg = fx.write_config(str(tmp_path / "cut.py"), "mask_rcnn", data_root, cut_out, max_iter=MAX_ITER)

    script = tmp_path / "kill_at.py"
    script.write_text(KILL_AT)
    cmd = [sys.executable, str(script), where, str(k), "--config-file", cut_cfg, *OPTS]
    proc = subprocess.run(cmd, cwd=fx.REPO, env=fx.train_net_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=540)
    assert proc.returncode == -signal.SIGKILL, "run was not killed {} {} (rc={}):\n{}".format(
        where, k, proc.returncode, proc.stderr[-3000:])
    assert _last_checkpoint_iter(cut_out) == last_saved, (where, k, os.listdir(cut_out))
    assert not os.path.exists(os.path.join(cut_out, "model_final.pth"))

    resumed = fx.run_train_net(cut_cfg, "--resume", *OPTS)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = resumed.stdout + resumed.stderr
    assert "Starting training from iteration {}".format(last_saved + 1) in log, (where, k, log[-3000:])

    for out in (ref_out, cut_out):
        ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
        assert ckpt["iteration"] == MAX_ITER - 1
    a = fx.load_model_state(os.path.join(ref_out, "model_final.pth"))
    b = fx.load_model_state(os.path.join(cut_out, "model_final.pth"))
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, "killed {} {}, resumed from {}: {} tensors differ, e.g. {}: max |diff| {:.3g}".format(
        where, k, last_saved, len(different), different[0], (a[different[0]] - b[different[0]]).abs().max().item())
    # the lr after the resume point is the reference's, iteration by iteration (losses in
    # metrics.json are medians over a 20-iteration window, which a resumed run restarts)
    ref_lr = {m["iteration"]: m["lr"] for m in fx.read_metrics(ref_out) if "lr" in m}
    cut_lr = {m["iteration"]: m["lr"] for m in fx.read_metrics(cut_out) if "lr" in m}
    resumed_iters = range(last_saved + 1, MAX_ITER)
    assert [cut_lr[it] for it in resumed_iters] == [ref_lr[it] for it in resumed_iters]


KILL_DURING_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    import afa_d2  # noqa
    import torch
    from afa_d2 import storage
    from afa_d2.engine import checkpoint as ck

    out, what = sys.argv[1], sys.argv[2]
    model = torch.nn.Linear(64, 64)
    c = ck.AtomicCheckpointer(model, out)
    c.save("model_a")                       # a complete checkpoint, tagged
    real_save = torch.save

    def dying_save(obj, f, *a, **k):        # write half of the bytes, then SIGKILL
        import io
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def dying_text(text, path):             # the tag write dies half-way
        tmp = storage._tmp_name(path)
        with open(tmp, "wb") as f:
            f.write(text.encode()[:3])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if what == "checkpoint":
        ck.torch.save = dying_save
    else:
        ck.atomic_write_text = dying_text
    with torch.no_grad():
        model.weight.add_(1.0)
    c.save("model_b")
    print("not killed")
    """
)


@pytest.mark.parametrize("what", ["checkpoint", "tag"])
def test_kill_during_checkpoint_write_keeps_last_checkpoint_loadable(what, tmp_path):
    out = str(tmp_path / "out")
    script = tmp_path / "die.py"
    script.write_text(KILL_DURING_WRITE)
    proc = subprocess.run([sys.executable, str(script), out, what], cwd=fx.REPO, env=fx.train_net_env(),
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    with open(os.path.join(out, "last_checkpoint")) as f:
        tag = f.read()
    assert tag == "model_a.pth", "last_checkpoint reads {!r} after a kill during the {} write".format(tag, what)
    ckpt = torch.load(os.path.join(out, "model_a.pth"), map_location="cpu", weights_only=True)
    assert ckpt["model"]["weight"].shape == (64, 64)
    if what == "checkpoint":
        assert not os.path.exists(os.path.join(out, "model_b.pth"))  # only a hidden temp file, partial
        leftovers = [n for n in os.listdir(out) if n.startswith(".model_b.pth.tmp-")]
        assert len(leftovers) == 1
    else:  # the checkpoint itself was complete; the tag kept its old value
        b = torch.load(os.path.join(out, "model_b.pth"), map_location="cpu", weights_only=True)
        assert torch.equal(b["model"]["weight"], ckpt["model"]["weight"] + 1.0)

    # and a resume-style load through the checkpointer works
    from afa_d2.engine.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(64, 64)
    c = AtomicCheckpointer(model, out)
    assert c.has_checkpoint() and c.get_checkpoint_file() == os.path.join(out, "model_a.pth")
    c.resume_or_load("", resume=True)
    assert torch.equal(model.weight.detach(), ckpt["model"]["weight"])
    c.save("model_b")  # the next save of that name cleans its stale temp file
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
