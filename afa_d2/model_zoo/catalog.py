"""The shipped configs by name: ``get_config_file("shapes/mask_rcnn_R_18_msca.py")``.

Names are paths relative to the project's ``configs/`` folder, as in ``detectron2.model_zoo``
("COCO/cascade_mask_rcnn_R_50_mssa_1x.py", "shapes/mask_rcnn_R_18_msca.yaml"). The folder travels
with the package: ``afa_d2/model_zoo/configs`` is a link to the checkout's ``configs/`` (what an
editable install and a checkout use), and a built wheel holds the files themselves there
(``pyproject.toml``'s package data), so the same names work from an installed package.
"""
from __future__ import annotations

import difflib
import os
from typing import List

__all__ = ["UnknownConfigError", "configs_root", "get_config_file", "list_configs"]

CONFIG_SUFFIXES = (".py", ".yaml", ".yml")


class UnknownConfigError(FileNotFoundError):
    """A config name that is not among the shipped configs (the message lists the closest)."""


def configs_root() -> str:
    """The folder of the shipped configs: inside the package, else the checkout's ``configs/``."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "configs"), os.path.join(os.path.dirname(os.path.dirname(here)), "configs")):
        if os.path.isdir(os.path.join(candidate, "common")):
            return candidate
    raise FileNotFoundError(
        "afa_d2's configs are not installed (looked in {}): reinstall afa_d2 (pip install .) or run from a "
        "clone".format(os.path.join(here, "configs"))
    )


def list_configs() -> List[str]:
    """Every config name (``.py`` and ``.yaml``, ``common/`` pieces included), sorted."""
    root = configs_root()
    names = []
    for folder, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.endswith(CONFIG_SUFFIXES) and f != "__init__.py":
                names.append(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/"))
    return sorted(names)


def get_config_file(config_path: str) -> str:
    """The file of the shipped config ``config_path`` (e.g. "COCO/mask_rcnn_R_50_mssa_1x.py").

    Raises:
        UnknownConfigError: not a shipped config; one line with the closest names.
    """
    name = str(config_path).replace(os.sep, "/").lstrip("/")
    if name.startswith("configs/"):
        name = name[len("configs/"):]
    path = os.path.join(configs_root(), *name.split("/"))
    if name.endswith(CONFIG_SUFFIXES) and os.path.isfile(path):
        return path
    known = list_configs()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if not close:  # a matching file name in another folder, e.g. "mask_rcnn_R_18_msca.py"
        close = [k for k in known if os.path.basename(k) == os.path.basename(name)][:3]
    raise UnknownConfigError(
        "{!r} is not a config of the afa_d2 model zoo; closest: {} ({} configs under {}; "
        "afa_d2.model_zoo.list_configs() lists them)".format(
            config_path, ", ".join(close) if close else "none", len(known), configs_root())
    )
