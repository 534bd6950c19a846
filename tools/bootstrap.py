#!/usr/bin/env python3
"""Set up afa_d2's environment from nothing: a virtual environment, PyTorch, the
package with its dependencies, and detectron2.

Run by ``make setup`` (and so by ``make demo`` and ``make test``); safe to run again:
every step that is already done is skipped, so a second run takes seconds.

detectron2 is not on PyPI. The order of preference:

1. An importable detectron2 with its compiled extension (``detectron2._C``), i.e. an
   official build from source, is used untouched.
2. Otherwise the registry copy of detectron2 v0.6 is installed: the ``pb1-detectron2==0.6``
   sdist is fetched with pip (or taken from ``$AFA_D2_DETECTRON2_SDIST``), its sha256 is
   checked, and its Python package is installed *without* the C++ extension (the sdist
   lacks ``detectron2/layers/csrc``, so its own build cannot succeed). What the extension
   would provide is handled at run time by :mod:`afa_d2.compat`.

``--detectron2-source SRC`` (``make test-official``) asks for an official build instead of
the registry copy: unless the environment has one already, ``pip install --no-build-isolation
SRC`` builds it from source (a git URL or a local source folder; needs a C++ compiler and the
Python headers), and the set-up fails if what was built has no extension.

This file uses the standard library only, and runs on old Pythons far enough to say which
version is needed.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap

MIN_PYTHON = (3, 10)

DETECTRON2_SDIST = "pb1-detectron2==0.6"
DETECTRON2_SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
DETECTRON2_SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# The version the registry copy is installed as: PEP 440 local label says what it is.
REGISTRY_VERSION = "0.6+pypi.noext"

# A range, not a pin: a user keeps their own (CUDA) build when it falls inside it.
DEFAULT_TORCH_SPEC = "torch>=2.1,<3 torchvision>=0.16,<1"

# What installing PyTorch needs free where the venv lives: the default x86_64 wheels are
# CUDA builds, about 5.6 GB (6.0 GB for the whole venv). Set AFA_D2_MIN_FREE_GB (0 turns the
# check off), e.g. for a CPU build chosen through AFA_D2_TORCH_SPEC.
DEFAULT_MIN_FREE_GB = 6.5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BootstrapError(RuntimeError):
    """A set-up step failed; the message says which and what to do."""


def check_python(version_info=None):
    version_info = tuple(version_info or sys.version_info)[:3]
    if version_info[:2] < MIN_PYTHON:
        raise BootstrapError(
            "afa_d2 needs Python >= {}.{}, but this is Python {} ({}). "
            "Run with a newer interpreter, e.g. `make setup PYTHON=python3.11`.".format(
                MIN_PYTHON[0], MIN_PYTHON[1], ".".join(map(str, version_info)), sys.executable
            )
        )


def log(msg):
    print("[afa_d2 setup] " + msg, flush=True)


def run(cmd, what, env=None):
    """Run ``cmd``; on failure raise a BootstrapError naming ``what`` with pip's last lines."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(
            line for line in proc.stdout.splitlines()[-25:] if "is ignored: it is neither" not in line
        )
        raise BootstrapError("{} failed (exit {}):\n  $ {}\n{}".format(
            what, proc.returncode, " ".join(cmd), textwrap.indent(tail, "    ")))
    return proc.stdout


def venv_python(venv):
    return os.path.join(venv, "bin", "python")


def ensure_venv(venv):
    py = venv_python(venv)
    if os.path.exists(py):
        return py
    log("creating virtual environment " + venv)
    run([sys.executable, "-m", "venv", venv], "creating the virtual environment " + venv)
    return py


