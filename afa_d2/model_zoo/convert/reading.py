"""Reading the checkpoint a converter starts from, whatever its file format and layout.

A detectron2 model-zoo ``.pkl`` holds numpy arrays. It is read by :func:`afa_d2.storage.restricted_pickle_load`,
which builds numpy arrays, dtypes, scalars and plain containers and refuses any other global by name, never by
``pickle.load``, which would run whatever code the file holds. A ``.pth`` is read by
``torch.load(weights_only=True)`` (:func:`afa_d2.engine.checkpoint.load_checkpoint_file`). URLs and
hash-named files go through :func:`afa_d2.hub.fetch_checkpoint`.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from afa_d2.storage import RefusedGlobalError, restricted_pickle_load

__all__ = ["load_weights", "source_weights"]


def _read_pkl(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return restricted_pickle_load(data, "a model-zoo .pkl")
    except RefusedGlobalError as e:
        raise pickle.UnpicklingError("{}: {}".format(path, e)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise pickle.UnpicklingError("{}: not a readable pickle (truncated or corrupt?): {}: {}".format(
            path, type(e).__name__, e)) from None


def _to_tensor(v) -> Optional[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.array(v, order="C"))  # a copy (writeable, contiguous; 0-d stays 0-d)
    return None


def load_weights(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors of a checkpoint file, whatever its layout.

    Args:
        path (str): a ``.pkl`` (detectron2's model zoo: numpy arrays, read by a restricted
            unpickler) or a ``.pth`` / ``.pt`` / ``.bin`` (``torch.load(weights_only=True)``);
            a local path, or a URL / hash-named file fetched and checked by
            :func:`afa_d2.hub.fetch_checkpoint`.

    Returns:
        (dict[str, Tensor], dict): the weights (from ``{"model": ...}``, ``{"state_dict": ...}``,
        Detectron's ``{"blobs": ...}`` or a bare state dict) and the file's other top-level
        entries (``__author__``, ``matching_heuristics``, ...).

    Raises:
        FileNotFoundError, pickle.UnpicklingError (a refused global, named), ValueError (an entry
        that is not an array or tensor, named).
    """
    from afa_d2.engine.checkpoint import load_checkpoint_file

    from afa_d2.hub import expected_hash_prefix, fetch_checkpoint

    if "://" in path or expected_hash_prefix(path):
        path = fetch_checkpoint(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("checkpoint {}: no such file".format(path))
    data = _read_pkl(path) if path.endswith(".pkl") else load_checkpoint_file(path)
    return unwrap(data, path)


def unwrap(data: Any, name: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors of a loaded checkpoint (``{"model": ...}``, ``{"state_dict": ...}``, Detectron's
    ``{"blobs": ...}`` or bare) and its other top-level entries; ``name`` names it in errors."""
    if not isinstance(data, dict):
        raise ValueError("{} holds a {}, not a state dict or a dict with one".format(name, type(data).__name__))
    for key in ("model", "state_dict", "blobs"):
        if isinstance(data.get(key), dict):
            weights, rest = data[key], {k: v for k, v in data.items() if k != key}
            if key == "blobs":  # Detectron (Caffe2) files: blob names, matched by heuristics
                rest.setdefault("__author__", "Caffe2")
                rest["matching_heuristics"] = True
            break
    else:
        weights, rest = data, {}
    out = {}
    for k, v in weights.items():
        t = _to_tensor(v)
        if t is None:
            raise ValueError("{}: entry {!r} is a {}, not an array or tensor".format(name, k, type(v).__name__))
        out[str(k)] = t
    return out, rest


def source_weights(source) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """A converter's ``source`` (a path / URL, or a state dict) as (weights, other entries, its name)."""
    if isinstance(source, str):
        weights, rest = load_weights(source)
        return weights, rest, source
    if isinstance(source, dict):
        weights, rest = unwrap(source, "<state dict>")
        return weights, rest, "<state dict>"
    raise ValueError("source must be a checkpoint path / URL or a state dict, got a {}".format(type(source).__name__))
