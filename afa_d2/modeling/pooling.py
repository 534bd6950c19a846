"""MS-Att's key/value pooling (paper §3.3, "Multi-Scale Pooling"; Table 5's variants) and its geometry.

:func:`pool_tokens` computes the pooled tokens; :func:`pool_windows` describes the same pools without
computing them (how many tokens, which window of the map each one averages), for the benchmark's token
counts, the attention maps and the sizes an exported graph serves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["POOLING_TYPES", "PoolWindow", "pool_tokens", "pool_windows"]

POOLING_TYPES = ("multi_scale", "single_scale", "adaptive")


def pool_tokens(
    x: Tensor, pooling: str, strides: Tuple[int, ...], adaptive_size: int
) -> Tensor:
    """Key/value tokens of MS-Att: pooled maps of ``x``, flattened and concatenated.

    Args:
        x: Tensor of shape (N, C, H, W), the key/value source.
        pooling: one of :data:`POOLING_TYPES`.
        strides: pooling strides, (r, 2r) for "multi_scale", (r,) for "single_scale".
        adaptive_size: output side of the "adaptive" pool (clamped to the input size).

    Returns:
        Tensor of shape (N, M, C): M tokens, the pools' outputs in order: those of :func:`pool_windows`, whose
        kernels (= strides) are clamped to the map per axis, so that every pixel contributes and a 3x5 map
        pooled with stride 16 gives one token.
    """
    pooled = []
    for window in pool_windows(x.shape[-2], x.shape[-1], pooling, strides, adaptive_size):
        if window.kernel is None:
            pooled.append(F.adaptive_avg_pool2d(x, window.out))
        elif window.kernel == (1, 1):
            pooled.append(x)
        else:  # kernel = stride, clamped to the map; ceil_mode keeps the border pixels (a partial last window)
            pooled.append(F.avg_pool2d(x, kernel_size=window.kernel, stride=window.kernel, ceil_mode=True))
    # each (N, C, h_j, w_j) -> (N, C, h_j * w_j); concatenated -> (N, C, M) -> (N, M, C)
    return torch.cat([p.flatten(2) for p in pooled], dim=2).transpose(1, 2)


@dataclass(frozen=True)
class PoolWindow:
    """One pool of :func:`pool_tokens` on an h x w map: its name ("r=8", "7x7 adaptive"), its kernel (= its
    stride, clamped to the map; None for the adaptive pool), its output grid and the map's size. The one
    description of MS-Att's key/value geometry: token counts (the benchmark), token windows (the attention
    maps) and the sizes a traced graph serves (the export) all read it."""

    name: str
    kernel: Optional[Tuple[int, int]]
    out: Tuple[int, int]
    size: Tuple[int, int]  # (h, w) of the pooled map

    @property
    def tokens(self) -> int:
        return self.out[0] * self.out[1]

    def token_windows(self) -> List[Tuple[int, int, int, int]]:
        """The window (y0, y1, x0, x1) of the map each of this pool's tokens averages, row-major over
        ``out``: kernel-sized windows with the last one clipped to the map (``ceil_mode``), or
        ``adaptive_avg_pool2d``'s ``[floor(i*size/out), ceil((i+1)*size/out))``."""
        if self.kernel is None:
            rows, cols = (_adaptive_edges(s, o) for s, o in zip(self.size, self.out))
        else:
            rows, cols = (_kernel_edges(s, k) for s, k in zip(self.size, self.kernel))
        return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def _kernel_edges(size: int, kernel: int) -> List[Tuple[int, int]]:
    """Windows of an average pool with kernel = stride and ceil_mode along one axis."""
    return [(a, min(a + kernel, size)) for a in range(0, size, kernel)]


def _adaptive_edges(size: int, out: int) -> List[Tuple[int, int]]:
    """Windows of ``adaptive_avg_pool`` from ``size`` to ``out`` along one axis."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def pool_windows(h: int, w: int, pooling: str, strides: Tuple[int, ...], adaptive_size: int) -> List[PoolWindow]:
    """The pools of :func:`pool_tokens` for an h x w input, in token order."""
    h, w = int(h), int(w)
    if pooling == "adaptive":
        return [PoolWindow("{}x{} adaptive".format(min(adaptive_size, h), min(adaptive_size, w)), None,
                           (min(adaptive_size, h), min(adaptive_size, w)), (h, w))]
    out = []
    for s in strides:
        kh, kw = min(s, h), min(s, w)
        out.append(PoolWindow("r={}".format(s), (kh, kw), (-(-h // kh), -(-w // kw)), (h, w)))
    return out
