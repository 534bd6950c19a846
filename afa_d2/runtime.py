"""Process-wide CPU settings that afa_d2's commands turn on, visibly and with a way out.

glibc's ``malloc`` serves every block over ``M_MMAP_THRESHOLD`` (128 KiB, raised dynamically up
to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A detector's large temporaries (a
256-channel map of p2 at 800x1333 is 69 MB) are far above that, so every one of them is
faulted in page by page, zeroed by the kernel, and handed back, at every layer of every
forward. :func:`keep_freed_memory` tells glibc to serve every block from its heap and to keep
what is freed (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)``), so a
freed block's pages are reused by the next allocation. Measured on a 2-core AMD EPYC (AVX-512)
host, 2 threads: an elementwise chain over a (1, 256, 200, 336) map took 40 ms instead of 140 ms;
whole-model figures are in the README's "Measured" section.

The cost: the process keeps its peak heap (its resident memory does not shrink after a large
step; forked data-loader workers inherit the setting). It is never set by ``import afa_d2``:
the commands that run models on the CPU (``train_net.py`` with ``train.device=cpu``, the demo,
the benchmark's "afa_d2" runs, :class:`afa_d2.predictor.Predictor`, the model-zoo trainer) call
:func:`configure_cpu_runtime`, which logs what it set. ``AFA_D2_MALLOC=default`` turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Dict, Optional

__all__ = ["MALLOC_ENV", "configure_cpu_runtime", "keep_freed_memory"]

logger = logging.getLogger(__name__)

MALLOC_ENV = "AFA_D2_MALLOC"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP = {"M_MMAP_MAX": (_M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, 2**31 - 1)}

_applied: Optional[Dict[str, int]] = None


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # absent in musl: not glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> Optional[Dict[str, int]]:
    """Make glibc keep freed memory in the process (see the module's doc). Idempotent.

    Returns:
        the ``mallopt`` settings made (``{"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": ...}``), or None
        where there is no glibc (macOS, musl) or ``mallopt`` refused.
    """
    global _applied
    if _applied is not None:
        return dict(_applied)
    libc = _glibc()
    if libc is None:
        return None
    done = {}
    for name, (param, value) in _KEEP.items():
        if libc.mallopt(param, value) != 1:
            return None
        done[name] = value
    _applied = done
    return dict(done)


def configure_cpu_runtime(what: str = "this run") -> Optional[Dict[str, int]]:
    """What afa_d2's commands call before running models on the CPU: :func:`keep_freed_memory`,
    unless ``$AFA_D2_MALLOC`` is "default"; logs the outcome either way.

    Args:
        what (str): named in the log line ("the demo", "evaluation", ...).

    Returns:
        the settings made, or None.
    """
    choice = os.environ.get(MALLOC_ENV, "keep").strip().lower()
    if choice not in ("keep", "default"):
        raise ValueError("{}={!r}: expected 'keep' (afa_d2's default for CPU runs) or 'default' (glibc's "
                         "own behaviour)".format(MALLOC_ENV, choice))
    if choice == "default":
        logger.info("glibc malloc left as it is for %s (%s=default)", what, MALLOC_ENV)
        return None
    done = keep_freed_memory()
    if done is None:
        logger.info("No glibc mallopt here: the allocator is left as it is for %s", what)
    else:
        logger.info("glibc malloc keeps freed memory in the process for %s (mallopt %s): large temporaries "
                    "reuse pages instead of faulting in fresh ones; %s=default turns this off", what,
                    ", ".join("{}={}".format(k, v) for k, v in done.items()), MALLOC_ENV)
    return done
