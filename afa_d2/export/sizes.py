"""The input sizes an exported graph serves: one graph for every padded size from a minimum up.

The graph declares H and W dynamic, and tracing keeps them so: AttentionFPN's operators pass the map
sizes on as they are (``lateral.shape[-2]``, no ``int()``) to ``Up`` (resized to ``F_i``'s exact size), to
MS-Att's token reshapes and to the DW-MLP's (N, H, W, C) view, and everything from detectron2 (padding,
anchors, proposals, RoI heads, the number of detections) is dynamic as well. What tracing does fix is
MS-Att's pooling kernels, ``min(r, H)`` per axis (an int, as ``avg_pool2d`` needs): they are ``r`` on every
map at least ``r`` wide, so the graph equals PyTorch for every input whose padded size puts each level's
map at or above its largest pooling stride, ``max(r) * level stride``, over the levels of the neck
(``backbone.levels``) that have an MS-Att block: 128x128 for the shipped strides 16, 8, 4, 2 on p2-p5 with
multi-scale pooling (32 x 4 on p2), and 128x128 too for RetinaNet's and FCOS's p3-p5 with 8, 4, 2 (16 x 8
on p3, 8 x 16 on p4, 4 x 32 on p5). Their p6 / p7 come from ``LastLevelP6P7``'s stride-2 convolutions,
which take any size, and their anchors, per-level candidates and NMS are dynamic, so the p3 start changes
nothing else (``tests/test_export.py`` runs graphs traced at one size on others).

:func:`afa_d2.export.export_model` records that minimum; a graph traced on a sample below it (its kernels
were clamped), one with ``pooling="adaptive"`` (the output grid is fixed) and one with a ``square_size``
pad serve only the sample's padded size. :class:`afa_d2.export.ExportedModel` checks the size first and
raises :class:`~afa_d2.export.ExportedSizeError`, one line naming both sizes and what to do; the
TorchScript file carries the same check in its own (scripted) forward. Files written before this rule
carry no minimum and keep their one padded size.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

__all__ = ["describe_sizes", "graph_size_limits", "graph_sizes", "padded_size", "served_sizes"]


def padding(model: nn.Module) -> Tuple[int, int]:
    """(size_divisibility, square_size) that ``model.preprocess_image`` pads with."""
    from detectron2.structures import ImageList

    div = int(getattr(model.backbone, "size_divisibility", 0) or 0)
    square = 0
    if "padding_constraints" in inspect.signature(ImageList.from_tensors).parameters:  # detectron2 after v0.6
        constraints = getattr(model.backbone, "padding_constraints", None) or {}
        div = int(constraints.get("size_divisibility", div) or 0)
        square = int(constraints.get("square_size", 0) or 0)
    return div, square


def padded_size(height: int, width: int, divisibility: int, square: int = 0) -> Tuple[int, int]:
    """The (H, W) an image of ``height`` x ``width`` is padded to, as detectron2's ``ImageList.from_tensors``.

    Args:
        height, width: the input's size.
        divisibility: the backbone's ``size_divisibility`` (32 for AttentionFPN on a ResNet).
        square: ``padding_constraints["square_size"]`` (0: none).
    """
    if square > 0:
        height = width = square
    if divisibility > 1:
        height = -(-height // divisibility) * divisibility
        width = -(-width // divisibility) * divisibility
    return height, width


def _size_range(padded: int, divisibility: int, square: int) -> Tuple[int, int]:
    """The input sizes (one axis) that pad to ``padded``."""
    if square > 0:
        return 1, square
    return (padded - divisibility + 1, padded) if divisibility > 1 else (padded, padded)


def graph_size_limits(model: nn.Module, padded: Tuple[int, int], divisibility: int,
                      square: int = 0) -> Tuple[List[int], Optional[List[int]]]:
    """The padded sizes a graph traced at ``padded`` equals ``model`` at: (smallest (H, W), largest or None).

    None means no upper limit: every padded size whose maps are at least as wide as each MS-Att
    level's largest pooling stride (see this module's doc). The sample's own size only (both limits
    ``padded``) when the sample was below that, with adaptive pooling, or with a square pad.
    """
    exact = [int(padded[0]), int(padded[1])]
    if square > 0:
        return exact, exact
    need = 1
    backbone = model.backbone
    for level in getattr(backbone, "levels", []):
        attn = getattr(getattr(backbone, "fpn_aggregation{}".format(level[1:]), None), "attn", None)
        if attn is None:
            continue
        side = attn.unclamped_size  # the smallest map whose pooling kernels are the strides; None: adaptive
        if side is None:
            return exact, exact
        need = max(need, side * 2 ** int(level[1:]))
    need = padded_size(need, need, divisibility)[0]
    if exact[0] < need or exact[1] < need:  # the sample's maps clamped a pooling kernel
        return exact, exact
    return [need, need], None


def graph_sizes(model: nn.Module, height: int, width: int) -> Dict[str, Any]:
    """The sizes a graph of ``model`` traced on a ``height`` x ``width`` sample serves, as
    :class:`~afa_d2.export.ExportInfo`'s fields: ``padded_size``, ``min_padded_size``, ``max_padded_size``,
    ``height_range``, ``width_range`` (input sizes; None: no upper limit), ``size_divisibility``,
    ``square_size``."""
    div, square = padding(model)
    ph, pw = padded_size(height, width, div, square)
    low, high = graph_size_limits(model, (ph, pw), div, square)
    if high is None:
        height_range, width_range = [low[0] - max(div, 1) + 1, None], [low[1] - max(div, 1) + 1, None]
    else:
        height_range, width_range = list(_size_range(ph, div, square)), list(_size_range(pw, div, square))
    return dict(padded_size=[ph, pw], min_padded_size=low, max_padded_size=high, height_range=height_range,
                width_range=width_range, size_divisibility=div, square_size=square)


def served_sizes(meta: Dict[str, Any]) -> Tuple[List[int], Optional[List[int]]]:
    """(smallest, largest or None) padded size an export serves, from its metadata; a file written before
    the minimum was recorded serves its one padded size."""
    if "min_padded_size" in meta:
        return meta["min_padded_size"], meta["max_padded_size"]
    return meta["padded_size"], meta["padded_size"]


def describe_sizes(meta: Dict[str, Any]) -> str:
    """The inputs an export serves, in words, from its metadata (an :class:`ExportInfo`'s, or a file's)."""
    low, high = served_sizes(meta)
    (h0, h1), (w0, w1) = meta["height_range"], meta["width_range"]
    if high is not None and list(low) == list(high):
        return "H in {}..{}, W in {}..{} (padded to {}x{})".format(h0, h1, w0, w1, *high)
    return "any H >= {}, W >= {} (padded to at least {}x{})".format(h0, w0, *low)