def probe(py, code):
    """True when ``code`` runs without error in the environment of ``py``."""
    return subprocess.run([py, "-c", code], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def pip(py, *args, what):
    return run([py, "-m", "pip", "--disable-pip-version-check", *args], what)


def check_free_space(path, free_bytes=None):
    """Refuse to start an install that cannot fit: pip's own "No space left on device"
    comes minutes in, half-way through the wheels, and does not say how much is needed."""
    raw = os.environ.get("AFA_D2_MIN_FREE_GB", str(DEFAULT_MIN_FREE_GB))
    try:
        need_gb = float(raw)
    except ValueError:
        raise BootstrapError("AFA_D2_MIN_FREE_GB={!r} is not a number of GB "
                             "(expected e.g. 6.5, or 0 to skip the check)".format(raw)) from None
    if need_gb <= 0:
        return
    if free_bytes is None:
        free_bytes = shutil.disk_usage(path).free
    if free_bytes < need_gb * 1e9:
        raise BootstrapError(
            "installing PyTorch needs about {:.1f} GB free in {}, but {:.1f} GB is free. "
            "Free some space (e.g. old clones' .venv folders), put the venv elsewhere with "
            "`make setup VENV=/big/disk/venv`, or set AFA_D2_MIN_FREE_GB to a smaller figure "
            "for a smaller build (AFA_D2_TORCH_SPEC).".format(need_gb, path, free_bytes / 1e9))


def ensure_torch(py):
    if probe(py, "import torch, torchvision"):
        return
    check_free_space(os.path.dirname(os.path.dirname(py)))
    spec = os.environ.get("AFA_D2_TORCH_SPEC", DEFAULT_TORCH_SPEC).split()
    log("installing " + " ".join(spec) + " (set AFA_D2_TORCH_SPEC to choose another build)")
    pip(py, "install", "-q", *spec, what="installing PyTorch (" + " ".join(spec) + ")")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sdist(path, expected=DETECTRON2_SDIST_SHA256):
    actual = sha256_of(path)
    if actual != expected:
        raise BootstrapError(
            "the detectron2 sdist {} has sha256 {}, but {} expects sha256 {}. "
            "It is not the reviewed pb1-detectron2 0.6 release: delete it and run again, "
            "or install official detectron2 from source (see README.md).".format(
                path, actual, DETECTRON2_SDIST, expected)
        )


def fetch_sdist(py, cache_dir):
    """Return the path of the verified ``pb1-detectron2`` sdist, fetching it with pip if needed."""
    local = os.environ.get("AFA_D2_DETECTRON2_SDIST")
    if local:
        if not os.path.isfile(local):
            raise BootstrapError("AFA_D2_DETECTRON2_SDIST={} is not a file".format(local))
        verify_sdist(local)
        return local
    path = os.path.join(cache_dir, DETECTRON2_SDIST_FILE)
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        log("fetching {} from the package index".format(DETECTRON2_SDIST))
        # pip checks the hash on download, before it runs anything from the sdist (reading
        # its metadata runs its setup.py, which imports torch: hence no build isolation).
        requirement = os.path.join(cache_dir, "detectron2-requirement.txt")
        with open(requirement, "w") as f:
            f.write("{} --hash=sha256:{}\n".format(DETECTRON2_SDIST, DETECTRON2_SDIST_SHA256))
        try:
            pip(py, "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                "-d", cache_dir, "-r", requirement,
                what="fetching {} (the detectron2 v0.6 sources) from the package index".format(
                    DETECTRON2_SDIST))
        except BootstrapError as e:
            if "DO NOT MATCH THE HASHES" in str(e):
                raise BootstrapError(
                    "the package index served a {} whose sha256 differs from the expected "
                    "sha256 {}; refusing to install it.\n{}".format(
                        DETECTRON2_SDIST, DETECTRON2_SDIST_SHA256, e)) from None
            raise BootstrapError(
                "{}\nCould not fetch {}: is the package index reachable (pip config list)? "
                "Alternatively put the file somewhere and set AFA_D2_DETECTRON2_SDIST=/path/to/{}."
                .format(e, DETECTRON2_SDIST, DETECTRON2_SDIST_FILE)) from None
    verify_sdist(path)
    return path


_SETUP_PY = '''\
# Generated by afa_d2's tools/bootstrap.py: the Python package of detectron2 v0.6 from the
# pb1-detectron2 sdist, without the C++ extension that the sdist lacks.
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="{version}",
    description="detectron2 v0.6 (Python sources of the pb1-detectron2 sdist, no C++ extension)",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    include_package_data=False,
)
'''


def prepare_registry_source(sdist, dest):
    """Lay out an installable source tree in ``dest``: the sdist's ``detectron2/`` package
    and a generated setup.py without the C++ extension."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.split("/")[1:2] == ["detectron2"]]
        if not members:
            raise BootstrapError("{} holds no detectron2/ package".format(sdist))
        for m in members:
            rel = m.name.split("/", 1)[1]  # drop the sdist's top folder
            # Refuse '..' in member names (tarfile's extraction filters are 3.12+).
            if ".." in rel.split("/"):
                raise BootstrapError("unsafe path {!r} in {}".format(m.name, sdist))
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    with open(os.path.join(dest, "setup.py"), "w") as f:
        f.write(_SETUP_PY.format(version=REGISTRY_VERSION))


def install_registry_detectron2(py, sdist):
    log("installing detectron2 v0.6 (registry copy, no C++ extension) from " + sdist)
    with tempfile.TemporaryDirectory(prefix="afa_d2_detectron2_") as tmp:
        prepare_registry_source(sdist, tmp)
        pip(py, "install", "-q", "--no-deps", "--no-build-isolation", tmp,
            what="installing the detectron2 package")


DETECTRON2_STATE = """
import importlib.util, sys
spec = importlib.util.find_spec("detectron2")
if spec is None:
    print("missing")
elif importlib.util.find_spec("detectron2._C") is not None:
    print("official")
else:
    from importlib.metadata import version, PackageNotFoundError
    try:
        v = version("detectron2")
    except PackageNotFoundError:
        v = ""
    print("registry" if v == "%s" else "other:" + v)
""" % REGISTRY_VERSION


def detectron2_state(py):
    out = subprocess.run([py, "-c", DETECTRON2_STATE], stdout=subprocess.PIPE, text=True)
    return out.stdout.strip() or "missing"


def ensure_detectron2(py, cache_dir):
    state = detectron2_state(py)
    if state == "official":
        log("using the installed detectron2 with its compiled extension (official build)")
        return
    if state == "registry":
        return
    if state.startswith("other"):
        log("replacing a detectron2 without its compiled extension ({})".format(state))
    install_registry_detectron2(py, fetch_sdist(py, cache_dir))


def ensure_official_detectron2(py, source):
    """An official detectron2 (with its compiled extension) in ``py``'s environment: kept if
    there, else built from ``source`` (a git URL or a source folder) with pip."""
    if detectron2_state(py) == "official":
        log("using the installed detectron2 with its compiled extension (official build)")
        return
    log("building official detectron2 from {} (a few minutes: its C++ extension compiles)".format(source))
    pip(py, "install", "-q", "--no-build-isolation", source,
        what="building detectron2 from {} (needs a C++ compiler and the Python headers)".format(source))
    state = detectron2_state(py)
    if state != "official":
        raise BootstrapError(
            "detectron2 built from {} has no compiled extension (detectron2._C; found: {}); "
            "an official build is what --detectron2-source asks for".format(source, state))


def stamp_key(extras, detectron2_source=""):
    """What a finished set-up depends on: a change to any of it runs the steps again."""
    parts = [sha256_of(os.path.join(ROOT, "pyproject.toml")), sha256_of(os.path.abspath(__file__)),
             ",".join(sorted(extras)), os.environ.get("AFA_D2_TORCH_SPEC", ""), detectron2_source]
    return " ".join(parts)


def ensure_project(py, extras):
    target = ROOT + ("[" + ",".join(sorted(extras)) + "]" if extras else "")
    log("installing afa_d2 and its dependencies ({})".format(target))
    pip(py, "install", "-q", "-e", target, what="installing afa_d2 " + target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=os.path.join(ROOT, ".venv"))
    parser.add_argument("--extras", default="test", help="comma-separated extras of afa_d2")
    parser.add_argument("--cache-dir", default=os.path.join(ROOT, ".cache", "bootstrap"))
    parser.add_argument("--detectron2-source", default="",
                        help="build official detectron2 from this git URL or source folder "
                             "(unless the environment has an official build already)")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    stamp = os.path.join(args.venv, ".afa_d2-setup-done")
    key = stamp_key(extras, args.detectron2_source)
    try:
        check_python()
        py = venv_python(os.path.abspath(args.venv))
        if os.path.exists(py) and os.path.exists(stamp) and open(stamp).read() == key:
            return 0  # set up already, by this bootstrap, for this pyproject.toml
        py = ensure_venv(os.path.abspath(args.venv))
        ensure_torch(py)
        # detectron2 before afa_d2: afa_d2's editable install then finds it in place.
        if args.detectron2_source:
            ensure_official_detectron2(py, args.detectron2_source)
        else:
            ensure_detectron2(py, args.cache_dir)
        ensure_project(py, extras)
        with open(stamp, "w") as f:
            f.write(key)
    except BootstrapError as e:
        print("[afa_d2 setup] ERROR: {}".format(e), file=sys.stderr)
        return 1
    log("environment ready: {}".format(py))
    return 0


if __name__ == "__main__":
    sys.exit(main())
