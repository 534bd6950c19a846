"""afa_d2.engine.slurm and tools/slurm_train.py (afa_d2.slurm_train): a Slurm job of one task per GPU,
requeued and resumed.

End to end on the CPU with submitit's local executor (the same job as on Slurm, one node, two
tasks on gloo): a job stopped part way by the requeue signal, requeued by submitit and resumed,
against an uninterrupted two-task job. The signal comes at a fixed point (both tasks send it to
themselves in the optimizer step of iteration STOP_AT, the way Slurm signals every task), never
from a timer. The pieces (argument checks, ranks and rendezvous URL from a faked JobEnvironment,
the requeue decision, the sbatch file) are tested without running anything.
"""
import os
import pickle
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import afa_d2  # noqa: F401

import _engine_fixtures as fx

submitit = pytest.importorskip("submitit")

from afa_d2 import slurm_train, train_net  # noqa: E402
from afa_d2.engine import slurm  # noqa: E402

MAX_ITER = 8
STOP_AT = 5  # the iteration in whose optimizer step the requeue signal arrives; the last checkpoint is STOP_AT - 1
OPTS = ["train.checkpointer.period=1", "train.checkpointer.max_to_keep=null", "train.eval_period=-1",
        "+train.deterministic=True"]


# -- the pieces -------------------------------------------------------------------------------------
def _job_env(global_rank, local_rank, node, num_nodes=2, num_tasks=8, job_id="4242",
             hostnames=("gpu-a17", "gpu-b03")):
    return types.SimpleNamespace(global_rank=global_rank, local_rank=local_rank, node=node, num_nodes=num_nodes,
                                 num_tasks=num_tasks, job_id=job_id, hostnames=list(hostnames))


