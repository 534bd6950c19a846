"""One error style on the command line (afa_d2.cli): a known error is one line and exit status 2, no
traceback; the commands below printed a full traceback before."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shapes", "mask_rcnn_R_18_sum.py")


def _run(args, tmp_path):
    env = dict(os.environ, AFA_D2_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=600)


def _error_lines(stderr, prog):
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith(prog + ": error: ")]


@pytest.fixture(params=["not a checkpoint\n", "hello\n"], ids=["text", "text-read-as-memo-opcodes"])
def text_file(tmp_path, request):
    """A text file named like a checkpoint. "hello" starts with pickle opcodes that look up a memo entry the file
    never made, which the unpickler reports as a bare KeyError (once printed as "error: 101")."""
    path = tmp_path / "notes.pth"
    path.write_text(request.param)
    return str(path)


def test_train_net_bad_config_value_is_one_line(tmp_path):
    r = _run([os.path.join(REPO, "train_net.py"), "--config-file", CONFIG, "model.backbone.aggregation=foo"], tmp_path)
    assert r.returncode == 2
    (line,) = _error_lines(r.stderr, "train_net.py")
    assert "unknown aggregation 'foo'; valid: ['sum', 'concat', 'mssa', 'msca']" in line


def test_train_net_eval_only_on_a_text_file_is_one_line(tmp_path, text_file):
    r = _run([os.path.join(REPO, "train_net.py"), "--config-file", CONFIG, "--eval-only",
              "train.init_checkpoint=" + text_file], tmp_path)
    assert r.returncode == 2
    (line,) = _error_lines(r.stderr, "train_net.py")
    assert text_file in line and "not a readable torch checkpoint" in line


def test_publish_model_on_a_text_file_is_one_line(tmp_path, text_file):
    r = _run([os.path.join(REPO, "tools", "publish_model.py"), text_file, "--zoo-dir", str(tmp_path / "zoo")],
             tmp_path)
    assert r.returncode == 2
    (line,) = _error_lines(r.stderr, "publish_model.py")
    assert text_file in line and "not a readable torch checkpoint" in line
    assert not os.path.isdir(tmp_path / "zoo") or not os.listdir(tmp_path / "zoo")


def test_a_bug_keeps_its_traceback():
    from afa_d2.cli import run_command

    def broken(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_command("x", broken)
    assert run_command("x", lambda argv: None) == 0
