"""The feature pyramid inside a detector: where it is, its levels' modules, and how to name its operator."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Tuple

from torch import nn

__all__ = ["find_pyramid", "level_modules", "operator_label", "top_block_label"]


def find_pyramid(model: nn.Module) -> Tuple[str, Optional[nn.Module]]:
    """The feature pyramid (an ``AttentionFPN`` or detectron2 ``FPN``) in ``model``: (name, module),
    ("", None) when there is none."""
    from detectron2.modeling.backbone import FPN

    from afa_d2.modeling import AttentionFPN

    for name, m in model.named_modules():
        if isinstance(m, (AttentionFPN, FPN)):
            return name, m
    return "", None


def level_modules(neck: nn.Module) -> "OrderedDict[str, Dict[str, str]]":
    """level -> {"lateral": name, "aggregation": name, "output": name} (names relative to the neck);
    the top block's levels -> {"top_block": "top_block"}."""
    stages = sorted(int(n[len("fpn_lateral"):]) for n, _ in neck.named_children() if n.startswith("fpn_lateral"))
    out: "OrderedDict[str, Dict[str, str]]" = OrderedDict()
    for s in stages:
        parts = {"lateral": "fpn_lateral{}".format(s), "output": "fpn_output{}".format(s)}
        if hasattr(neck, "fpn_aggregation{}".format(s)):
            parts["aggregation"] = "fpn_aggregation{}".format(s)
        out["p{}".format(s)] = parts
    top = getattr(neck, "top_block", None)
    if top is not None and stages:
        n = int(getattr(top, "num_levels", 1))
        name = "p{}".format(stages[-1] + 1) if n == 1 else "p{}-p{}".format(stages[-1] + 1, stages[-1] + n)
        out[name] = {"top_block": "top_block"}
    return out


def operator_label(neck: Optional[nn.Module], level: Optional[str] = None) -> str:
    """How tables and figures name a pyramid's aggregation, or one level's: the registry's label of its
    operator (:func:`afa_d2.modeling.aggregation.operator_label`); a pyramid whose levels differ is
    "<label> on p4, p5" for each operator other than the baseline; "no pyramid" for None."""
    if neck is None:
        return "no pyramid"
    from afa_d2.modeling.aggregation import baseline_operator
    from afa_d2.modeling.aggregation import operator_label as label

    base = baseline_operator()
    ops: Dict[str, str] = dict(getattr(neck, "level_ops", {}) or {})
    if not ops:  # detectron2's FPN
        return label(base)
    if level is not None:
        return label(ops.get(level, base))
    distinct = sorted(set(ops.values()))
    if len(distinct) == 1:
        return label(distinct[0])
    others = [op for op in distinct if op != base]
    return "; ".join("{} on {}".format(label(op), ", ".join(lvl for lvl, o in ops.items() if o == op))
                     for op in others)


def top_block_label(neck: nn.Module) -> str:
    """What the top block computes: "max-pool" (LastLevelMaxPool), "convs from res5" or "convs from p5"
    (LastLevelP6P7 of RetinaNet or FCOS: the feature it reads)."""
    top = getattr(neck, "top_block", None)
    if top is None:
        return ""
    if not any(p.numel() for p in top.parameters()):
        return "max-pool"
    return "convs from {}".format(getattr(top, "in_feature", "?"))
