"""MS-Att: the multi-scale attention block of the paper (§3.3, eqs. 5-7).

Where each piece comes from:

* the attention itself is ViT's multi-head attention (Dosovitskiy et al., 2021): LayerNorm,
  linear Q / K / V, ``softmax(Q K^T / sqrt(d_k)) V`` over ``num_heads`` heads, output
  projection (eqs. 5-6), computed with :func:`torch.nn.functional.scaled_dot_product_attention`;
* keys and values are average-pooled before the projection, as in P2T / PVTv2's spatial
  reduction; "multi-scale" pools twice (strides ``r`` and ``2 r``) and concatenates the
  flattened results (paper §3.3 "Multi-Scale Pooling", docs/DESIGN.md, "The method" for the reading of "r2i");
* the MLP is PVTv2's DW-MLP (Wang et al., 2021b; timm ``MlpWithDepthwiseConv``): FC (C -> 2C),
  depth-wise 3x3 conv on the query's H x W grid (the position encoding), GELU, FC (2C -> C),
  used in eq. 7 ``p_q = f_q + DW-MLP(LN(f_q + Att))``. The LayerNorm before the MLP is
  PVTv2's pre-norm; the paper does not state it (docs/DESIGN.md, "The method", step 4).

Two paths compute the same operator with the same weights. :meth:`MSAttention.forward` (the
default) works in channels-last tokens end to end: NCHW <-> (N, H*W, C) tokens is a view for
channels_last maps (its output is one), the depth-wise conv runs on a channels_last view of the
hidden tokens, and the residual adds are in place on fresh linear outputs.
:meth:`MSAttention.forward_reference` is the straightforward transcription (NCHW in and out,
transposes, out-of-place adds), kept to test the fast path against (fp32, 1e-4) and to
benchmark it (``python tools/benchmark.py --reference``).

The token layout and the kernels of the fast path's two large products (the token linears, the attention)
are :mod:`.tokens`; the key/value pooling and its geometry are :mod:`.pooling`.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .pooling import POOLING_TYPES, PoolWindow, pool_tokens, pool_windows
from .tokens import from_tokens, to_tokens, token_kernels

__all__ = ["DWMLP", "MSAttention", "check_attention_args"]


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_attention_args(
    *,
    dim: int,
    num_heads: int,
    pooling: str,
    pool_strides: Sequence[int],
    adaptive_pool_size: int,
    mlp_ratio: float,
    checkpoint_mlp: bool,
    where: str,
    dim_name: str = "dim",
    strides_name: str = "pool_stride",
) -> None:
    """The one check of MS-Att's arguments, for :class:`MSAttention` and :class:`AttentionFPN` alike.

    Raises ValueError naming ``where``, the bad value and the valid ones. A bool is not an int here
    (``num_heads=True`` is a mistake, not one head), and not a number for ``mlp_ratio``.
    """
    if not _positive_int(dim):
        raise ValueError("{}: {} must be a positive int, got {!r}".format(where, dim_name, dim))
    if not _positive_int(num_heads) or dim % num_heads != 0:
        raise ValueError("{}: num_heads={!r} must be a positive int dividing {}={}; valid: {}".format(
            where, num_heads, dim_name, dim, [h for h in range(1, min(dim, 64) + 1) if dim % h == 0]))
    if pooling not in POOLING_TYPES:
        raise ValueError("{}: unknown pooling {!r}; valid: {}".format(where, pooling, list(POOLING_TYPES)))
    for r in pool_strides:
        if not _positive_int(r):
            raise ValueError("{}: {} must be positive ints, got {!r} in {}".format(
                where, strides_name, r, list(pool_strides)))
    if not _positive_int(adaptive_pool_size):
        raise ValueError("{}: adaptive_pool_size must be a positive int, got {!r}".format(where, adaptive_pool_size))
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
        raise ValueError("{}: mlp_ratio must be a number > 0, got {!r}".format(where, mlp_ratio))
    if int(round(dim * mlp_ratio)) <= 0:
        raise ValueError("{}: mlp_ratio={!r} gives no hidden channels at {} channels".format(where, mlp_ratio, dim))
    if not isinstance(checkpoint_mlp, bool):
        raise ValueError("{}: checkpoint_mlp must be a bool, got {!r}".format(where, checkpoint_mlp))


def _add_residual(x: Tensor, residual: Tensor) -> Tensor:
    """``x + residual``, in place on ``x`` (a fresh linear output) where autograd allows it.

    The result is the same: addition is commutative in floating point.
    """
    if x.dtype != residual.dtype or (residual.requires_grad and not x.requires_grad):
        return x + residual
    return x.add_(residual)


class DWMLP(nn.Module):
    """PVTv2's MLP with a depth-wise convolution: FC, DW-conv 3x3, GELU, FC.

    Args:
        dim (int): token channels C.
        hidden_dim (int): hidden channels (``mlp_ratio * C``).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        """
        Args:
            x: Tensor of shape (N, H*W, C), tokens in row-major order of the grid.
            feat_size: (H, W) of the grid.

        Returns:
            Tensor of shape (N, H*W, C).
        """
        n = x.shape[0]
        h, w = feat_size
        linear = token_kernels().token_linear
        x = linear(self.fc1, x, feat_size)  # (N, H*W, hidden), contiguous
        hidden = x.shape[-1]
        # (N, H, W, hidden) permuted to (N, hidden, H, W): a channels_last view, no copy; the
        # depth-wise conv keeps channels_last, so its output is again a view of tokens
        x = self.dwconv(x.view(n, h, w, hidden).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(n, h * w, hidden)  # (N, H*W, hidden)
        return linear(self.fc2, self.act(x).contiguous(), feat_size)

    def forward_reference(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        """The straightforward :meth:`forward` (NCHW transposes), for tests and benchmarks."""
        n = x.shape[0]
        h, w = feat_size
        x = self.fc1(x)  # (N, H*W, hidden)
        hidden = x.shape[-1]
        x = x.transpose(1, 2).reshape(n, hidden, h, w)  # (N, hidden, H, W)
        x = self.dwconv(x)
        x = x.flatten(2).transpose(1, 2)  # (N, H*W, hidden)
        x = self.act(x)
        return self.fc2(x)


class MSAttention(nn.Module):
    """MS-Att(x_q, x_kv) of the paper, eqs. (5)-(7).

    ``f_q`` = tokens of ``x_q``; ``f_kv`` = pooled tokens of ``x_kv`` (see :func:`pool_tokens`);
    ``Q = W_q LN_q(f_q)``, ``K, V = W_k LN_kv(f_kv), W_v LN_kv(f_kv)`` (eq. 5, one fused K/V
    linear); ``Att = W_o softmax(Q K^T / sqrt(d_k)) V`` over ``num_heads`` heads (eq. 6);
    ``p_q = f_q + DW-MLP(LN(f_q + Att))`` (eq. 7), reshaped back to (N, C, H, W).

    The output already contains the ``f_q`` residual: MSSA uses it as ``P_i`` directly,
    MSCA adds ``F_i`` once more (eq. 4).

    Args:
        dim (int): channels C of both inputs.
        num_heads (int): attention heads; must divide ``dim``.
        pooling (str): "multi_scale" (strides r and 2r), "single_scale" (stride r) or
            "adaptive" (one adaptive pool to ``adaptive_pool_size``), paper Table 5.
        pool_stride (int): r (> 0), ignored by "adaptive".
        adaptive_pool_size (int): side of the adaptive pool (> 0).
        mlp_ratio (float): hidden channels of the DW-MLP over C (> 0).
        qkv_bias (bool): biases in the Q and K/V linears (ViT / PVTv2 use them).
        checkpoint_mlp (bool): in training, keep only the DW-MLP branch's input
            ``f_q + Att`` for backward and recompute ``DW-MLP(LN(.))`` there
            (:func:`torch.utils.checkpoint.checkpoint`): the same values and gradients,
            about 7 of the block's ~12 token-sized saved tensors (C channels each) fewer, for
            one more forward of the branch. Off by default.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        *,
        pooling: str = "multi_scale",
        pool_stride: int = 16,
        adaptive_pool_size: int = 7,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        checkpoint_mlp: bool = False,
    ):
        super().__init__()
        check_attention_args(
            dim=dim, num_heads=num_heads, pooling=pooling, pool_strides=[pool_stride],
            adaptive_pool_size=adaptive_pool_size, mlp_ratio=mlp_ratio, checkpoint_mlp=checkpoint_mlp,
            where="MSAttention",
        )
        hidden = int(round(dim * mlp_ratio))
        if hidden <= 0:
            raise ValueError("MSAttention: mlp_ratio={!r} gives no hidden channels".format(mlp_ratio))

        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.pooling = pooling
        self.pool_strides: Tuple[int, ...] = (
            (pool_stride, 2 * pool_stride) if pooling == "multi_scale" else (pool_stride,)
        )
        self.adaptive_pool_size = adaptive_pool_size
        self.checkpoint_mlp = checkpoint_mlp

        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)  # W_k and W_v, fused
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = DWMLP(dim, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PVTv2's initialisation: trunc-normal(0.02) linears, unit LayerNorms, fan-out conv."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def init_as_identity(self) -> None:
        """Zero the DW-MLP's last linear (``fc2``, weight and bias), so that ``MS-Att(x_q, x_kv) = x_q``.

        Eq. (7) is ``p_q = f_q + DW-MLP(LN(f_q + Att))``; with ``fc2`` at zero the MLP branch is
        exactly 0 whatever its input, so the block returns its query unchanged (on both paths).
        Training still moves it: ``fc2`` gets a gradient at once, the rest of the block as soon
        as ``fc2`` is no longer zero. The start of
        :class:`~afa_d2.modeling.aggregation.MSSAAggregation` as FPN's sum.
        """
        with torch.no_grad():
            self.mlp.fc2.weight.zero_()
            self.mlp.fc2.bias.zero_()

    def extra_repr(self) -> str:
        pools = (
            "adaptive {0}x{0}".format(self.adaptive_pool_size)
            if self.pooling == "adaptive"
            else "strides {}".format(list(self.pool_strides))
        )
        return "dim={}, num_heads={}, pooling={} ({})".format(
            self.dim, self.num_heads, self.pooling, pools
        )

    def pool_windows(self, h: int, w: int) -> List[PoolWindow]:
        """The key/value pools of this block on an h x w key/value map (:func:`pool_windows`)."""
        return pool_windows(h, w, self.pooling, self.pool_strides, self.adaptive_pool_size)

    @property
    def unclamped_size(self) -> Optional[int]:
        """The smallest map side on which every pooling kernel equals its stride (none is clamped to the map),
        so that a graph traced on such a map pools every larger map the same way; None for the adaptive pool,
        whose kernels depend on the map size."""
        return None if self.pooling == "adaptive" else max(self.pool_strides)

    def kv_tokens(self, x_kv: Tensor) -> Tensor:
        """Pooled key/value tokens f_kv of ``x_kv`` (N, C, H', W') -> (N, M, C)."""
        return pool_tokens(x_kv, self.pooling, self.pool_strides, self.adaptive_pool_size)

    def forward(self, x_q: Tensor, x_kv: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x_q: Tensor of shape (N, C, H, W), the query source; channels_last avoids a copy.
            x_kv: Tensor of shape (N, C, H', W'), the key/value source; ``None`` means
                ``x_q`` (self-attention).

        Returns:
            p_q: Tensor of shape (N, C, H, W), eq. (7), a channels_last view of the tokens.
        """
        h, w = x_q.shape[-2], x_q.shape[-1]  # traced, not constants, under export
        p_q = self.forward_tokens(to_tokens(x_q), (h, w), x_q if x_kv is None else x_kv)
        return from_tokens(p_q, (h, w))

    def forward_tokens(self, f_q: Tensor, feat_size: Tuple[int, int], x_kv: Tensor) -> Tensor:
        """MS-Att on query tokens: the fast path of :meth:`forward`.

        Args:
            f_q: Tensor of shape (N, H*W, C), query tokens in row-major order of the grid
                (see :func:`to_tokens`); not modified.
            feat_size: (H, W) of the query grid.
            x_kv: Tensor of shape (N, C, H', W'), the key/value source.

        Returns:
            p_q: Tensor of shape (N, H*W, C), eq. (7), contiguous.
        """
        n, hw, c = f_q.shape
        f_kv = self.kv_tokens(x_kv)  # (N, M, C)
        m = f_kv.shape[1]

        kernels = token_kernels()
        q = kernels.token_linear(self.q, self.norm_q(f_q), feat_size)  # (N, H*W, C), contiguous
        kv = self.kv(self.norm_kv(f_kv))  # (N, M, 2C): few tokens, the plain linear
        kv = kv.view(n, m, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, N, heads, M, C/heads)
        k, v = kv[0], kv[1]  # each (N, heads, M, C/heads)
        if q.dtype != k.dtype:  # autocast may leave them apart
            k, v = k.to(q.dtype), v.to(q.dtype)

        att = kernels.attend(q, k, v, feat_size)  # (N, H*W, C): SDPA, or the host's kernel (TokenKernels)
        x = kernels.token_linear(self.proj, att.contiguous(), feat_size)
        x = _add_residual(x, f_q)  # eq. (7), inner sum f_q + Att
        if self.checkpoint_mlp and x.requires_grad and torch.is_grad_enabled():
            y = checkpoint(self._mlp_branch, x, feat_size, use_reentrant=False)
        else:
            y = self._mlp_branch(x, feat_size)
        return _add_residual(y, f_q)  # (N, H*W, C)

    def _mlp_branch(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        """``DW-MLP(LN(x))`` of eq. (7), on tokens (N, H*W, C)."""
        return self.mlp(self.norm_mlp(x), feat_size)

    def _reference_qkv(self, x_q: Tensor, x_kv: Tensor, queries: Optional[Tensor] = None
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The query tokens and Q, K, V split into heads (eq. 5), as the equations read: what
        :meth:`forward_reference` attends with and :meth:`attention_weights` weighs.

        Args:
            x_q: Tensor of shape (N, C, H, W), the query source.
            x_kv: Tensor of shape (N, C, H', W'), the key/value source.
            queries: row-major indices into the H*W query grid (all of them if None).

        Returns:
            f_q: Tensor of shape (N, L, C) with L = H*W or len(queries); q: (N, heads, L, C/heads);
            k, v: (N, heads, M, C/heads), M pooled key/value tokens.
        """
        n, c, h, w = x_q.shape
        f_q = x_q.flatten(2).transpose(1, 2)  # (N, H*W, C)
        if queries is not None:
            f_q = f_q[:, queries]  # (N, L, C): LayerNorm and the linear are per token
        f_kv = self.kv_tokens(x_kv)  # (N, M, C)
        m = f_kv.shape[1]

        q = self.q(self.norm_q(f_q))  # (N, L, C)
        q = q.reshape(n, f_q.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # (N, heads, L, C/heads)
        kv = self.kv(self.norm_kv(f_kv))  # (N, M, 2C)
        kv = kv.reshape(n, m, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, N, heads, M, C/heads)
        k, v = kv[0], kv[1]  # each (N, heads, M, C/heads)
        if q.dtype != k.dtype:  # autocast may leave them apart
            k, v = k.to(q.dtype), v.to(q.dtype)
        return f_q, q, k, v

    def attention_weights(self, x_q: Tensor, x_kv: Optional[Tensor] = None,
                          queries: Optional[Sequence[int]] = None) -> Tensor:
        """``softmax(Q K^T / sqrt(d_k))`` of eq. (6): the weights the block's attention gives each pooled
        key/value token (in the order of :meth:`pool_windows`), computed in float32.

        Args:
            x_q: Tensor of shape (N, C, H, W), the query source.
            x_kv: Tensor of shape (N, C, H', W'), the key/value source; ``None`` means ``x_q``.
            queries: row-major indices into the H*W query grid (all of them if None).

        Returns:
            Tensor of shape (N, heads, L, M): each query's weights over the M tokens (sum 1 over M);
            ``weights @ V`` is :meth:`forward_reference`'s attention before the output projection.

        Raises:
            ValueError: a query index outside the grid.
        """
        hw = int(x_q.shape[-2]) * int(x_q.shape[-1])
        index = None
        if queries is not None:
            bad = [int(i) for i in queries if not 0 <= int(i) < hw]
            if bad:
                raise ValueError("MSAttention.attention_weights: query index {} is outside the {}x{} grid; "
                                 "valid: 0 to {}".format(bad[0], x_q.shape[-2], x_q.shape[-1], hw - 1))
            index = torch.as_tensor([int(i) for i in queries], dtype=torch.long, device=x_q.device)
        _, q, k, _ = self._reference_qkv(x_q, x_q if x_kv is None else x_kv, index)
        logits = q.float() @ k.float().transpose(-2, -1) / math.sqrt(self.head_dim)  # (N, heads, L, M)
        return logits.softmax(dim=-1)

    def forward_reference(self, x_q: Tensor, x_kv: Optional[Tensor] = None) -> Tensor:
        """The straightforward MS-Att (NCHW in and out, out-of-place), for tests and benchmarks.

        Same operator and weights as :meth:`forward`, written as the equations read.

        Args:
            x_q: Tensor of shape (N, C, H, W), the query source.
            x_kv: Tensor of shape (N, C, H', W'), the key/value source; ``None`` means
                ``x_q`` (self-attention).

        Returns:
            p_q: Tensor of shape (N, C, H, W), eq. (7) reshaped.
        """
        n, c, h, w = x_q.shape
        f_q, q, k, v = self._reference_qkv(x_q, x_q if x_kv is None else x_kv)

        att = F.scaled_dot_product_attention(q, k, v)  # (N, heads, H*W, C/heads)
        att = att.transpose(1, 2).reshape(n, h * w, c)  # (N, H*W, C)
        att = self.proj(att)

        x = f_q + att  # eq. (7), inner sum
        p_q = f_q + self.mlp.forward_reference(self.norm_mlp(x), (h, w))  # (N, H*W, C)
        return p_q.transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
