"""What every converter shares: the report of a conversion, the target model built from a config,
the converted file written, and the ``tools/convert_*.py`` commands' parser and error style.

A converter returns ``(weights, ConversionReport)``: the report says what loaded, what is new, what
was dropped and why, what is missing and which shapes do not fit, so that a user sees what a
conversion did before training on it. Given ``output``, the weights are written as
``{"model": weights, "__author__": ..., "conversion": {what they were converted from}}``, atomically
(:func:`save_converted`): a crash never leaves half a file under the name a config points at.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["ConversionReport", "converter_parser", "run_converter", "save_converted"]

NEW_BLOCK_PREFIX = "backbone.fpn_aggregation"  # the operators' own blocks, which no FPN checkpoint has

Target = Union[str, nn.Module]


@dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        source (str): the file converted (or "<state dict>").
        target (str): what it was converted for (a config, a class).
        loaded (list[str]): target keys given a source tensor (under the target's names).
        new (list[str]): target keys an afa_d2 model adds (``backbone.fpn_aggregation*``).
        new_start (str): how the new tensors start: "left at their initialisation" (the target's), or
            "started as FPN's sum" (``start_as_fpn``: ``AttentionFPN.init_as_fpn`` set them).
        missing (list[str]): other target keys the source lacks (another architecture).
        dropped (list[str]): source keys not used (under the source's names).
        why (dict[str, str]): dropped key -> why it was dropped (a classifier, a recomputed buffer, ...).
        mismatched (list[(str, tuple, tuple)]): (target key, source shape, target shape).
        renamed (int): tensors loaded under another name than the source's.
        config_overrides (list[str]): ``key=value`` overrides the weights need in a config.
        notes (list[str]): anything else worth printing.
    """

    source: str
    target: str = ""
    loaded: List[str] = field(default_factory=list)
    new: List[str] = field(default_factory=list)
    new_start: str = "left at their initialisation"
    missing: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    why: Dict[str, str] = field(default_factory=dict)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    renamed: int = 0
    config_overrides: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def drop(self, key: str, reason: str) -> None:
        self.dropped.append(key)
        self.why[key] = reason

    def describe(self, limit: int = 12) -> str:
        """The report as a few lines: counts, then names (``limit`` a line)."""
        lines = ["Converted {}{}: {} tensor(s) loaded{}".format(
            self.source, " for " + self.target if self.target else "", len(self.loaded),
            " ({} renamed)".format(self.renamed) if self.renamed else "")]
        if self.new:
            lines.append("new, not in the source ({}): {} tensor(s): {}".format(
                self.new_start, len(self.new), short_keys(_groups(self.new), limit)))
        by_reason: Dict[str, List[str]] = collections.OrderedDict()
        for k in self.dropped:
            by_reason.setdefault(self.why.get(k, "not in the target"), []).append(k)
        for reason, keys in by_reason.items():
            lines.append("dropped, {}: {} tensor(s): {}".format(reason, len(keys), short_keys(keys, limit)))
        if self.missing:
            lines.append("MISSING from the source (left at their initialisation): {}".format(
                short_keys(self.missing, limit)))
        for k, a, b in self.mismatched[:limit]:
            lines.append("SHAPE DOES NOT FIT (left at its initialisation): {}: {} in the source, {} in the "
                         "target".format(k, a, b))
        if self.config_overrides:
            lines.append("config overrides these weights need: " + " ".join(self.config_overrides))
        lines += self.notes
        return "\n".join(lines)

    __str__ = describe

    def as_record(self) -> Dict[str, Any]:
        """What :func:`save_converted` keeps in the file (plain types only)."""
        return {"source": self.source, "target": self.target, "loaded": len(self.loaded), "new": list(self.new),
                "missing": list(self.missing), "dropped": {k: self.why.get(k, "") for k in self.dropped},
                "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
                "config_overrides": list(self.config_overrides)}