def test_ranks_and_url_from_the_job_environment():
    port = slurm.port_for_job("4242")
    setups = [slurm.distributed_setup(_job_env(g, g % 4, g // 4)) for g in range(8)]
    assert {s.dist_url for s in setups} == {"tcp://gpu-a17:{}".format(port)}  # every task: the first host
    assert [(s.node, s.local_rank, s.global_rank) for s in setups] == [(g // 4, g % 4, g) for g in range(8)]
    assert {(s.world_size, s.tasks_per_node, s.num_nodes) for s in setups} == {(8, 4, 2)}
    assert slurm.distributed_setup(_job_env(5, 1, 1), port=29500).dist_url == "tcp://gpu-a17:29500"

    with pytest.raises(ValueError, match="global rank 1 is local rank 0 on node 1 .* expected global rank 4"):
        slurm.distributed_setup(_job_env(1, 0, 1))  # cyclic distribution
    with pytest.raises(ValueError, match="7 tasks do not spread evenly over 2 nodes"):
        slurm.distributed_setup(_job_env(0, 0, 0, num_tasks=7))
    with pytest.raises(ValueError, match="port 70000 is not a TCP port"):
        slurm.distributed_setup(_job_env(0, 0, 0), port=70000)


def test_port_is_a_stable_function_of_the_job_id():
    low, high = slurm.PORT_RANGE
    ids = ["4242", "4243", "123456_7", "123456_8", "99999999"]
    ports = [slurm.port_for_job(i) for i in ids]
    assert all(low <= p < high for p in ports), ports
    assert len(set(ports)) == len(ports), ports  # neighbouring ids (array tasks) get different ports
    assert ports == [slurm.port_for_job(i) for i in ids]  # a requeued run finds the same port
    # a fresh interpreter (another task) computes the same port: not python's salted hash()
    out = subprocess.run([sys.executable, "-c", "from afa_d2.engine.slurm import port_for_job as p; print(p('4242'))"],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="123"), timeout=120)
    assert out.stdout.strip().splitlines()[-1] == str(ports[0]), out.stderr[-2000:]


@pytest.mark.parametrize("text,minutes", [("90", 90), ("10:30", 11), ("12:00:00", 720), ("2-0", 2880),
                                          ("1-02:30", 1590), ("3-00:00:00", 4320), ("0:0:1", 1)])
def test_time_limit_formats(text, minutes):
    assert slurm.parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["0", "00:00:00", "1.5", "90m", "-5", "1:2:3:4", ""])
def test_time_limit_nonsense_is_refused(text):
    with pytest.raises(ValueError, match="time limit {!r} is not a positive Slurm time".format(text)):
        slurm.parse_time_limit(text)


@pytest.mark.parametrize("field,value", [("nodes", 0), ("gpus_per_node", -1), ("gpus_per_node", 1.5),
                                         ("time_min", 0), ("max_timeouts", -1), ("cpus_per_task", 0)])
def test_resources_refuse_nonsense_counts(field, value):
    with pytest.raises(ValueError, match="{}={!r}: expected an integer".format(field, value)):
        slurm.SlurmResources(**{field: value})
    with pytest.raises(ValueError, match="signal_delay_s=600 is not shorter than the time limit"):
        slurm.SlurmResources(time_min=10, signal_delay_s=600)


def test_sbatch_file_asks_for_one_task_per_gpu(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # submitit's Slurm executor wants `srun` on PATH; nothing is submitted here
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    resources = slurm.SlurmResources(nodes=2, gpus_per_node=8, time_min=4320, partition="learn", job_name="afa_d2-msca",
                                     account="vision", qos="high", constraint="volta32gb", cpus_per_task=10,
                                     mem_gb=400, signal_delay_s=120, max_timeouts=5)
    assert resources.world_size == 16
    executor = slurm.build_executor(str(tmp_path / "%j"), resources, cluster="slurm", python_path=["/src/afa"])
    assert executor._executor.max_num_timeout == 5
    text = executor._executor._make_submission_file_text("CMD", "uid")  # what sbatch would get
    for flag in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--time=4320", "--partition=learn",
                 "--job-name=afa_d2-msca", "--account=vision", "--qos=high", "--constraint=volta32gb",
                 "--cpus-per-task=10", "--mem=400GB", "--signal=USR2@120"):
        assert "#SBATCH " + flag + "\n" in text, (flag, text)
    assert "#SBATCH --requeue\n" in text, text
    assert "export PYTHONPATH=/src/afa\"${PYTHONPATH:+:$PYTHONPATH}\"" in text, text
    with pytest.raises(ValueError, match="nodes must be 1, got 2"):
        slurm.build_executor(str(tmp_path), resources, cluster="local")


def test_requeue_decision(monkeypatch):
    """checkpoint() (what submitit calls on the signal) resubmits the task with --resume; --eval-only
    unchanged; a job restarted by Slurm itself resumes too."""
    import argparse

    args = argparse.Namespace(config_file="/abs/cfg.py", opts=["train.seed=0"], resume=False, eval_only=False,
                              num_gpus=1, num_machines=1, machine_rank=0, dist_url="tcp://127.0.0.1:1")
    task = slurm.TrainingTask(train_net.main, args, dist_port=23456)
    delayed = task.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    again = delayed.function
    assert isinstance(again, slurm.TrainingTask) and again is not task
    assert (again.main_func, again.dist_port, again.args.resume) == (train_net.main, 23456, True)
    assert vars(again.args) == dict(vars(args), resume=True)
    assert args.resume is False  # the running task's arguments are untouched
    assert delayed.args == () and delayed.kwargs == {}
    assert pickle.loads(pickle.dumps(delayed)).function.args.resume is True  # submitit pickles it

    ev = slurm.TrainingTask(train_net.main, argparse.Namespace(**dict(vars(args), eval_only=True)))
    assert ev.checkpoint().function.args.resume is False  # --resume would pick another checkpoint to evaluate

    setup = slurm.distributed_setup(_job_env(5, 1, 1))
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    fresh = task.task_args(setup)
    assert (fresh.num_gpus, fresh.num_machines, fresh.machine_rank, fresh.dist_url, fresh.resume) == (
        4, 2, 1, setup.dist_url, False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert task.task_args(setup).resume is True
    assert ev.task_args(setup).resume is False


def test_requeue_exit_leaves_at_once_with_the_status(tmp_path):
    """The SystemExit submitit raises after requeueing ends the process at once, with its status,
    without unwinding the code it interrupted (no `finally`, no atexit)."""
    script = textwrap.dedent(
        """
        import atexit, os, signal, sys
        from afa_d2.engine import slurm

        def submitit_handler(signum, frame):   # what submitit's local requeue does
            print("requeued", flush=True)
            sys.exit(144)

        signal.signal(signal.SIGUSR2, submitit_handler)
        slurm._exit_at_once_after_requeue(signal.SIGUSR2)
        slurm._exit_at_once_after_requeue(signal.SIGUSR2)  # idempotent: wrapped once
        atexit.register(lambda: print("atexit ran", flush=True))
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            print("not stopped", flush=True)
        finally:
            print("unwound", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 144, proc.stderr[-2000:]
    assert proc.stdout.split() == ["requeued"], proc.stdout


# -- the command line -------------------------------------------------------------------------------
@pytest.fixture
def tiny_cfg(data_root, tmp_path):
    return fx.write_config(str(tmp_path / "cfg.py"), "toy", data_root, str(tmp_path / "out"), total_batch=4)


@pytest.mark.parametrize("extra,message", [
    (["--nodes", "0"], "argument --nodes: '0' is not an integer >= 1"),
    (["--gpus-per-node", "two"], "argument --gpus-per-node: 'two' is not an integer >= 1"),
    (["--time", "90x"], "argument --time: time limit '90x' is not a positive Slurm time"),
    (["--gpus-per-node", "3"], "the total batch 4 does not split over 1 x 3 = 3 processes"),
    (["--num-gpus", "4"], "--num-gpus is train_net.py's launch option; with Slurm use --gpus-per-node"),
    (["--cluster", "local", "--nodes", "2"], "--cluster local runs on this machine: --nodes must be 1, got 2"),
    (["train.seed=1", "--wait"], "Override '--wait' is not of the form key=value"),
])
def test_bad_arguments_are_one_line(extra, message, tiny_cfg, capsys):
    with pytest.raises(SystemExit) as e:
        slurm_train.parse_args(["--config-file", tiny_cfg, "--time", "60", "--cluster", "local", *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("slurm_train.py: error: "), err
    assert message in err, err


def test_unknown_config_and_missing_submitit_are_one_line(tiny_cfg, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        slurm_train.parse_args(["--config-file", "configs/COCO/no_such_config.py", "--time", "60"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--config-file 'configs/COCO/no_such_config.py': no such file" in err, err

    with pytest.raises(SystemExit):  # train_net.py's check: its first line names the key, then suggestions
        slurm_train.parse_args(["--config-file", tiny_cfg, "--time", "60", "train.no_such_key=1"])
    first = capsys.readouterr().err.splitlines()[0]
    assert first == ("slurm_train.py: error: Unknown config key 'train.no_such_key' in override "
                     "'train.no_such_key=1'."), first

    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without submitit sees
    with pytest.raises(SystemExit):
        slurm_train.parse_args(["--config-file", tiny_cfg, "--time", "60"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "submitit is not installed" in err and "pip install 'afa_d2[slurm]'" in err, err

    monkeypatch.delitem(sys.modules, "submitit")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SystemExit):
        slurm_train.parse_args(["--config-file", tiny_cfg, "--time", "60"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbatch, srun not found" in err and "--cluster local" in err, err


def test_parse_args_fills_the_job(tiny_cfg):
    args, resources = slurm_train.parse_args(
        ["--config-file", os.path.relpath(tiny_cfg), "--time", "1-00:00:00", "--gpus-per-node", "2", "--cluster",
         "local", "--partition", "p1", "--resume", "train.seed=3"])
    assert os.path.isabs(args.config_file) and os.path.samefile(args.config_file, tiny_cfg)
    assert args.folder == os.path.join(os.path.dirname(tiny_cfg), "out", "submitit")
    assert (args.resume, args.opts) == (True, ["train.seed=3"])
    assert resources == slurm.SlurmResources(nodes=1, gpus_per_node=2, time_min=1440, partition="p1",
                                             job_name="afa_d2-cfg", signal_delay_s=120, max_timeouts=3)


# -- end to end: two tasks, stopped by the requeue signal, requeued, resumed ---------------------------
def train_then_signal_at_stop(args):
    """``afa_d2.train_net.main``, and in the first run of the job each task sends itself submitit's requeue
    signal in the optimizer step of iteration STOP_AT (after its forward and backward)."""
    if not args.resume:
        real_step, steps = torch.optim.AdamW.step, []

        def step(self, *a, **k):
            steps.append(1)
            if len(steps) == STOP_AT + 1:
                os.kill(os.getpid(), submitit.JobEnvironment._usr_sig())
            return real_step(self, *a, **k)

        torch.optim.AdamW.step = step
    return train_net.main(args)


def _wait(job):
    try:
        return job.results()  # polls until the local controller has ended
    finally:
        if job.state == "RUNNING":  # the test failed while the job runs: stop it and its tasks
            job.cancel()


def _checkpoints(out):
    return sorted(n for n in os.listdir(out) if n.startswith("model_") and n.endswith(".pth"))


@pytest.mark.skipif(sys.platform != "linux", reason="submitit's local executor, gloo")
def test_requeued_two_task_job_equals_uninterrupted_job(data_root, tmp_path, monkeypatch):
    """Mask R-CNN on two tasks (gloo): the job gets the requeue signal in iteration STOP_AT, rank 0
    requeues it through submitit and leaves, the tasks start again with --resume from checkpoint
    STOP_AT - 1, and every checkpoint and the final model, optimizer and scheduler state are
    bit-identical to an uninterrupted two-task job's."""
    if torch.cuda.is_available():
        pytest.skip("the local executor would give the two tasks CUDA devices; this covers gloo")
    for k, v in fx.train_net_env().items():
        if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED"):
            monkeypatch.setenv(k, v)  # the local executor's tasks inherit this environment
    monkeypatch.chdir(fx.REPO)
    outs, jobs = {}, {}
    for name, main in (("reference", None), ("requeued", train_then_signal_at_stop)):
        outs[name] = str(tmp_path / name / "out")
        cfg = fx.write_config(str(tmp_path / (name + ".py")), "mask_rcnn", data_root, outs[name], max_iter=MAX_ITER)
        argv = ["--config-file", cfg, "--cluster", "local", "--gpus-per-node", "2", "--time", "8"]
        if main is None:  # the command itself: submit, wait, report
            assert slurm_train.main(argv + ["--wait", *OPTS]) == 0
            continue
        argv += OPTS
        args, resources = slurm_train.parse_args(argv)
        jobs[name] = slurm.submit(main, args, resources, args.folder, cluster="local",
                                  python_path=[fx.REPO, fx.TESTS_DIR])
        assert _wait(jobs[name]) == [{}, {}]  # both tasks of the requeued run returned do_train's results

    job, out = jobs["requeued"], outs["requeued"]
    # the requeue went through TrainingTask.checkpoint(): the job's pickle now holds the --resume task
    assert job.submission().function.args.resume is True
    log0 = job.stdout() or ""
    task_lines = [line for line in log0.splitlines() if line.startswith("afa_d2: task 0 of 2")]
    assert [line.endswith("resume=False") for line in task_lines] == [True, False], task_lines
    assert "Job requeued on signal SIGUSR2: this task exits now (status 144)" in log0, log0[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    starts = [line.rsplit(" ", 1)[-1] for line in log.splitlines() if "Starting training from iteration" in line]
    assert starts == ["0", str(STOP_AT)], starts  # resumed from checkpoint STOP_AT - 1
    assert "World size: 2" in log

    ref = outs["reference"]
    assert _checkpoints(ref) == _checkpoints(out) == ["model_{:07d}.pth".format(i) for i in range(MAX_ITER)] + [
        "model_final.pth"]
    first = fx.load_model_state(os.path.join(ref, "model_0000000.pth"))
    for name in _checkpoints(ref):
        a = torch.load(os.path.join(ref, name), map_location="cpu", weights_only=True)
        b = torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)
        assert a["iteration"] == b["iteration"]
        different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
        assert not different, "{}: {} tensors differ, e.g. {}".format(name, len(different), different[0])
        sa, sb = a["trainer"]["optimizer"]["state"], b["trainer"]["optimizer"]["state"]  # AdamW's moments
        assert sorted(sa) == sorted(sb) and len(sa) > 0
        assert all(torch.equal(sa[i][s], sb[i][s]) for i in sa for s in sa[i]), name
        assert a["trainer"]["hooks"] == b["trainer"]["hooks"], name  # lr scheduler, data stream seed
    final = fx.load_model_state(os.path.join(out, "model_final.pth"))
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == MAX_ITER - 1
    moved = max((first[k].float() - final[k].float()).abs().max().item() for k in first)
    assert moved > 1e-4, moved  # training moved the weights: the comparison is not between untouched models
    ref_lr = {m["iteration"]: m["lr"] for m in fx.read_metrics(ref) if "lr" in m}
    cut_lr = {m["iteration"]: m["lr"] for m in fx.read_metrics(out) if "lr" in m}
    assert [cut_lr[i] for i in range(STOP_AT, MAX_ITER)] == [ref_lr[i] for i in range(STOP_AT, MAX_ITER)]

