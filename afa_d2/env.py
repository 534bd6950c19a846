"""Print what afa_d2 runs on: ``python -m afa_d2.env`` (or ``afa-d2-env``).

Paste its output into bug reports: versions of Python, PyTorch, torchvision, detectron2
(and which build: official with its compiled extension, or the registry copy without),
timm, the evaluators, and whether CUDA is usable.
"""
from __future__ import annotations

import importlib
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import List, Tuple

__all__ = ["collect_env", "detectron2_build", "main"]


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def detectron2_build() -> str:
    """Which detectron2 is installed, in words."""
    from . import compat

    try:
        d2 = importlib.import_module("detectron2")
    except ImportError:
        return "not installed"
    where = d2.__file__.rsplit("/", 2)[0]
    if compat.has_extension():
        return "official build with C++ extension ({})".format(where)
    patches = ", ".join(sorted(compat.APPLIED)) or "none"
    return "registry copy of v0.6 without C++ extension ({}; compat patches: {})".format(where, patches)


def collect_env() -> List[Tuple[str, str]]:
    import torch

    import afa_d2

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("afa_d2", "{} ({})".format(afa_d2.__version__, afa_d2.__file__.rsplit("/", 1)[0])),
        ("PyTorch", "{} (CUDA build {})".format(torch.__version__, torch.version.cuda)),
        ("torchvision", _dist_version("torchvision")),
        ("detectron2", "{}: {}".format(_dist_version("detectron2"), detectron2_build())),
        ("timm", _dist_version("timm")),
        ("fvcore", _dist_version("fvcore")),
        ("faster-coco-eval", _dist_version("faster-coco-eval")),
        ("pycocotools", _dist_version("pycocotools")),
        ("lvis", _dist_version("lvis")),
        ("numpy", _dist_version("numpy")),
        ("Pillow", _dist_version("pillow")),
        ("CPU", "{} ({} threads for torch)".format(platform.machine(), torch.get_num_threads())),
    ]
    cuda = torch.cuda.is_available()
    rows.append(("CUDA available", str(cuda)))
    if cuda:
        for i in range(torch.cuda.device_count()):
            rows.append(("GPU {}".format(i), torch.cuda.get_device_name(i)))
    return rows


def main() -> None:
    rows = collect_env()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print("{}  {}".format(key.ljust(width), value))


if __name__ == "__main__":
    main()
