"""Optimizer parameter groups for fine-tuning: the new blocks at the base lr, the rest slower.

detectron2 v0.6's ``get_default_optimizer_params`` has no per-parameter lr factor (its
``lr_factor_func`` came later), so afa_d2 has its own, LazyConfig-friendly (a module-level
function, no lambda)::

    optimizer.params = L(finetune_param_groups)(base_lr="${..lr}", weight_decay="${..weight_decay}")

``optimizer.params.model`` is set to the model by afa_d2.engine before the optimizer is built, as
for detectron2's function. detectron2's lr schedulers scale every group's own initial lr, so the
factor between groups holds through warm-up and decay.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Set, Tuple

import torch
from torch import nn

__all__ = ["NORM_TYPES", "finetune_param_groups"]

NORM_TYPES: Tuple[type, ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def _is_norm(module: nn.Module) -> bool:
    # detectron2's FrozenBatchNorm2d has no parameters; its NaiveSyncBatchNorm is a BatchNorm2d
    return isinstance(module, NORM_TYPES) or type(module).__name__ == "FrozenBatchNorm2d"


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
    """Parameter groups for fine-tuning from a checkpoint that lacks some blocks.

    Parameters whose name starts with one of ``new_prefixes`` (the blocks the checkpoint does not
    have: an AttentionFPN's aggregation operators when starting from a detectron2 FPN) train at
    ``base_lr``; every other one (loaded from the checkpoint) at ``base_lr * pretrained_lr_factor``.
    Norm weights and biases get ``weight_decay_norm``, other biases ``weight_decay_bias``, the rest
    ``weight_decay``. Frozen parameters (``requires_grad=False``) are left out; a parameter shared
    by two modules is counted once.

    Args:
        model (nn.Module): the model to optimise.
        base_lr (float): the lr of the new blocks (the optimizer's lr).
        new_prefixes (list[str]): name prefixes of the new blocks.
        pretrained_lr_factor (float): in [0, 1], the lr factor of everything else.
        weight_decay, weight_decay_norm, weight_decay_bias (float): see above.

    Returns:
        list[dict]: one group per (lr, weight decay), each with ``params``, ``lr`` and
        ``weight_decay``, for any ``torch.optim`` optimizer.
    """
    if isinstance(pretrained_lr_factor, bool) or not (
            isinstance(pretrained_lr_factor, (int, float)) and 0 <= pretrained_lr_factor <= 1):
        raise ValueError("pretrained_lr_factor must be a number in [0, 1], got {!r}".format(pretrained_lr_factor))
    if isinstance(new_prefixes, str):
        raise ValueError("new_prefixes must be a list of name prefixes, got the str {!r}".format(new_prefixes))
    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or base_lr <= 0:
        raise ValueError("base_lr must be a number > 0, got {!r}".format(base_lr))
    new_prefixes = tuple(new_prefixes)
    norm_params = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    groups: Dict[Tuple[float, float], List[torch.nn.Parameter]] = {}
    seen: Set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        lr = base_lr if name.startswith(new_prefixes) else base_lr * pretrained_lr_factor
        if id(p) in norm_params:
            wd = weight_decay_norm
        elif name.endswith(".bias"):
            wd = weight_decay_bias
        else:
            wd = weight_decay
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
