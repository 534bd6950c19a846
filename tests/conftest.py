"""Shared pytest set-up: afa_d2 first (it applies the detectron2 compat patches)."""
import os
import tempfile

import pytest

import afa_d2  # noqa: F401  (before any detectron2 import)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The CPU kernel choices the tests make (afa_d2.execution.kernels probes them on a host busy with tests)
# go to a folder of this run, also for the commands tests start as subprocesses, never to the user's
# $AFA_D2_CACHE/kernels, where they would steer the user's own runs.
_KERNEL_CACHE = tempfile.TemporaryDirectory(prefix="afa_d2_test_kernels_")
os.environ["AFA_D2_KERNEL_CACHE"] = _KERNEL_CACHE.name


@pytest.fixture
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A tiny two-class dataset (16 train / 4 val images, ``_engine_fixtures``) that the
    train_net.py and fault tests train on; read-only."""
    import _engine_fixtures as fx

    root = str(tmp_path_factory.mktemp("tiny_data"))
    fx.tiny_dataset_dicts(os.path.join(root, "train"), 16)
    fx.tiny_dataset_dicts(os.path.join(root, "val"), 4, seed=1)
    return root
