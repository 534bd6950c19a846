"""Attention maps: for query points of an image, every MS-Att block's weights over its pooled key/value
tokens, per head, each token placed over the window of the key/value map it averages.

The weights are the blocks' own: forward hooks on the aggregation modules capture each block's inputs
``(F_i, P_{i+1})`` during the model's own backbone forward (the model's code is not changed); the
operator turns them into MS-Att's query and key/value maps (``Aggregation.attention_inputs``, what its
reference path attends with); :meth:`~afa_d2.modeling.MSAttention.attention_weights` gives the softmax
over the pooled tokens, and :meth:`~afa_d2.modeling.MSAttention.pool_windows` each token's window
(multi-scale pooling has two pools, strides ``r`` and ``2r``). The tests check that the block recomputed
from the captured inputs gives the captured output and that the weights reproduce the block's
``scaled_dot_product_attention``. :mod:`.drawing` paints the result.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from afa_d2.modeling.aggregation import attention_operators

from .errors import VisualizeInputError
from .models import LoadedModel, prepare_input
from .pyramid import find_pyramid, operator_label

__all__ = [
    "CapturedBlock",
    "LevelAttention",
    "PoolRegions",
    "QueryAttention",
    "attention_maps",
    "capture_aggregations",
    "grid_points",
    "kv_token_regions",
    "paint_tokens",
]


@dataclass
class CapturedBlock:
    """One aggregation module's call: its inputs ``F_i`` (lateral), ``P_{i+1}`` (top_down) and output ``P_i``."""

    level: str
    module: nn.Module
    lateral: Tensor
    top_down: Optional[Tensor]
    output: Tensor


def capture_aggregations(model: nn.Module, inputs: List[dict]) -> "OrderedDict[str, CapturedBlock]":
    """Run the model's backbone once on ``inputs`` and capture every attention block's inputs and output.

    Forward hooks on the pyramid's ``fpn_aggregation<s>`` modules, removed afterwards; the forward
    itself is the model's own (``model.backbone(model.preprocess_image(inputs).tensor)``, what the
    detector's forward runs first; the heads do not change the pyramid).

    Args:
        model: a detectron2 meta-architecture, eval mode.
        inputs: its input dicts (``{"image": Tensor of shape (3, H, W), ...}``).

    Returns:
        level ("p2".."p5") -> :class:`CapturedBlock`, for the levels that use attention.
    """
    _, neck = find_pyramid(model)
    blocks: "OrderedDict[str, CapturedBlock]" = OrderedDict()
    handles = []
    if neck is not None:
        for name, module in neck.named_children():
            if name.startswith("fpn_aggregation") and getattr(module, "uses_attention", False):
                level = "p" + name[len("fpn_aggregation"):]

                def hook(mod, args, output, level=level):
                    lateral = args[0]
                    top_down = args[1] if len(args) > 1 else None
                    blocks[level] = CapturedBlock(level, mod, lateral.detach(),
                                                  None if top_down is None else top_down.detach(), output.detach())

                handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.backbone(model.preprocess_image(inputs).tensor)
    finally:
        for h in handles:
            h.remove()
    return OrderedDict(sorted(blocks.items(), key=lambda kv: int(kv[0][1:])))


@dataclass
class PoolRegions:
    """Where one pool's tokens come from on the key/value map.

    Attributes:
        name: e.g. "r=16", "r=32", "7x7 adaptive".
        grid: (h, w) of the pool's output; its h*w tokens are in row-major order.
        boxes: int array of shape (h*w, 4): (y0, y1, x0, x1) of each token's window, in key/value map cells.
    """

    name: str
    grid: Tuple[int, int]
    boxes: np.ndarray


def kv_token_regions(attn: nn.Module, kv_hw: Tuple[int, int]) -> List[PoolRegions]:
    """The window of every pooled key/value token of ``attn`` on a key/value map of size ``kv_hw``.

    In the order of :func:`~afa_d2.modeling.pooling.pool_tokens`: pool after pool, row-major
    within a pool; token t of the result is the average of ``x_kv`` over its window.

    Args:
        attn: an :class:`~afa_d2.modeling.MSAttention`.
        kv_hw: (H', W') of the key/value map.

    Returns:
        list[PoolRegions]: one per pool (two for multi-scale, strides r and 2r).
    """
    return [PoolRegions(pool.name, pool.out, np.array(pool.token_windows(), dtype=np.int64).reshape(-1, 4))
            for pool in attn.pool_windows(int(kv_hw[0]), int(kv_hw[1]))]


def paint_tokens(weights: np.ndarray, boxes: np.ndarray, grid_hw: Tuple[int, int]) -> np.ndarray:
    """Each token's weight painted over its window: float array of shape ``grid_hw`` (summed where windows overlap).

    Args:
        weights: array of shape (m,), one weight per token.
        boxes: int array of shape (m, 4), (y0, y1, x0, x1) per token.
        grid_hw: (H', W') of the key/value map.
    """
    out = np.zeros(grid_hw, dtype=np.float64)
    for wt, (y0, y1, x0, x1) in zip(weights, boxes):
        out[y0:y1, x0:x1] += wt
    return out


