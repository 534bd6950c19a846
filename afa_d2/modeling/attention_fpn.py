"""AttentionFPN: detectron2's FPN with the top-down sum replaced by a chosen operator per level.

The paper's pyramid (§3, Fig. 1; docs/DESIGN.md, "The method"): lateral 1x1 convs give ``F_i`` (256 channels);
aggregation runs top-down from the deepest level, ``P_i = op_i(F_i, P_{i+1})``, with ``op_i`` one
of :data:`~afa_d2.modeling.aggregation.AGGREGATION_OPS`; FPN's 3x3 output convs follow on every
level; ``p6`` is a max-pool of ``p5`` (``LastLevelMaxPool``). The operator is the only
difference between variants, and with "sum" on every level the module *is* detectron2's FPN:
same submodule names (``fpn_lateral{s}``, ``fpn_output{s}``), so an FPN checkpoint loads, and the
same outputs.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import Tensor, nn

from .aggregation import (
    AGGREGATION_OPS,
    UPSAMPLE_MODES,
    baseline_operator,
    build_aggregation,
    default_operator,
)
from .ms_attention import check_attention_args

__all__ = ["AttentionFPN", "POOLED_STRIDE", "default_pool_strides"]


def _check_start_as_sum(ops: Mapping[str, str], levels: Sequence[str], norm: str,
                        what: str = "start_as_fpn=True") -> None:
    """ValueError naming the levels of the first operator (in level order) that cannot start as FPN's sum
    with ``norm``; the operator says why (:meth:`Aggregation.start_as_sum_refusal`)."""
    refused = [(lvl, AGGREGATION_OPS[ops[lvl]].start_as_sum_refusal(norm, top=lvl == levels[-1])) for lvl in levels]
    refused = [(lvl, why) for lvl, why in refused if why]
    if refused:
        op = ops[refused[0][0]]
        raise ValueError("{} with {} on {}: {}".format(
            what, op, [lvl for lvl, _ in refused if ops[lvl] == op], refused[0][1]))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


#: MS-Att pools every level down to about this stride (docs/DESIGN.md, "Beyond the paper's two detectors")
POOLED_STRIDE = 64


def default_pool_strides(strides: Sequence[int]) -> List[int]:
    """The pooling stride r_i of each level from its stride: ``POOLED_STRIDE / stride``, at least 1.

    The paper's (16, 8, 4, 2) for p2..p5 (strides 4..32) is this rule: every level's pooled tokens lie
    on the same stride-64 grid. A pyramid from res3 (RetinaNet, FCOS) gets (8, 4, 2) for p3..p5.
    """
    return [max(1, POOLED_STRIDE // int(s)) for s in strides]


def _pyramid_levels(bottom_up, in_features):
    """(in_features, strides, channels, levels) of the pyramid, checked against the bottom-up."""
    if not isinstance(bottom_up, Backbone):
        raise ValueError(
            "bottom_up must be a detectron2 Backbone, got {}".format(type(bottom_up).__name__)
        )
    in_features = list(in_features)
    input_shapes = bottom_up.output_shape()
    if not in_features:
        raise ValueError("in_features is empty; valid: {}".format(list(input_shapes)))
    for f in in_features:
        if f not in input_shapes:
            raise ValueError(
                "unknown in_feature {!r}; the bottom-up gives {}".format(f, list(input_shapes))
            )
    strides = [input_shapes[f].stride for f in in_features]
    for i in range(1, len(strides)):
        if strides[i] != 2 * strides[i - 1]:
            raise ValueError(
                "in_features {} have strides {}, which are not log2-contiguous".format(in_features, strides)
            )
    levels = ["p{}".format(int(math.log2(s))) for s in strides]
    return in_features, strides, [input_shapes[f].channels for f in in_features], levels


def _level_operators(aggregation, attention_levels, levels: Sequence[str]) -> Dict[str, str]:
    """The operator of every level, from ``aggregation`` (str or dict) and ``attention_levels``."""
    if isinstance(aggregation, str):
        if aggregation not in AGGREGATION_OPS:
            raise ValueError(
                "unknown aggregation {!r}; valid: {}".format(aggregation, list(AGGREGATION_OPS))
            )
        if attention_levels is None:
            attention_levels = levels
        if isinstance(attention_levels, str):
            raise ValueError(
                "attention_levels must be a list of level names, got the str {!r}; "
                "valid names: {}".format(attention_levels, list(levels))
            )
        for lvl in attention_levels:
            if lvl not in levels:
                raise ValueError(
                    "unknown level {!r} in attention_levels; this pyramid's levels: {}".format(lvl, list(levels))
                )
        return {lvl: (aggregation if lvl in attention_levels else baseline_operator()) for lvl in levels}
    if isinstance(aggregation, Mapping):
        for lvl, op in aggregation.items():
            if lvl not in levels:
                raise ValueError(
                    "unknown level {!r} in aggregation; this pyramid's levels: {}".format(lvl, list(levels))
                )
            if op not in AGGREGATION_OPS:
                raise ValueError(
                    "unknown aggregation {!r} for level {}; valid: {}".format(op, lvl, list(AGGREGATION_OPS))
                )
        return {lvl: aggregation.get(lvl, baseline_operator()) for lvl in levels}
    raise ValueError(
        "aggregation must be a str or a dict level -> str, got {!r}; valid operators: "
        "{}".format(aggregation, list(AGGREGATION_OPS))
    )


def _level_pool_strides(pool_strides, in_features, strides, levels) -> List[int]:
    """``pool_strides`` as a list, one per level, or the levels' defaults when None."""
    if pool_strides is None:
        return default_pool_strides(strides)
    if isinstance(pool_strides, (str, int)):
        raise ValueError("pool_strides must be a list of ints, one per level {}, got {!r}".format(
            list(levels), pool_strides))
    pool_strides = list(pool_strides)
    if len(pool_strides) != len(in_features):
        raise ValueError(
            "pool_strides {} has {} entries; need one per in_feature {} (levels {}), e.g. {} "
            "(or None for that default)".format(pool_strides, len(pool_strides), list(in_features), list(levels),
                                                default_pool_strides(strides))
        )
    return pool_strides


