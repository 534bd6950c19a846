"""tools/bootstrap.py: the set-up from nothing, and its refusals on bad input."""
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from afa_d2 import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bootstrap", os.path.join(ROOT, "tools", "bootstrap.py"))
bootstrap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bootstrap)


def _make_sdist(path, files):
    """A .tar.gz laid out like an sdist: ``files`` maps member names to text."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def offline_pip(monkeypatch):
    """pip with no configuration, no local wheels, and an index URL given by the test."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "AFA_D2_DETECTRON2_SDIST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    return monkeypatch


def test_old_python_is_refused_naming_the_version_needed():
    with pytest.raises(bootstrap.BootstrapError) as e:
        bootstrap.check_python((3, 8, 10))
    assert "Python >= 3.10" in str(e.value) and "3.8.10" in str(e.value)
    bootstrap.check_python((3, 10, 0))  # the minimum itself passes


def test_main_reports_old_python_and_exits_nonzero(monkeypatch, capsys):
    real_check = bootstrap.check_python
    monkeypatch.setattr(bootstrap, "check_python", lambda: real_check((3, 9, 1)))
    assert bootstrap.main(["--venv", "/nonexistent/never-created"]) == 1
    err = capsys.readouterr().err
    assert "needs Python >= 3.10" in err and "3.9.1" in err
    assert not os.path.exists("/nonexistent/never-created")


def test_tampered_sdist_is_refused_naming_the_expected_hash(tmp_path, monkeypatch):
    fake = _make_sdist(tmp_path / bootstrap.DETECTRON2_SDIST_FILE, {"pb1-detectron2-0.6/x.py": "evil"})
    monkeypatch.setenv("AFA_D2_DETECTRON2_SDIST", str(fake))
    with pytest.raises(bootstrap.BootstrapError) as e:
        bootstrap.fetch_sdist(sys.executable, str(tmp_path / "cache"))
    message = str(e.value)
    assert bootstrap.DETECTRON2_SDIST_SHA256 in message
    assert bootstrap.sha256_of(fake) in message


