"""Model construction where every part's initialisation depends only on the seed and the part's place.

``detectron2.config.instantiate`` builds a model from one random stream: each module draws its
initial weights after the modules built before it. Two models that differ in one part (the
aggregation operator of the pyramid) then differ in every part built after it, and a comparison of
the two mixes the operator's effect with a different initialisation of the heads.
:func:`instantiate_seeded` gives every ``LazyCall`` node of the config its own stream, seeded from
``(seed, the node's dotted path)``: ``backbone.bottom_up``, ``proposal_generator.head``,
``roi_heads.box_head`` ... start equal in any two models built with the same seed, whatever else
differs (docs/DESIGN.md, "Paired initialisation"). The pyramid's own shared parts (lateral and output
convolutions) are built before its operators inside ``AttentionFPN``, so they are equal too.
"""
from __future__ import annotations

import random
import zlib
from collections import abc
from typing import Any

import numpy as np
import torch
from omegaconf import ListConfig

from .train_loader import mix_seed

__all__ = ["instantiate_seeded", "part_seed"]


def part_seed(seed: int, path: str) -> int:
    """The seed of the config node at dotted ``path`` ("" for the root) in a model seeded with ``seed``."""
    return mix_seed(int(seed), zlib.crc32(path.encode("utf-8"))) % (2**31)


def _call(node: abc.Mapping, seed: int, path: str) -> Any:
    from detectron2.config import instantiate

    kwargs = {k: instantiate_seeded(v, seed, _join(path, k)) for k, v in node.items() if k != "_target_"}
    state = (random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        s = part_seed(seed, path)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s)
        try:
            # detectron2 resolves the target and calls it; the arguments are built already
            return instantiate(dict(_target_=node["_target_"], **kwargs))
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def _join(path: str, key: Any) -> str:
    return "{}.{}".format(path, key) if path else str(key)


def instantiate_seeded(cfg: Any, seed: int, path: str = "") -> Any:
    """``detectron2.config.instantiate(cfg)``, with each ``LazyCall`` node built from its own random stream.

    Args:
        cfg: a LazyConfig node (usually ``cfg.model``).
        seed (int): the model's seed (``train.seed``).
        path (str): the node's dotted path in the model config ("" for the root).

    Returns:
        the built object; the caller's random state (torch CPU, python, numpy) is left as it was.
    """
    if isinstance(cfg, ListConfig):
        return ListConfig([instantiate_seeded(x, seed, _join(path, i)) for i, x in enumerate(cfg)],
                          flags={"allow_objects": True})
    if isinstance(cfg, list):
        return [instantiate_seeded(x, seed, _join(path, i)) for i, x in enumerate(cfg)]
    if isinstance(cfg, abc.Mapping) and "_target_" in cfg:
        return _call(cfg, seed, path)
    from detectron2.config import instantiate

    return instantiate(cfg)  # what has no target: as detectron2 treats it (structured configs)