def _check_top_block(top_block, input_shapes: Mapping[str, ShapeSpec], levels: Sequence[str], top_stride: int,
                     out_channels: int) -> None:
    """A top block must read the deepest level (or a bottom-up map of its stride) with the right channels."""
    if top_block is None:
        return
    for attr in ("in_feature", "num_levels"):
        if not hasattr(top_block, attr):
            raise ValueError("top_block {} has no {!r}; a detectron2 top block (LastLevelMaxPool, "
                             "LastLevelP6P7) is expected".format(type(top_block).__name__, attr))
    source = top_block.in_feature
    valid = [levels[-1]] + [f for f, shape in input_shapes.items() if shape.stride == top_stride]
    if source not in valid:
        raise ValueError("top_block {} reads {!r}, which this pyramid does not give at its deepest stride {}; "
                         "valid: {}".format(type(top_block).__name__, source, top_stride, valid))
    channels = out_channels if source == levels[-1] else input_shapes[source].channels
    first = getattr(top_block, "p6", None)
    if isinstance(first, nn.Conv2d) and first.in_channels != channels:
        raise ValueError("top_block {} takes {} channels from {!r}, which has {} (in_channels={} would fit)".format(
            type(top_block).__name__, first.in_channels, source, channels, channels))

def _check_options(start_as_fpn, upsample_mode, fuse_type, square_pad) -> None:
    """AttentionFPN's scalar options, each refused with its value and the valid ones."""
    if not isinstance(start_as_fpn, bool):
        raise ValueError("start_as_fpn must be a bool, got {!r}".format(start_as_fpn))
    if upsample_mode is not None and upsample_mode not in UPSAMPLE_MODES:
        raise ValueError("unknown upsample_mode {!r}; valid: {} or None".format(upsample_mode, list(UPSAMPLE_MODES)))
    if fuse_type != "sum":
        raise ValueError("fuse_type {!r} is not supported; valid: ['sum'] (the operator fuses)".format(fuse_type))
    if not isinstance(square_pad, int) or square_pad < 0:
        raise ValueError("square_pad must be an int >= 0, got {!r}".format(square_pad))


