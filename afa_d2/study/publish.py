"""Where a finished study's results are committed: ``docs/studies/<name>/`` (``study.json``, ``study.md``,
``study.png``), its table in ``configs/README.md`` and its sentences in ``README.md``, each between the
markers ``<!-- study:<name> -->`` and ``<!-- /study:<name> -->``."""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional

from .report import markdown, replace_between_markers, sentences

__all__ = ["publish"]


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def publish(output_dir: str, repo: Optional[str] = None) -> List[str]:
    """Copy the study's files into the repository and write its table and sentences between the markers.

    Returns:
        list[str]: the files written.
    """
    from afa_d2.storage import atomic_write_text

    repo = repo or _repo_root()
    with open(os.path.join(output_dir, "study.json")) as f:
        study = json.load(f)
    name = study["design"]["name"]
    dest = os.path.join(repo, "docs", "studies", name)
    os.makedirs(dest, exist_ok=True)
    written = []
    for f in ("study.json", "study.md", "study.png"):
        src = os.path.join(output_dir, f)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(dest, f))
            written.append(os.path.join(dest, f))
    figure = "../docs/studies/{}/study.png".format(name)
    table = markdown(study) + "\n![{} study]({})\n".format(name, figure)
    said = "\n".join("- " + s for s in sentences(study)) or "- no finished pairs yet"
    for path, body in ((os.path.join(repo, "configs", "README.md"), table),
                       (os.path.join(repo, "README.md"), said)):
        with open(path) as f:
            text = f.read()
        atomic_write_text(replace_between_markers(text, name, body, where=path), path)
        written.append(path)
    return written
