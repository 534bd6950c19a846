"""Shared pytest set-up: afa_d2 first (it applies the detectron2 compat patches)."""
import os

import pytest

import afa_d2  # noqa: F401  (before any detectron2 import)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO_ROOT