def test_a_cached_tampered_sdist_is_refused_too(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _make_sdist(cache / bootstrap.DETECTRON2_SDIST_FILE, {"pb1-detectron2-0.6/x.py": "evil"})
    with pytest.raises(bootstrap.BootstrapError, match=bootstrap.DETECTRON2_SDIST_SHA256):
        bootstrap.fetch_sdist(sys.executable, str(cache))


def test_unreachable_registry_names_what_could_not_be_fetched(tmp_path, offline_pip):
    offline_pip.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    with pytest.raises(bootstrap.BootstrapError) as e:
        bootstrap.fetch_sdist(sys.executable, str(tmp_path / "cache"))
    message = str(e.value)
    assert "Could not fetch pb1-detectron2==0.6" in message
    assert "AFA_D2_DETECTRON2_SDIST" in message  # and says how to do without the registry


def test_registry_serving_a_different_file_is_refused_before_it_runs(tmp_path, offline_pip):
    # A PEP 503 index on disk serving a sdist of the right name with the wrong content.
    page = tmp_path / "simple" / "pb1-detectron2"
    page.mkdir(parents=True)
    _make_sdist(page / bootstrap.DETECTRON2_SDIST_FILE,
                {"pb1-detectron2-0.6/setup.py": "raise SystemExit('setup.py must never run')\n"})
    (page / "index.html").write_text(
        '<html><body><a href="{0}">{0}</a></body></html>'.format(bootstrap.DETECTRON2_SDIST_FILE))
    offline_pip.setenv("PIP_INDEX_URL", (tmp_path / "simple").as_uri())
    with pytest.raises(bootstrap.BootstrapError) as e:
        bootstrap.fetch_sdist(sys.executable, str(tmp_path / "cache"))
    message = str(e.value)
    assert "expected sha256 " + bootstrap.DETECTRON2_SDIST_SHA256 in message
    assert "setup.py must never run" not in message


def test_registry_source_tree_installs_without_the_extension(tmp_path):
    sdist = _make_sdist(tmp_path / "s.tar.gz", {
        "pb1-detectron2-0.6/setup.py": "raise SystemExit('the sdist setup.py is not used')\n",
        "pb1-detectron2-0.6/detectron2/__init__.py": "__version__ = '0.6'\n",
        "pb1-detectron2-0.6/detectron2/layers/__init__.py": "",
        "pb1-detectron2-0.6/detectron2/model_zoo/__init__.py": "",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/common/models/mask_rcnn_fpn.py": "model = 1\n",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/Base-RCNN-FPN.yaml": "MODEL: {}\n",
        "pb1-detectron2-0.6/tools/train_net.py": "",
    })
    src = tmp_path / "src"
    src.mkdir()
    bootstrap.prepare_registry_source(str(sdist), str(src))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheels"), str(src)], check=True)
    wheels = os.listdir(tmp_path / "wheels")
    assert wheels == ["detectron2-0.6+pypi.noext-py3-none-any.whl"]
    names = zipfile.ZipFile(tmp_path / "wheels" / wheels[0]).namelist()
    assert "detectron2/__init__.py" in names
    assert "detectron2/model_zoo/configs/common/models/mask_rcnn_fpn.py" in names
    assert "detectron2/model_zoo/configs/Base-RCNN-FPN.yaml" in names
    assert not any(n.startswith("tools/") or "_C" in n.split("/")[-1] for n in names)


def test_unsafe_member_path_is_refused(tmp_path):
    sdist = _make_sdist(tmp_path / "s.tar.gz", {"pb1-detectron2-0.6/detectron2/../../evil.py": "x"})
    with pytest.raises(bootstrap.BootstrapError, match="unsafe path"):
        bootstrap.prepare_registry_source(str(sdist), str(tmp_path / "src"))
    assert not (tmp_path / "evil.py").exists()


def test_installed_detectron2_is_recognised():
    state = bootstrap.detectron2_state(sys.executable)
    assert state == ("official" if compat.has_extension() else "registry")


def test_too_little_disk_is_refused_before_pip_naming_need_and_free(tmp_path, monkeypatch):
    monkeypatch.delenv("AFA_D2_MIN_FREE_GB", raising=False)
    with pytest.raises(bootstrap.BootstrapError) as e:
        bootstrap.check_free_space(str(tmp_path), free_bytes=int(3.4e9))
    msg = str(e.value)
    assert "6.5 GB free in {}".format(tmp_path) in msg and "3.4 GB is free" in msg
    assert "AFA_D2_MIN_FREE_GB" in msg
    bootstrap.check_free_space(str(tmp_path), free_bytes=int(6.6e9))  # enough passes
    monkeypatch.setenv("AFA_D2_MIN_FREE_GB", "0")  # 0 turns the check off
    bootstrap.check_free_space(str(tmp_path), free_bytes=0)
    monkeypatch.setenv("AFA_D2_MIN_FREE_GB", "1.5")
    with pytest.raises(bootstrap.BootstrapError, match="1.5 GB free"):
        bootstrap.check_free_space(str(tmp_path), free_bytes=int(1e9))


def test_min_free_setting_that_is_not_a_number_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_D2_MIN_FREE_GB", "lots")
    with pytest.raises(bootstrap.BootstrapError, match="AFA_D2_MIN_FREE_GB='lots' is not a number"):
        bootstrap.check_free_space(str(tmp_path), free_bytes=int(1e12))


def test_main_refuses_a_full_disk_before_installing_torch(tmp_path, monkeypatch, capsys):
    """The whole path: a venv without torch on a 'full' disk stops with exit 1 and the
    free-space message, and pip is never asked to install anything."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(bootstrap, "probe", lambda py, code: False)
    monkeypatch.setattr(bootstrap.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**8})())
    monkeypatch.setattr(bootstrap, "pip", lambda *a, **k: pytest.fail("pip ran on a full disk"))
    monkeypatch.delenv("AFA_D2_MIN_FREE_GB", raising=False)
    assert bootstrap.main(["--venv", str(venv), "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "0.1 GB is free" in err and str(venv) in err


def _fake_venv(tmp_path, monkeypatch, states, calls):
    """A venv whose torch is there and whose detectron2 state goes through ``states``; pip and
    the project install are recorded in ``calls``, never run."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(bootstrap, "probe", lambda py, code: True)
    monkeypatch.setattr(bootstrap, "detectron2_state", lambda py: states.pop(0) if len(states) > 1 else states[0])
    monkeypatch.setattr(bootstrap, "pip", lambda py, *args, what: calls.append(("pip",) + args))
    monkeypatch.setattr(bootstrap, "ensure_project", lambda py, extras: calls.append(("project",)))
    monkeypatch.setattr(bootstrap, "ensure_detectron2", lambda py, cache: calls.append(("registry",)))
    return venv


def test_detectron2_source_builds_official_detectron2_instead_of_the_registry_copy(tmp_path, monkeypatch):
    calls = []
    venv = _fake_venv(tmp_path, monkeypatch, ["registry", "official"], calls)
    assert bootstrap.main(["--venv", str(venv), "--detectron2-source", "/src/detectron2"]) == 0
    assert calls == [("pip", "install", "-q", "--no-build-isolation", "/src/detectron2"), ("project",)]
    # set up: a second run does nothing; another source runs the steps again (the stamp names it)
    calls.clear()
    assert bootstrap.main(["--venv", str(venv), "--detectron2-source", "/src/detectron2"]) == 0
    assert calls == []
    assert bootstrap.main(["--venv", str(venv), "--detectron2-source", "/src/other"]) == 0
    assert calls == [("project",)]  # the environment has an official build now: kept


def test_detectron2_source_that_builds_no_extension_is_an_error(tmp_path, monkeypatch, capsys):
    calls = []
    venv = _fake_venv(tmp_path, monkeypatch, ["missing", "registry"], calls)
    assert bootstrap.main(["--venv", str(venv), "--detectron2-source", "/src/detectron2"]) == 1
    err = capsys.readouterr().err
    assert "detectron2 built from /src/detectron2 has no compiled extension" in err and "found: registry" in err
    assert ("project",) not in calls and not (venv / ".afa_d2-setup-done").exists()