@dataclass
class LevelAttention:
    """The attention of one query point at one level.

    Attributes:
        level: "p2".."p5"; op: the operator's label; stride: the level's stride in network-input pixels.
        cell: (row, col) of the query on the level's grid.
        weights: array of shape (heads, M), each row sums to 1 (the softmax over the M tokens).
        pools: :class:`PoolRegions` of the M tokens, in order.
        kv_hw: (H', W') of the key/value map (= the level's grid).
    """

    level: str
    op: str
    stride: int
    cell: Tuple[int, int]
    weights: np.ndarray
    pools: List[PoolRegions]
    kv_hw: Tuple[int, int]

    def pool_slices(self) -> List[slice]:
        """The token range of each pool in ``weights``' last axis."""
        out, start = [], 0
        for p in self.pools:
            n = len(p.boxes)
            out.append(slice(start, start + n))
            start += n
        return out

    def cell_maps(self, head: Optional[int] = None) -> List[np.ndarray]:
        """One (H', W') map per pool: the head's (or the heads' mean) weights painted on the key/value grid."""
        w = self.weights.mean(axis=0) if head is None else self.weights[head]
        return [paint_tokens(w[s], p.boxes, self.kv_hw) for s, p in zip(self.pool_slices(), self.pools)]


@dataclass
class QueryAttention:
    """Every attention level's weights for one query point ``point`` = (x, y), in image pixels."""

    point: Tuple[float, float]
    image_hw: Tuple[int, int]
    input_hw: Tuple[int, int]
    levels: List[LevelAttention] = field(default_factory=list)


def grid_points(image_hw: Tuple[int, int], rows: int, cols: int) -> List[Tuple[float, float]]:
    """``rows`` x ``cols`` query points (x, y) at the centres of an even grid over an image of size (H, W)."""
    if rows <= 0 or cols <= 0:
        raise VisualizeInputError("--grid {}x{}: need at least 1x1 (e.g. 3x3)".format(rows, cols))
    h, w = image_hw
    return [((j + 0.5) * w / cols, (i + 0.5) * h / rows) for i in range(rows) for j in range(cols)]


def _check_point(point: Tuple[float, float], image_hw: Tuple[int, int], name: str) -> None:
    x, y = point
    h, w = image_hw
    if not (0 <= x < w and 0 <= y < h):
        raise VisualizeInputError("query point ({:g}, {:g}) is outside the image {} of {}x{} (W x H); valid: "
                                  "0 <= x < {}, 0 <= y < {}".format(x, y, name, w, h, w, h))


def attention_maps(lm: LoadedModel, rgb: np.ndarray, points: Sequence[Tuple[float, float]],
                   levels: Optional[Sequence[str]] = None, image_name: str = "the image") -> List[QueryAttention]:
    """The attention of every MS-Att block of ``lm`` for each query point, recomputed from the blocks' weights.

    Args:
        lm: a model with attention blocks (an operator whose ``uses_attention`` is set) on some level.
        rgb: the image, array of shape (H, W, 3) uint8 RGB.
        points: query points (x, y) in the image's pixels.
        levels: the levels to keep (default: every attention level).
        image_name: how errors name the image.

    Returns:
        one :class:`QueryAttention` per point.

    Raises:
        VisualizeInputError: a point outside the image, a level without attention, a model without attention.
    """
    if not points:
        raise VisualizeInputError("no query point: pass --point X Y or --grid RxC")
    image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    for p in points:
        _check_point(p, image_hw, image_name)
    prep = prepare_input(lm, rgb)
    blocks = capture_aggregations(lm.model, [prep.inputs])
    if not blocks:
        attention_ops = " or ".join(attention_operators())
        raise VisualizeInputError("{} ({}) has no attention block (operator {}): attention maps need {} on some "
                                  "level".format(lm.label, lm.config_name, operator_label(find_pyramid(lm.model)[1]),
                                                 attention_ops))
    if levels:
        bad = [lvl for lvl in levels if lvl not in blocks]
        if bad:
            raise VisualizeInputError("level {} has no attention in {}; valid: {}".format(
                bad[0], lm.label, ", ".join(blocks)))
        blocks = OrderedDict((k, v) for k, v in blocks.items() if k in levels)
    _, neck = find_pyramid(lm.model)
    strides = {k: v.stride for k, v in neck.output_shape().items()}
    in_xy = prep.transforms.apply_coords(np.asarray(points, dtype=np.float64).reshape(-1, 2))  # network input (x, y)
    results = [QueryAttention((float(x), float(y)), image_hw, prep.input_hw) for x, y in points]
    for level, block in blocks.items():
        x_q, x_kv = block.module.attention_inputs(block.lateral, block.top_down)
        h, w = int(x_q.shape[-2]), int(x_q.shape[-1])
        s = strides[level]
        cells = [(min(max(int(y // s), 0), h - 1), min(max(int(x // s), 0), w - 1)) for x, y in in_xy]
        with torch.no_grad():
            weights = block.module.attn.attention_weights(x_q, x_kv, [r * w + c for r, c in cells])
        weights = weights[0].cpu().numpy()  # (heads, Q, M)
        pools = kv_token_regions(block.module.attn, (int(x_kv.shape[-2]), int(x_kv.shape[-1])))
        for k, qa in enumerate(results):
            qa.levels.append(LevelAttention(level, block.module.label, s, cells[k],
                                            weights[:, k].astype(np.float64), pools,
                                            (int(x_kv.shape[-2]), int(x_kv.shape[-1]))))
    return results