def _fpn_convs(in_channels: Sequence[int], out_channels: int, norm: str) -> Tuple[List[nn.Module], List[nn.Module]]:
    """The lateral 1x1 and output 3x3 convolutions of every level, high to low resolution, initialised as
    detectron2's FPN initialises them (bias only without a norm)."""
    use_bias = norm == ""
    lateral_convs, output_convs = [], []
    for c_in in in_channels:
        lateral_conv = Conv2d(c_in, out_channels, kernel_size=1, bias=use_bias, norm=get_norm(norm, out_channels))
        output_conv = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=use_bias,
                             norm=get_norm(norm, out_channels))
        weight_init.c2_xavier_fill(lateral_conv)
        weight_init.c2_xavier_fill(output_conv)
        lateral_convs.append(lateral_conv)
        output_convs.append(output_conv)
    return lateral_convs, output_convs


def _output_strides(levels: Sequence[str], strides: Sequence[int], top_block: Optional[nn.Module]) -> Dict[str, int]:
    """Output name -> stride: the pyramid's levels, then the top block's extra levels (p6, p7)."""
    out = {lvl: s for lvl, s in zip(levels, strides)}
    if top_block is not None:
        stage = int(math.log2(strides[-1]))
        for s in range(stage, stage + top_block.num_levels):
            out["p{}".format(s + 1)] = 2 ** (s + 1)
    return out


