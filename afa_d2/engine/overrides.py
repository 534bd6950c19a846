"""Command-line ``key=value`` overrides of a LazyConfig, with unknown keys caught.

detectron2's ``LazyConfig.apply_overrides`` silently *adds* a key it does not know, so
``model.backbone.agregation=msca`` (one "g") trains the default operator without a word.
:func:`apply_overrides` checks every key against the config first and raises
:class:`UnknownConfigKeyError` (a ``KeyError``) listing the nearest valid keys
(``difflib.get_close_matches`` over all flattened keys). A deliberate new key is written
``+key=value`` (Hydra's syntax for "add"). Values are then applied by detectron2.
"""
from __future__ import annotations

import difflib
import os
from typing import Iterable, List, Sequence

from detectron2.config import LazyConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from afa_d2.compat import config_child

__all__ = ["UnknownConfigKeyError", "flatten_keys", "validate_override_keys", "apply_overrides", "load_config"]


class UnknownConfigKeyError(KeyError):
    """An override names a key the config does not have."""

    def __init__(self, key: str, suggestions: Sequence[str], message: str):
        super().__init__(message)
        self.key = key
        self.suggestions = list(suggestions)
        self.message = message

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


def _children(node):
    if isinstance(node, DictConfig):
        # keys() never resolves interpolations ("${..test.dataset.names}") or missing values
        return [(str(k), config_child(node, k)) for k in node.keys()]
    if isinstance(node, ListConfig):
        return [(str(i), config_child(node, i)) for i in range(len(node))]
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    if isinstance(node, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(node)]
    return []


def flatten_keys(cfg) -> List[str]:
    """Every dotted key of a config, inner nodes included (``model``, ``model.backbone``, ...)."""
    out: List[str] = []

    def visit(node, prefix: str) -> None:
        for k, child in _children(node):
            key = prefix + k
            out.append(key)
            visit(child, key + ".")

    visit(cfg, "")
    return out


def _has_key(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        found = False
        for k, child in _children(node):
            if k == part:
                node, found = child, True
                break
        if not found:
            return False
    return True


def _deepest_existing_prefix(cfg, key: str) -> str:
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if _has_key(cfg, prefix):
            return prefix
    return ""


def _split(override: str):
    if "=" not in override:
        raise ValueError(
            "Override {!r} is not of the form key=value (LazyConfig overrides use "
            "'a.b=value', e.g. train.max_iter=100)".format(override)
        )
    key = override.split("=", 1)[0].strip()
    add = key.startswith("+")
    if key.startswith("~"):
        raise ValueError("Override {!r}: deleting keys (~key) is not supported".format(override))
    return key.lstrip("+"), add


def validate_override_keys(cfg, overrides: Iterable[str]) -> None:
    """Raise :class:`UnknownConfigKeyError` for the first override whose key is not in ``cfg``.

    Keys written ``+key=value`` are meant to be new and are not checked.
    """
    all_keys = None
    for o in overrides:
        key, add = _split(o)
        if add or _has_key(cfg, key):
            continue
        if all_keys is None:
            all_keys = flatten_keys(cfg)
        close = difflib.get_close_matches(key, all_keys, n=5, cutoff=0.6)
        parent = _deepest_existing_prefix(cfg, key)
        lines = ["Unknown config key {!r} in override {!r}.".format(key, o)]
        if close:
            lines.append("Nearest valid keys: " + ", ".join(close))
        if parent:
            node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
            siblings = [k for k, _ in _children(node)]
            if siblings:
                lines.append("Keys under {!r}: {}".format(parent, ", ".join(siblings)))
        elif not close:
            lines.append("Top-level keys: " + ", ".join(k for k, _ in _children(cfg)))
        lines.append("To add a new key on purpose, write +{}=...".format(key))
        raise UnknownConfigKeyError(key, close, "\n".join(lines))


def apply_overrides(cfg, overrides: Sequence[str] | None):
    """Validate the keys, then apply ``key=value`` overrides with detectron2 (in place).

    Args:
        cfg: a LazyConfig (omegaconf ``DictConfig``).
        overrides (list[str]): e.g. ``["model.backbone.aggregation=msca", "train.max_iter=10"]``.

    Returns:
        the same ``cfg``.
    """
    overrides = [o for o in (overrides or []) if o.strip()]
    validate_override_keys(cfg, overrides)
    return LazyConfig.apply_overrides(cfg, overrides)


def load_config(path: str, overrides: Sequence[str] | None = None):
    """A LazyConfig file with command-line overrides applied, as ``train_net.py`` loads it.

    The keys the schedule fills at start-up (``train.checkpointer.period``, ``train.eval_period``,
    ``lr_multiplier.max_iter``) are declared first, so overrides such as ``train.eval_period=100``
    are accepted; every other key is checked by :func:`apply_overrides`.

    Raises:
        FileNotFoundError: ``path`` is not a file (the message gives the working directory).
        UnknownConfigKeyError: an override names a key the config does not have.
    """
    from .schedule import ensure_schedule_keys

    if not os.path.isfile(path):
        raise FileNotFoundError("config file {!r}: no such file (cwd: {})".format(path, os.getcwd()))
    cfg = LazyConfig.load(path)
    ensure_schedule_keys(cfg)
    return apply_overrides(cfg, overrides)
