"""The small I/O every layer of afa_d2 may use (it imports nothing of afa_d2): the cache folder, writes
that never leave a half-written file, and the one allow-list of the globals a checkpoint may unpickle
besides tensors (``torch.load(weights_only=True)`` and :func:`restricted_pickle_load` read it).

Atomic writes go to ``<dir>/.<name>.tmp-<pid>``, are flushed and fsynced, then ``os.replace``d over
``<dir>/<name>``: a process killed at any point leaves the old or the new file, never a truncated
one (a stale ``*.tmp-*`` may remain; the next write of the same name removes it).
"""
from __future__ import annotations

import collections
import os
import pickle
from typing import Any

__all__ = ["SAFE_GLOBALS", "PICKLE_EXTRA_GLOBALS", "RefusedGlobalError", "restricted_pickle_load",
           "atomic_torch_save", "atomic_write", "atomic_write_text", "cache_root"]


def cache_root() -> str:
    """``$AFA_D2_CACHE`` (default ``~/.cache/afa_d2``), expanded."""
    return os.path.abspath(os.path.expanduser(os.environ.get("AFA_D2_CACHE") or os.path.join("~", ".cache", "afa_d2")))


def _safe_globals() -> list:
    """Globals a detectron2 training checkpoint may pickle besides tensors and builtins."""
    import numpy as np

    ret: list = [collections.OrderedDict, collections.defaultdict, set, frozenset, slice]
    ret += [np.dtype, np.ndarray, type(np.dtype("float32")), type(np.dtype("int64")), type(np.dtype("float64"))]
    try:  # numpy scalars (e.g. an iteration counter that went through numpy)
        ret.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        ret.append(np.core.multiarray.scalar)
    try:
        ret.append(np._core.multiarray._reconstruct)
    except AttributeError:  # pragma: no cover - numpy 1.x
        ret.append(np.core.multiarray._reconstruct)
    return ret


SAFE_GLOBALS = _safe_globals()

#: What plain pickles of numpy arrays need besides :data:`SAFE_GLOBALS` (a detectron2 model-zoo ``.pkl``):
#: protocol 5's ``_frombuffer``, ``_codecs.encode`` (how protocol <= 2 pickles from Python 3 spell ``bytes``),
#: ``bytearray``.
PICKLE_EXTRA_GLOBALS = (("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"), ("builtins", "bytearray"))


def _allowed_pickle_globals() -> dict:
    """(module, name) -> object for :func:`restricted_pickle_load`: :data:`SAFE_GLOBALS` and
    :data:`PICKLE_EXTRA_GLOBALS`, each also under the names older pickles use (numpy 1's ``numpy.core``,
    Python 2's ``__builtin__``)."""
    import importlib

    allowed = {(g.__module__, g.__name__): g for g in SAFE_GLOBALS}
    for module, name in PICKLE_EXTRA_GLOBALS:
        try:
            allowed[(module, name)] = getattr(importlib.import_module(module), name)
        except ImportError:  # pragma: no cover - numpy 1.x: numpy.core
            allowed[(module, name)] = getattr(importlib.import_module(module.replace("._core", ".core")), name)
    for (module, name), obj in list(allowed.items()):
        if module.startswith("numpy._core"):
            allowed[(module.replace("numpy._core", "numpy.core"), name)] = obj
        elif module == "builtins":
            allowed[("__builtin__", name)] = obj
    return allowed


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a global that :func:`restricted_pickle_load` does not allow."""


def restricted_pickle_load(data: bytes, what: str = "this pickle") -> Any:
    """Unpickle ``data`` allowing only the globals of :func:`_allowed_pickle_globals` (numpy arrays, dtypes,
    scalars, plain containers); ``pickle.UnpicklingError`` naming any other global, because unpickling it could
    run code. ``what`` is named in that error."""
    import io

    allowed = _allowed_pickle_globals()

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) not in allowed:
                raise RefusedGlobalError(
                    "refusing GLOBAL {}.{}: {} may hold numpy arrays and plain containers only, and unpickling "
                    "anything else could run code".format(module, name, what))
            return allowed[(module, name)]

    return _Restricted(io.BytesIO(data), encoding="latin1").load()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tmp_name(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, ".{}.tmp-{}".format(base, os.getpid()))


def _remove_stale_tmp(path: str) -> None:
    directory, base = os.path.split(path)
    prefix = ".{}.tmp-".format(base)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.remove(os.path.join(directory, name))
            except OSError:
                pass


def atomic_write(path: str, write_fn) -> None:
    _remove_stale_tmp(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A Python-level failure (disk full, KeyboardInterrupt): drop the partial temp file.
        # A SIGKILL never gets here; its leftover temp file is harmless (see module doc).
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(path) or ".")


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