class AttentionFPN(Backbone):
    """Feature pyramid with attention-based aggregation (MSSA / MSCA, paper §3).

    Outputs ``p2..p6`` (strides 4..64 for res2..res5 inputs), ``out_channels`` each, like
    detectron2's :class:`~detectron2.modeling.backbone.FPN`.
    """

    @configurable
    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int = 256,
        *,
        aggregation: Union[str, Mapping[str, str], None] = None,
        attention_levels: Optional[Sequence[str]] = None,
        pooling: str = "multi_scale",
        pool_strides: Optional[Sequence[int]] = None,
        adaptive_pool_size: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        checkpoint_mlp: bool = False,
        start_as_fpn: bool = False,
        upsample_mode: Optional[str] = None,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ):
        """
        Args:
            bottom_up (Backbone): gives the multi-scale maps named in ``in_features``.
            in_features (list[str]): bottom-up maps used, high to low resolution, strides
                log2-contiguous, e.g. ``["res2", "res3", "res4", "res5"]``.
            out_channels (int): channels C of ``F_i`` and of every output.
            aggregation (str or dict[str, str] or None): the operator ("sum", "concat", "mssa", "msca")
                used on ``attention_levels``; or a dict mapping a level ("p2".."p5") to an
                operator, levels left out using "sum" (then ``attention_levels`` is not used);
                None: the registry's default operator (MSSA, ``default_operator()``).
            attention_levels (list[str] or None): levels using ``aggregation`` when it is a str; the
                others use "sum" (paper Table 4). Names are this pyramid's levels
                ``p<log2 stride>`` of ``in_features`` (p2..p5 for res2..res5, p3..p5 for res3..res5);
                None: every level.
            pooling (str): key/value pooling of MS-Att: "multi_scale", "single_scale",
                "adaptive" (paper Table 5).
            pool_strides (list[int] or None): r_i per level, one per ``in_features`` (high to low
                resolution); None: derived from the levels present, ``64 / stride`` (at least 1), the
                paper's (16, 8, 4, 2) for p2..p5 and (8, 4, 2) for p3..p5 (:func:`default_pool_strides`).
            adaptive_pool_size (int): side of the "adaptive" pool.
            num_heads (int): attention heads; must divide ``out_channels``.
            mlp_ratio (float): DW-MLP expansion.
            checkpoint_mlp (bool): recompute each MS-Att's DW-MLP branch in backward instead
                of keeping its activations (training memory for time; same values and
                gradients; see :class:`~afa_d2.modeling.MSAttention`).
            start_as_fpn (bool): initialise each operator's own weights so that it computes FPN's
                sum (MSSA: the DW-MLP's last linear at zero; concat: fuse ``[I | I]``, bias 0;
                sum: nothing to do); with ``upsample_mode="nearest"`` the pyramid then equals
                detectron2's FPN exactly, for fine-tuning from an FPN checkpoint (its weights
                have no ``fpn_aggregation*`` keys, so loading it keeps this start). ValueError
                with "msca" on any level (it cannot be the sum) and with "concat" and a ``norm``.
            upsample_mode (str or None): ``Up`` for every operator; None: bilinear for
                MSSA/MSCA (paper), nearest for sum/concat (FPN).
            norm (str): detectron2 norm of the lateral, output and concat convs ("" for none).
            top_block (nn.Module or None): extra levels, as in FPN: ``LastLevelMaxPool()`` for p6 (the
                R-CNNs), ``LastLevelP6P7(C, out_channels, in_feature)`` for p6, p7 (RetinaNet from res5,
                FCOS from p5). Its ``in_feature`` must be the deepest pyramid level or a bottom-up map of
                the same stride, and a ``p6`` conv must take that map's channels.
            fuse_type (str): accepted for FPN parity; only "sum" (the operator does the fusing).
            square_pad (int): if > 0, pad inputs to this square size (``padding_constraints``).
        """
        super().__init__()
        in_features, strides, in_channels, levels = _pyramid_levels(bottom_up, in_features)
        if not _positive_int(out_channels):
            raise ValueError("out_channels must be a positive int, got {!r}".format(out_channels))
        ops = _level_operators(default_operator() if aggregation is None else aggregation, attention_levels, levels)
        pool_strides = _level_pool_strides(pool_strides, in_features, strides, levels)
        # checked whatever the operators, so that a typo never hides behind "sum"
        check_attention_args(
            dim=out_channels, num_heads=num_heads, pooling=pooling, pool_strides=pool_strides,
            adaptive_pool_size=adaptive_pool_size, mlp_ratio=mlp_ratio, checkpoint_mlp=checkpoint_mlp,
            where="AttentionFPN", dim_name="out_channels", strides_name="pool_strides",
        )
        _check_options(start_as_fpn, upsample_mode, fuse_type, square_pad)
        if start_as_fpn:
            _check_start_as_sum(ops, levels, norm)
        _check_top_block(top_block, bottom_up.output_shape(), levels, strides[-1], out_channels)

        # ---- modules, named as detectron2's FPN names them. The convolutions every operator has are
        # built first, the operators after them: with the same random state, two pyramids that differ
        # only in their operators start with the same lateral and output convolutions
        # (docs/DESIGN.md, "Paired initialisation").
        lateral_convs, output_convs = _fpn_convs(in_channels, out_channels, norm)
        aggregations = [
            build_aggregation(
                ops[levels[idx]],
                out_channels,
                norm=norm,
                upsample_mode=upsample_mode,
                num_heads=num_heads,
                pooling=pooling,
                pool_stride=pool_strides[idx],
                adaptive_pool_size=adaptive_pool_size,
                mlp_ratio=mlp_ratio,
                checkpoint_mlp=checkpoint_mlp,
                top=idx == len(in_channels) - 1,
                start_as_fpn=start_as_fpn,
            )
            for idx in range(len(in_channels))
        ]
        # registered per level in FPN's order (the parameters' order, which an optimizer state follows)
        for stride, lateral_conv, output_conv, agg in zip(strides, lateral_convs, output_convs, aggregations):
            stage = int(math.log2(stride))
            self.add_module("fpn_lateral{}".format(stage), lateral_conv)
            self.add_module("fpn_output{}".format(stage), output_conv)
            self.add_module("fpn_aggregation{}".format(stage), agg)
        # top-down order (low to high resolution); plain lists, the modules are registered above
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.aggregations = aggregations[::-1]

        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up
        self.levels = tuple(levels)
        self.level_ops: Dict[str, str] = dict(ops)
        self.fpn_norm = norm
        self._out_feature_strides = _output_strides(levels, strides, top_block)
        self._out_features = list(self._out_feature_strides.keys())
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = max(strides[-1], int(getattr(bottom_up, "size_divisibility", 0)))
        self._square_pad = square_pad

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec, bottom_up: Optional[Backbone] = None,
                    top_block: Optional[nn.Module] = None):
        """yacs: ``MODEL.FPN.*`` as detectron2's ``build_resnet_fpn_backbone``, ``MODEL.AFA.*``.

        ``bottom_up`` defaults to detectron2's ResNet built from ``MODEL.RESNETS``, ``top_block`` to
        ``LastLevelMaxPool()`` (p6 for the R-CNNs; RetinaNet's builder passes ``LastLevelP6P7``).
        """
        if bottom_up is None:
            from detectron2.modeling.backbone.resnet import build_resnet_backbone

            bottom_up = build_resnet_backbone(cfg, input_shape)
        afa = cfg.MODEL.AFA
        return {
            "bottom_up": bottom_up,
            "in_features": list(cfg.MODEL.FPN.IN_FEATURES),
            "out_channels": cfg.MODEL.FPN.OUT_CHANNELS,
            "aggregation": afa.AGGREGATION,
            "attention_levels": list(afa.ATTENTION_LEVELS) or None,
            "pooling": afa.POOLING,
            "pool_strides": list(afa.POOL_STRIDES) or None,
            "adaptive_pool_size": afa.ADAPTIVE_POOL_SIZE,
            "num_heads": afa.NUM_HEADS,
            "mlp_ratio": afa.MLP_RATIO,
            "checkpoint_mlp": bool(afa.CHECKPOINT_MLP),
            "start_as_fpn": bool(afa.START_AS_FPN),
            "upsample_mode": afa.UPSAMPLE_MODE or None,
            "norm": cfg.MODEL.FPN.NORM,
            "top_block": LastLevelMaxPool() if top_block is None else top_block,
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
        }

    def init_as_fpn(self) -> None:
        """Re-initialise every operator's own weights as FPN's sum, in place: what
        ``start_as_fpn=True`` does at construction, for a model already built (the converter of
        :mod:`afa_d2.model_zoo.convert`). ValueError if an operator cannot (msca; concat with a norm).
        """
        _check_start_as_sum(self.level_ops, self.levels, self.fpn_norm, what="init_as_fpn")  # before any change
        aggregations = [getattr(self, "fpn_aggregation{}".format(lvl[1:])) for lvl in self.levels]
        for agg in aggregations:
            agg.init_as_sum()

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """detectron2's padding contract (newer versions read it; v0.6 reads ``size_divisibility``)."""
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: images, Tensor of shape (N, 3, H, W); any H, W (no need to pad to 32).

        Returns:
            dict[str, Tensor]: ``p2..p6`` -> Tensor of shape (N, C, ceil(H / s), ceil(W / s))
            for a ResNet bottom-up (s = the level's stride).
        """
        return self.aggregate(self.bottom_up(x))

    def aggregate(self, bottom_up_features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The neck alone: bottom-up maps (``in_features``) -> pyramid outputs."""
        results: List[Tensor] = []
        prev: Optional[Tensor] = None
        for idx, (lateral_conv, aggregation, output_conv) in enumerate(
            zip(self.lateral_convs, self.aggregations, self.output_convs)
        ):
            lateral = lateral_conv(bottom_up_features[self.in_features[-idx - 1]])  # F_i
            prev = aggregation(lateral, prev)  # P_i = op(F_i, P_{i+1})
            results.insert(0, output_conv(prev))
        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_in = bottom_up_features[self.top_block.in_feature]
            else:
                top_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        assert len(self._out_features) == len(results)
        return {f: res for f, res in zip(self._out_features, results)}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
