"""Timers of the benchmark: one call, the median of several, and interleaved timing of several variants.

Timing is interleaved: every timed repetition runs each variant once, in an order rotated from one
repetition to the next, so a load change on a shared machine hits every variant alike; the median is
reported, and the spread ((max - min) / median over the repetitions) beside it.
"""
import statistics
import time
from typing import Any, Dict, List, Sequence

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device) -> float:
    """Seconds of one ``fn()``, the device synchronised before and after."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def median_time(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn, device) for _ in range(max(1, iters)))


def time_interleaved(
    fns: Dict[str, Any], iters: int, warmup: int, device: torch.device
) -> Dict[str, List[float]]:
    """Seconds of each ``fns[name]()``, interleaved: every repetition runs each once.

    The order is rotated by one from a repetition to the next, so no variant always runs
    first (or right after a heavier one). Returns name -> the ``iters`` timings.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for it in range(max(1, iters)):
        for name in rotated(names, it):
            times[name].append(time_once(fns[name], device))
    return times


def rotated(items: Sequence, shift: int) -> list:
    """``items`` rotated left by ``shift`` (modulo their number): repetition ``shift`` of an interleaved
    measurement runs them in this order, so that no variant always runs first (or after a heavier one)."""
    k = shift % len(items)
    return list(items[k:]) + list(items[:k])


def spread(times: Sequence[float]) -> float:
    """(max - min) / median."""
    med = statistics.median(times)
    return (max(times) - min(times)) / med if med > 0 else 0.0
