"""Optimizer parameter groups for fine-tuning: the new blocks at the base lr, the rest slower.

detectron2 v0.6's ``get_default_optimizer_params`` has no per-parameter lr factor (its
``lr_factor_func`` came later), so afa_d2 has its own, LazyConfig-friendly (a module-level
function: ``params=L(finetune_param_groups)(...)``, ``params.model`` set by afa_d2.engine).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["NORM_TYPES", "finetune_param_groups"]

NORM_TYPES: Tuple[type, ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def finetune_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    new_prefixes: Sequence[str] = ("backbone.fpn_aggregation",),
    pretrained_lr_factor: float = 0.1,
    weight_decay: float = 0.05,
    weight_decay_norm: float = 0.0,
    weight_decay_bias: float = 0.0,
) -> List[Dict[str, Any]]:
    """Parameter groups: parameters under ``new_prefixes`` (the blocks the checkpoint does not have)
    at ``base_lr``, every other one at ``base_lr * pretrained_lr_factor``; no weight decay on norms
    and biases (``weight_decay_norm`` / ``weight_decay_bias``). Frozen parameters are left out.

    Returns:
        list[dict]: one group per (lr, weight decay), each with ``params``, ``lr``, ``weight_decay``.
    """
    if not (isinstance(pretrained_lr_factor, (int, float)) and 0 <= pretrained_lr_factor <= 1):
        raise ValueError("pretrained_lr_factor must be in [0, 1], got {!r}".format(pretrained_lr_factor))
    if isinstance(new_prefixes, str):
        raise ValueError("new_prefixes must be a list of name prefixes, got the str {!r}".format(new_prefixes))
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    norm_params |= {id(p) for m in model.modules() if type(m).__name__ == "FrozenBatchNorm2d"
                    for p in m.parameters(recurse=False)}
    groups: Dict[Tuple[float, float], List[torch.nn.Parameter]] = {}
    matched_new = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = any(name.startswith(prefix) for prefix in new_prefixes)
        matched_new += new
        lr = base_lr if new else base_lr * pretrained_lr_factor
        if id(p) in norm_params:
            wd = weight_decay_norm
        elif name.endswith(".bias"):
            wd = weight_decay_bias
        else:
            wd = weight_decay
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