def short_keys(keys: Sequence[str], limit: int) -> str:
    """The first ``limit`` keys, and how many more."""
    return ", ".join(keys[:limit]) + (" ... (+{})".format(len(keys) - limit) if len(keys) > limit else "")


def _groups(keys: Sequence[str]) -> List[str]:
    """``backbone.fpn_aggregation2.attn.q.weight`` ... -> ``backbone.fpn_aggregation2.* (17)``."""
    counts: Dict[str, int] = collections.OrderedDict()
    for k in keys:
        m = re.match(re.escape(NEW_BLOCK_PREFIX) + r"\d+\.", k)
        g = m.group(0) + "*" if m else k
        counts[g] = counts.get(g, 0) + 1
    return ["{} ({})".format(g, n) if n > 1 else g for g, n in counts.items()]


def save_converted(weights: Dict[str, torch.Tensor], path: str, *, author: str, report: ConversionReport,
                   extra: Optional[Dict[str, Any]] = None) -> str:
    """Write ``{"model": weights, "__author__": author, "conversion": ...}`` to ``path`` atomically.

    ``conversion`` records what the weights were converted from and how (:meth:`ConversionReport.as_record`,
    the afa_d2 version, the time); ``extra`` adds top-level entries (e.g. ``matching_heuristics``).
    The file holds tensors and plain types only, so it loads with ``weights_only=True``. The report gets a
    "wrote <path>" note.
    """
    import afa_d2
    from afa_d2.storage import atomic_torch_save

    if not path:
        raise ValueError("output path is empty")
    record = report.as_record()
    record.update(converter="afa_d2.model_zoo.convert", afa_d2_version=getattr(afa_d2, "__version__", None),
                  converted=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    data: Dict[str, Any] = {"model": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                            "__author__": author, "conversion": record}
    data.update(extra or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_torch_save(data, path)
    report.notes.append("wrote {}".format(path))
    return path


def instantiate_target(target: Target, opts: Sequence[str], node: str) -> nn.Module:
    """A built module, or ``node`` of a LazyConfig (file, or afa_d2 zoo name) with ``opts``."""
    if isinstance(target, nn.Module):
        if opts:
            raise ValueError("opts {} given with a built model: overrides apply to a config only".format(list(opts)))
        return target
    if not isinstance(target, str):
        raise ValueError("the target must be a built model, a LazyConfig file or a zoo config name, got a {}".format(
            type(target).__name__))
    from detectron2.config import LazyConfig, instantiate

    from afa_d2.engine import apply_overrides

    from ..zoo import get_config

    cfg = apply_overrides(LazyConfig.load(target) if os.path.isfile(target) else get_config(target), list(opts))
    for part in node.split("."):
        cfg = cfg[part]
    return instantiate(cfg)


def converter_parser(doc: str, source_help: str) -> argparse.ArgumentParser:
    """The shared start of a ``tools/convert_*.py`` command's parser: ``doc`` as its help (first
    paragraph as the description, the rest as the epilog), the ``source`` checkpoint and the
    ``output`` file to write."""
    head, tail = doc.split("\n\n", 1)
    p = argparse.ArgumentParser(description=head, epilog=tail, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help=source_help)
    p.add_argument("output", help="the converted .pth to write (atomically)")
    return p


def run_converter(parser: argparse.ArgumentParser, convert: Callable[[], Tuple[Any, ConversionReport]]) -> int:
    """Run ``convert()`` (a converter returning ``(weights, report)``) for a ``tools/convert_*.py``
    command: print its report, or a bad or unreadable source as one line (exit 2)."""
    from afa_d2.engine.checkpoint import CorruptCheckpointError, UntrustedCheckpointError

    try:
        _, report = convert()
    except (ValueError, KeyError, OSError, pickle.UnpicklingError, CorruptCheckpointError,
            UntrustedCheckpointError) as e:
        parser.exit(2, "error: {}\n".format(str(e).replace("\n", " ")))
    print(report.describe())
    return 0
