"""MS-Att's tokens: the (N, H*W, C) layout of a map, and the kernels of the two large products on them.

The token linears and the attention go through :class:`TokenKernels`, whose defaults are the plain ops
(``nn.Linear``, SDPA). Which faster kernel a host has is not model code; the CPU execution layer
(:mod:`afa_d2.execution`) installs its measured kernels with :func:`use_kernels` (docs/DESIGN.md, "Layers").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TokenKernels", "add_tokens", "from_tokens", "plain_attend", "plain_token_linear", "to_tokens",
           "token_kernels", "token_view", "use_kernels"]


def plain_token_linear(linear: nn.Linear, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """``linear(x)`` for tokens x of shape (N, H*W, C_in) on an H x W grid -> (N, H*W, C_out)."""
    return linear(x)


def plain_attend(q: Tensor, k: Tensor, v: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """Multi-head attention of query tokens over pooled keys and values, by SDPA.

    Args:
        q: Tensor of shape (N, H*W, C), query tokens (heads along C, head-major); not scaled.
        k, v: Tensors of shape (N, heads, M, C/heads).
        feat_size: (H, W) of the query grid (unused here; a kernel that works on the grid needs it).

    Returns:
        Tensor of shape (N, H*W, C): ``softmax(Q K^T / sqrt(C/heads)) V``, heads concatenated.
    """
    n, hw, c = q.shape
    heads = k.shape[1]
    q4 = q.view(n, hw, heads, c // heads).transpose(1, 2)  # (N, heads, H*W, C/heads), a view
    att = F.scaled_dot_product_attention(q4, k, v)  # (N, heads, H*W, C/heads)
    return att.transpose(1, 2).reshape(n, hw, c)  # (N, H*W, C)


@dataclass(frozen=True)
class TokenKernels:
    """The functions that compute MS-Att's large products, with :func:`plain_token_linear` and
    :func:`plain_attend`'s signatures. A replacement must compute the same values (it may pick another
    kernel by host, size or precision) and fall back to the plain op where it does not apply."""

    token_linear: Callable[[nn.Linear, Tensor, Tuple[int, int]], Tensor] = plain_token_linear
    attend: Callable[[Tensor, Tensor, Tensor, Tuple[int, int]], Tensor] = plain_attend


_kernels = TokenKernels()


def token_kernels() -> TokenKernels:
    """The kernels every MS-Att block of this process uses now."""
    return _kernels


def use_kernels(kernels: TokenKernels) -> TokenKernels:
    """Make every MS-Att block of this process compute its large products with ``kernels``; returns the
    previous ones (to restore them). Process-wide, not per model: a model built by ``instantiate`` or
    detectron2's ``build_model`` in a user's own script takes them too."""
    global _kernels
    if not isinstance(kernels, TokenKernels):
        raise TypeError("use_kernels takes a TokenKernels, got {!r}".format(kernels))
    previous, _kernels = _kernels, kernels
    return previous


def to_tokens(x: Tensor) -> Tensor:
    """(N, C, H, W) -> tokens (N, H*W, C), row-major over the grid.

    Contiguous: a view (no copy) when ``x`` is channels_last, one copy otherwise.
    """
    return token_view(x).contiguous()


def token_view(x: Tensor) -> Tensor:
    """(N, C, H, W) -> tokens (N, H*W, C) as a view, contiguous only if ``x`` is channels_last."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # (N, H*W, C)


def add_tokens(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` of two (N, L, C) token tensors, as contiguous tokens whatever their strides.

    The sum takes the layout of its first contiguous operand, so no copy follows when either
    one is contiguous (addition commutes: the values do not depend on the order).
    """
    if b.is_contiguous() and not a.is_contiguous():
        a, b = b, a
    return (a + b).contiguous()


def from_tokens(x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """Tokens (N, H*W, C) -> (N, C, H, W): a channels_last view of contiguous tokens, no copy."""
    n, _, c = x.shape
    h, w = feat_size
    return x.reshape(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, H, W)
