"""The aggregation operators of the top-down path: P_i = op(F_i, P_{i+1}) (paper §3, docs/DESIGN.md, "The method").

=========  ===========================================================  ========================
name       P_i (level with a deeper input)                              top level (no P_{i+1})
=========  ===========================================================  ========================
"sum"      F_i + Up(P_{i+1})                          (FPN)             F
"concat"   Conv1x1([F_i, Up(P_{i+1})]), 2C -> C       (FPN-cat)         F
"mssa"     MS-Att(R_i), R_i = F_i + Up(P_{i+1})       (eqs. 1-2)        MS-Att(F)
"msca"     F_i + MS-Att(F_i, Up(P_{i+1}))             (eqs. 3-4)        F + MS-Att(F, F)
=========  ===========================================================  ========================

MS-Att's output already holds the query residual (eq. 7, ``p_q = f_q + ...``), so MSCA's
``P_i = F_i + S_i`` counts ``F_i`` twice, as the equations read. ``Up`` resizes to ``F_i``'s
exact size (inputs need not be divisible by 32): nearest for sum/concat (FPN), bilinear with
``align_corners=False`` for MSSA/MSCA (paper §3.1); ``upsample_mode`` overrides both.

Every operator has the same interface, ``forward(lateral, top_down=None)``, where
``lateral`` is ``F_i`` and ``top_down`` the deeper level's *un-resized* ``P_{i+1}`` (or
``None`` on the top level), so an operator is free to fuse resizing with what follows.

``start_as_fpn=True`` (every operator's constructor, :func:`build_aggregation`) initialises an
operator's own weights so that it computes FPN's sum, for fine-tuning from an FPN checkpoint
(docs/DESIGN.md, "Checkpoints"): "sum" is it already; "concat" gets the fuse weight ``[I | I]`` and bias 0 (only
without a norm in the fuse conv); "mssa" gets its DW-MLP's last linear at zero, so
``MS-Att(R_i) = R_i`` and ``P_i = F_i + Up(P_{i+1})``. Either is exactly FPN when ``Up`` is
nearest, FPN's. "msca" cannot (:data:`MSCA_CANNOT_START_AS_SUM`) and raises ValueError.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple, Type

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import Tensor, nn

from .ms_attention import MSAttention, _add_residual
from .tokens import add_tokens, from_tokens, to_tokens, token_view

__all__ = [
    "AGGREGATION_OPS",
    "UPSAMPLE_MODES",
    "Aggregation",
    "CONCAT_NORM_CANNOT_START_AS_SUM",
    "MSCA_CANNOT_START_AS_SUM",
    "SumAggregation",
    "ConcatAggregation",
    "MSSAAggregation",
    "MSCAAggregation",
    "attention_operators",
    "baseline_operator",
    "build_aggregation",
    "default_operator",
    "operator_label",
    "operators_with_modules",
    "resize_to",
    "use_checkpoint_mlp",
    "use_reference_path",
]

UPSAMPLE_MODES = ("nearest", "bilinear")

MSCA_CANNOT_START_AS_SUM = (
    "msca cannot start as FPN's sum: P_i = F_i + MS-Att(F_i, Up(P_{i+1})) and MS-Att's output already holds "
    "its query F_i, so with the DW-MLP's last linear at zero P_i = 2 F_i and the deeper level is lost; "
    "P_{i+1} reaches P_i only through attention over its pooled tokens. Leave start_as_fpn off for msca "
    "(the converter then loads every shared weight and keeps the MSCA blocks at their fresh initialisation)")

CONCAT_NORM_CANNOT_START_AS_SUM = (
    "concat cannot start as FPN's sum with a norm in its 1x1 fuse conv (norm={!r}): the fuse computes "
    "Norm(W [F_i, Up(P_{{i+1}})]), and no weight makes that F_i + Up(P_{{i+1}}) for every input; "
    "build it with norm='' (AttentionFPN's norm is also the fuse conv's) or leave start_as_fpn off")


def _check_start_as_fpn(start_as_fpn) -> None:
    if not isinstance(start_as_fpn, bool):
        raise ValueError("start_as_fpn must be a bool, got {!r}".format(start_as_fpn))


def resize_to(x: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    """``Up``: resize ``x`` (N, C, h, w) to ``size`` = (H, W) exactly.

    With ``size`` = (2h, 2w) "nearest" equals detectron2 FPN's ``scale_factor=2`` bit for bit.
    """
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Aggregation(nn.Module):
    """Base of the operators: ``P_i = forward(F_i, P_{i+1})``.

    Args:
        upsample_mode (str): "nearest" or "bilinear", the ``Up`` of this operator.
    """

    default_upsample_mode = "nearest"
    uses_attention = False
    #: how tables and plots name the operator
    label = ""
    #: the operator the others are compared against (FPN's sum)
    is_baseline = False
    #: whether :meth:`init_as_sum` can make the operator compute FPN's sum
    can_start_as_sum = True
    #: the operator AttentionFPN builds when none is named (the paper's MSSA)
    is_default = False
    #: the submodules that hold this operator's own weights (how a state dict shows which operator it has)
    own_modules: Tuple[str, ...] = ()

    @classmethod
    def build(cls, channels: int, *, norm: str, upsample_mode: Optional[str], num_heads: int, pooling: str,
              pool_stride: int, adaptive_pool_size: int, mlp_ratio: float, checkpoint_mlp: bool, top: bool,
              start_as_fpn: bool) -> "Aggregation":
        """The operator for ``channels`` channels from every option :func:`build_aggregation` takes (each
        operator uses its own)."""
        raise NotImplementedError

    @classmethod
    def start_as_sum_refusal(cls, norm: str, top: bool) -> Optional[str]:
        """Why this operator, built with ``norm`` (on the ``top`` level or not), cannot start as FPN's sum;
        None when it can."""
        return None if cls.can_start_as_sum else "{} cannot start as FPN's sum".format(cls.label)

    def __init__(self, upsample_mode: Optional[str] = None):
        super().__init__()
        mode = self.default_upsample_mode if upsample_mode is None else upsample_mode
        if mode not in UPSAMPLE_MODES:
            raise ValueError(
                "unknown upsample_mode {!r}; valid: {} or None (the operator's default)".format(
                    upsample_mode, list(UPSAMPLE_MODES)
                )
            )
        self.upsample_mode = mode

    def up(self, top_down: Tensor, lateral: Tensor) -> Tensor:
        """``Up(P_{i+1})`` at ``F_i``'s size."""
        return resize_to(top_down, (lateral.shape[-2], lateral.shape[-1]), self.upsample_mode)

    def forward(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            lateral: F_i, Tensor of shape (N, C, H, W).
            top_down: P_{i+1}, Tensor of shape (N, C, h, w) (any h, w), or None on the top level.

        Returns:
            P_i: Tensor of shape (N, C, H, W).
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        return "upsample_mode={}".format(self.upsample_mode)

    def init_as_sum(self) -> None:
        """Set this operator's own weights so that it computes FPN's ``F_i + Up(P_{i+1})``.

        A function-preserving start from an FPN checkpoint (``AttentionFPN(start_as_fpn=True)``,
        the converters of :mod:`afa_d2.model_zoo.convert`). Exact when ``Up`` is nearest, FPN's.
        """
        raise NotImplementedError


class SumAggregation(Aggregation):
    """FPN's sum-up: ``P_i = F_i + Up(P_{i+1})``; top level ``F``.

    Args:
        upsample_mode (str or None): see :class:`Aggregation`.
        start_as_fpn (bool): accepted for the common interface; the sum is FPN's already.
    """

    label = "sum-up (FPN)"
    is_baseline = True


    def __init__(self, upsample_mode: Optional[str] = None, *, start_as_fpn: bool = False):
        super().__init__(upsample_mode)
        _check_start_as_fpn(start_as_fpn)

    @classmethod
    def build(cls, channels, *, upsample_mode, start_as_fpn, **_unused):
        return cls(upsample_mode, start_as_fpn=start_as_fpn)

    def init_as_sum(self) -> None:
        pass  # it is the sum

    def forward(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        if top_down is None:
            return lateral
        return lateral + self.up(top_down, lateral)


class ConcatAggregation(Aggregation):
    """FPN-cat: ``P_i = Conv1x1([F_i, Up(P_{i+1})])`` (2C -> C); top level ``F``.

    Args:
        channels (int): C.
        norm (str): detectron2 norm of the 1x1 conv ("" for none, then with bias).
        upsample_mode (str or None): see :class:`Aggregation`.
        top (bool): the top level (no deeper input): no conv, ``P = F``.
        start_as_fpn (bool): start as FPN's sum: fuse weight ``[I | I]``, bias 0 (ValueError with
            a ``norm``).
    """

    label = "concat (FPN-cat)"
    own_modules = ("fuse",)

    @classmethod
    def build(cls, channels, *, norm, upsample_mode, top, start_as_fpn, **_unused):
        return cls(channels, norm=norm, upsample_mode=upsample_mode, top=top, start_as_fpn=start_as_fpn)

    @classmethod
    def start_as_sum_refusal(cls, norm: str, top: bool) -> Optional[str]:
        # the top level's concat has no fuse conv, so only the others need norm=""
        return CONCAT_NORM_CANNOT_START_AS_SUM.format(norm) if norm and not top else None

    def __init__(
        self,
        channels: int,
        *,
        norm: str = "",
        upsample_mode: Optional[str] = None,
        top: bool = False,
        start_as_fpn: bool = False,
    ):
        super().__init__(upsample_mode)
        _check_start_as_fpn(start_as_fpn)
        if start_as_fpn and norm and not top:
            raise ValueError(CONCAT_NORM_CANNOT_START_AS_SUM.format(norm))
        self.fuse: Optional[nn.Module] = None
        if not top:  # the top level has nothing to concatenate: no (unused) conv
            self.fuse = Conv2d(
                2 * channels, channels, kernel_size=1, bias=norm == "", norm=get_norm(norm, channels)
            )
            weight_init.c2_xavier_fill(self.fuse)
            if start_as_fpn:
                self.init_as_sum()

    def init_as_sum(self) -> None:
        """Fuse weight ``[I | I]``, bias 0: ``Conv1x1([F, U]) = F + U``."""
        if self.fuse is None:
            return
        if self.fuse.norm is not None or self.fuse.bias is None:
            raise ValueError(CONCAT_NORM_CANNOT_START_AS_SUM.format(type(self.fuse.norm).__name__))
        c = self.fuse.out_channels
        with torch.no_grad():
            eye = torch.eye(c, dtype=self.fuse.weight.dtype, device=self.fuse.weight.device)
            self.fuse.weight.copy_(torch.cat([eye, eye], dim=1)[:, :, None, None])  # (C, 2C, 1, 1)
            self.fuse.bias.zero_()

    def forward(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        if top_down is None or self.fuse is None:
            return lateral
        return self.fuse(torch.cat([lateral, self.up(top_down, lateral)], dim=1))  # (N, 2C, H, W) -> (N, C, H, W)


class _AttentionAggregation(Aggregation):
    default_upsample_mode = "bilinear"
    uses_attention = True
    own_modules = ("attn",)

    @classmethod
    def build(cls, channels, *, num_heads, pooling, pool_stride, adaptive_pool_size, mlp_ratio, upsample_mode,
              checkpoint_mlp, start_as_fpn, **_unused):
        return cls(channels, num_heads=num_heads, pooling=pooling, pool_stride=pool_stride,
                   adaptive_pool_size=adaptive_pool_size, mlp_ratio=mlp_ratio, upsample_mode=upsample_mode,
                   checkpoint_mlp=checkpoint_mlp, start_as_fpn=start_as_fpn)

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        pooling: str = "multi_scale",
        pool_stride: int = 16,
        adaptive_pool_size: int = 7,
        mlp_ratio: float = 2.0,
        upsample_mode: Optional[str] = None,
        checkpoint_mlp: bool = False,
        start_as_fpn: bool = False,
    ):
        super().__init__(upsample_mode)
        _check_start_as_fpn(start_as_fpn)
        if start_as_fpn and not self.can_start_as_sum:
            raise ValueError(self.start_as_sum_refusal("", top=False))
        self.attn = MSAttention(
            channels,
            num_heads,
            pooling=pooling,
            pool_stride=pool_stride,
            adaptive_pool_size=adaptive_pool_size,
            mlp_ratio=mlp_ratio,
            checkpoint_mlp=checkpoint_mlp,
        )
        self.reference = False  # True: the straightforward path (tests, ``benchmark --reference``)
        if start_as_fpn:
            self.init_as_sum()

    def forward(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        if self.reference:
            return self.forward_reference(lateral, top_down)
        return self.forward_fast(lateral, top_down)

    def forward_fast(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        """The operator in channels-last tokens; returns a channels_last (N, C, H, W) view."""
        raise NotImplementedError

    def forward_reference(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        """The operator as the equations read, with :meth:`MSAttention.forward_reference`."""
        raise NotImplementedError

    def attention_inputs(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """MS-Att's query and key/value maps ``(x_q, x_kv)`` for this operator's inputs ``F_i``, ``P_{i+1}``:
        what :meth:`forward_reference` gives ``self.attn``, and what the attention maps weigh
        (:meth:`MSAttention.attention_weights`).

        Args:
            lateral: F_i, Tensor of shape (N, C, H, W).
            top_down: P_{i+1}, Tensor of shape (N, C, h, w), or None on the top level.

        Returns:
            (x_q, x_kv): Tensors of shape (N, C, H, W) each.
        """
        raise NotImplementedError


class MSSAAggregation(_AttentionAggregation):
    """MSSA (paper §3.1): ``R_i = F_i + Up(P_{i+1})`` (eq. 1), ``P_i = MS-Att(R_i)`` (eq. 2).

    Top level: ``P = MS-Att(F)``. Args as :class:`MSAttention`, plus ``upsample_mode`` and
    ``start_as_fpn`` (:meth:`init_as_sum` at construction).
    """

    label = "MSSA"
    is_default = True

    def forward_fast(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        if top_down is None:
            return self.attn(lateral)  # eq. (2)
        h, w = lateral.shape[-2], lateral.shape[-1]  # traced, not constants, under export
        # eq. (1) in tokens: (N, H*W, C), contiguous whatever the inputs' memory formats
        r = add_tokens(token_view(lateral), token_view(self.up(top_down, lateral)))
        return from_tokens(self.attn.forward_tokens(r, (h, w), from_tokens(r, (h, w))), (h, w))  # eq. (2)

    def forward_reference(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        return self.attn.forward_reference(*self.attention_inputs(lateral, top_down))  # eq. (2)

    def attention_inputs(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``R_i = F_i + Up(P_{i+1})`` (eq. 1; ``F`` on the top level), both query and key/value."""
        r = lateral if top_down is None else lateral + self.up(top_down, lateral)  # eq. (1)
        return r, r

    def init_as_sum(self) -> None:
        """DW-MLP's last linear at zero: ``MS-Att(R) = R + DW-MLP(...) = R``, so ``P_i = R_i``, FPN's sum
        (with ``Up`` nearest; with the paper's bilinear ``Up`` it is the sum of a bilinear upsampling)."""
        self.attn.init_as_identity()


class MSCAAggregation(_AttentionAggregation):
    """MSCA (paper §3.2): ``S_i = MS-Att(F_i, Up(P_{i+1}))`` (eq. 3), ``P_i = F_i + S_i`` (eq. 4).

    Top level: ``P = F + MS-Att(F, F)``. Args as :class:`MSAttention`, plus ``upsample_mode``;
    ``start_as_fpn=True`` raises ValueError (:data:`MSCA_CANNOT_START_AS_SUM`).
    """

    label = "MSCA"

    can_start_as_sum = False

    @classmethod
    def start_as_sum_refusal(cls, norm: str, top: bool) -> Optional[str]:
        return MSCA_CANNOT_START_AS_SUM

    def forward_fast(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        h, w = lateral.shape[-2], lateral.shape[-1]  # traced, not constants, under export
        kv = lateral if top_down is None else self.up(top_down, lateral)
        f = to_tokens(lateral)  # (N, H*W, C)
        s = self.attn.forward_tokens(f, (h, w), kv)  # eq. (3), (N, H*W, C), a fresh tensor
        # eq. (4): F_i + S_i, in place; S_i = f + mlp, so ((mlp + f) + f) equals f + (f + mlp)
        s = _add_residual(s, f)
        return from_tokens(s, (h, w))

    def forward_reference(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tensor:
        x_q, x_kv = self.attention_inputs(lateral, top_down)
        return lateral + self.attn.forward_reference(x_q, x_kv)  # eqs. (3)-(4)

    def attention_inputs(self, lateral: Tensor, top_down: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Query ``F_i``, key/value ``Up(P_{i+1})`` (eq. 3; ``F`` on the top level)."""
        return lateral, (lateral if top_down is None else self.up(top_down, lateral))

    def init_as_sum(self) -> None:
        raise ValueError(MSCA_CANNOT_START_AS_SUM)


def use_reference_path(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every MSSA / MSCA operator in ``module`` to (or back from) the straightforward path.

    The straightforward path (:meth:`MSAttention.forward_reference`: NCHW in and out,
    out-of-place) computes the same operator with the same weights as the default fast path
    (channels-last tokens, in-place residuals); it is kept to test and benchmark the fast one.
    Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, _AttentionAggregation):
            m.reference = bool(enabled)
    return module


def use_checkpoint_mlp(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Turn on (or off) the DW-MLP recompute of every :class:`MSAttention` in ``module``.

    The same switch as ``AttentionFPN(checkpoint_mlp=True)`` (``model.backbone.checkpoint_mlp``),
    for a model already built: outputs and gradients are unchanged, training keeps fewer
    activations and runs the DW-MLP forward twice. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, MSAttention):
            m.checkpoint_mlp = bool(enabled)
    return module


AGGREGATION_OPS: Dict[str, Type[Aggregation]] = {
    "sum": SumAggregation,
    "concat": ConcatAggregation,
    "mssa": MSSAAggregation,
    "msca": MSCAAggregation,
}


def baseline_operator() -> str:
    """The registry name of the operator the others are compared against (FPN's sum)."""
    return next(name for name, cls in AGGREGATION_OPS.items() if cls.is_baseline)


def attention_operators() -> List[str]:
    """The registry names of the operators that use attention (MS-Att), in the registry's order."""
    return [name for name, cls in AGGREGATION_OPS.items() if cls.uses_attention]


def default_operator() -> str:
    """The registry name of the operator AttentionFPN builds when none is named."""
    return next(name for name, cls in AGGREGATION_OPS.items() if cls.is_default)


def operators_with_modules(module_names: Iterable[str]) -> List[str]:
    """The registry names of the operators whose own weights a level of a state dict holds, given the names of
    that level's direct submodules (``fuse``, ``attn``, ...): those owning the most of them. Several when the
    weights cannot tell them apart (MSSA and MSCA have the same modules)."""
    present = set(module_names)
    fits = {name: len(cls.own_modules) for name, cls in AGGREGATION_OPS.items() if set(cls.own_modules) <= present}
    best = max(fits.values())
    return sorted(name for name, n in fits.items() if n == best)


def operator_label(name: str) -> str:
    """How tables name the operator ``name`` of :data:`AGGREGATION_OPS` (the name itself if unknown)."""
    cls = AGGREGATION_OPS.get(name)
    return cls.label if cls is not None and cls.label else name


def build_aggregation(
    name: str,
    channels: int,
    *,
    norm: str = "",
    upsample_mode: Optional[str] = None,
    num_heads: int = 4,
    pooling: str = "multi_scale",
    pool_stride: int = 16,
    adaptive_pool_size: int = 7,
    mlp_ratio: float = 2.0,
    checkpoint_mlp: bool = False,
    top: bool = False,
    start_as_fpn: bool = False,
) -> Aggregation:
    """Build the operator ``name`` (one of :data:`AGGREGATION_OPS`) for ``channels`` channels.

    ``top``: for the top level (no deeper input; "concat" then has no conv).
    ``start_as_fpn``: initialise the operator as FPN's sum (see the module doc; ValueError for
    "msca", and for "concat" with a ``norm``).
    ``norm`` is used by "concat" only; ``num_heads``, ``pooling``, ``pool_stride``,
    ``adaptive_pool_size``, ``mlp_ratio`` and ``checkpoint_mlp`` by "mssa" / "msca" only (see
    :class:`MSAttention`).
    """
    if name not in AGGREGATION_OPS:
        raise ValueError(
            "unknown aggregation operator {!r}; valid: {}".format(name, list(AGGREGATION_OPS))
        )
    return AGGREGATION_OPS[name].build(
        channels,
        norm=norm,
        upsample_mode=upsample_mode,
        num_heads=num_heads,
        pooling=pooling,
        pool_stride=pool_stride,
        adaptive_pool_size=adaptive_pool_size,
        mlp_ratio=mlp_ratio,
        checkpoint_mlp=checkpoint_mlp,
        top=top,
        start_as_fpn=start_as_fpn,
    )
