"""Converters: weights that already exist, as afa_d2 models' weights, with a report of what happened.

* :func:`convert_detectron2_fpn`: a detectron2 FPN detector (its model-zoo ``.pkl``, or a ``.pth``)
  into an :class:`~afa_d2.modeling.AttentionFPN` detector of any operator. ``AttentionFPN`` keeps
  FPN's module names (``backbone.fpn_lateral{s}``, ``backbone.fpn_output{s}``, the bottom-up, RPN and
  RoI heads), so every shared weight loads as it is and only the operators' own blocks
  (``backbone.fpn_aggregation{s}.*``) are new. With ``start_as_fpn=True`` the new blocks start as
  FPN's sum (MSSA: the DW-MLP's last linear at zero, so ``MS-Att(R_i) = R_i``; concat: fuse
  ``[I | I]``): with ``Up`` nearest the converted detector's outputs equal the FPN detector's.
  With the paper's bilinear ``Up`` (MSSA's default) ``R_i`` sums a bilinear instead of a nearest
  upsampling; measured on the shapes zoo's sum-up checkpoint converted to MSSA: see
  configs/README.md, "Fine-tuning from a detectron2 FPN checkpoint". MSCA cannot start as the sum
  (``P_i = F_i + MS-Att(F_i, Up(P_{i+1}))`` holds ``F_i`` twice and sees the deeper level only
  through attention): its blocks keep their fresh initialisation, every shared weight loaded.
* :func:`convert_torchvision_resnet`: torchvision's ResNet weights under detectron2's names (what
  detectron2's ``tools/convert-torchvision-to-d2.py`` does), with the settings they need.
* :func:`convert_swin`: an official (microsoft/Swin-Transformer) or timm Swin checkpoint into
  :class:`~afa_d2.modeling.SwinBottomUp`'s keys (``backbone.bottom_up.model.*``).

Every converter returns the converted state dict and a :class:`ConversionReport` (loaded, new,
dropped, shape mismatches) and :func:`save_converted` writes ``{"model": ..., "__author__": ...}``
atomically. A ``.pkl`` is read by a restricted unpickler (numpy arrays and plain containers only),
never by ``pickle.load``, which could run any code the file holds.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "ConversionReport",
    "TORCHVISION_SETTINGS",
    "convert_detectron2_fpn",
    "convert_swin",
    "convert_torchvision_resnet",
    "load_weights",
    "save_converted",
]

NEW_BLOCK_PREFIX = "backbone.fpn_aggregation"


@dataclass
class ConversionReport:
    """What a conversion did: target keys loaded, new (left at their initialisation), source keys
    dropped, and shapes that did not fit (key, source shape, target shape)."""

    source: str
    loaded: List[str] = field(default_factory=list)
    new: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    renamed: int = 0
    notes: List[str] = field(default_factory=list)

    def describe(self, limit: int = 12) -> str:
        def short(keys):
            return ", ".join(keys[:limit]) + (" ... (+{})".format(len(keys) - limit) if len(keys) > limit else "")

        lines = ["Converted {}: {} tensor(s) loaded{}".format(
            self.source, len(self.loaded), ", {} renamed".format(self.renamed) if self.renamed else "")]
        if self.new:
            lines.append("{} new (initialised, not in the source): {}".format(len(self.new), short(_groups(self.new))))
        if self.dropped:
            lines.append("{} dropped (in the source, not used): {}".format(len(self.dropped), short(self.dropped)))
        for k, a, b in self.mismatched[:limit]:
            lines.append("shape does not fit: {}: {} in the source vs {} in the model".format(k, a, b))
        lines += self.notes
        return "\n".join(lines)

    __str__ = describe


def _groups(keys: Sequence[str]) -> List[str]:
    """``backbone.fpn_aggregation2.attn.q.weight`` ... -> ``backbone.fpn_aggregation2.* (17)``."""
    counts: Dict[str, int] = collections.OrderedDict()
    for k in keys:
        m = re.match(r"(backbone\.fpn_aggregation\d+)\.", k)
        g = m.group(1) + ".*" if m else k
        counts[g] = counts.get(g, 0) + 1
    return ["{} ({})".format(g, n) if n > 1 else g for g, n in counts.items()]


# --------------------------------------------------------------------------------------------- reading
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles what detectron2 / Detectron model-zoo ``.pkl`` files hold, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return getattr(__import__(module, fromlist=[name]), name)
        raise pickle.UnpicklingError(
            "refusing GLOBAL {}.{}: a model-zoo .pkl holds numpy arrays and plain containers only".format(module, name))


def _to_tensor(v) -> Optional[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.array(v, order="C"))  # (ascontiguousarray would make a 0-d array 1-d)
    return None


def load_weights(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """A state dict of tensors from a ``.pkl`` (numpy arrays) or ``.pth`` / ``.pt`` / ``.bin`` file.

    Accepts ``{"model": ...}``, ``{"state_dict": ...}`` and bare state dicts; URLs and hash-named
    files go through :func:`afa_d2.model_zoo.hub.fetch_checkpoint`. Returns (weights, the other
    top-level entries of the file).
    """
    from afa_d2.engine.checkpoint import load_checkpoint_file

    from .hub import expected_hash_prefix, fetch_checkpoint

    if "://" in path or expected_hash_prefix(path):
        path = fetch_checkpoint(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("checkpoint {}: no such file".format(path))
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            try:
                data = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
            except pickle.UnpicklingError as e:
                raise pickle.UnpicklingError("{}: {}".format(path, e)) from None
    else:
        data = load_checkpoint_file(path)
    if not isinstance(data, dict):
        raise ValueError("{} holds a {}, not a state dict".format(path, type(data).__name__))
    for key in ("model", "state_dict"):
        if isinstance(data.get(key), dict):
            weights, rest = data[key], {k: v for k, v in data.items() if k != key}
            break
    else:
        weights, rest = data, {}
    out = {}
    for k, v in weights.items():
        t = _to_tensor(v)
        if t is None:
            raise ValueError("{}: entry {!r} is a {}, not an array or tensor".format(path, k, type(v).__name__))
        out[k] = t
    return out, rest


def save_converted(weights: Dict[str, torch.Tensor], path: str, *, author: str, report: ConversionReport,
                   extra: Optional[Dict[str, Any]] = None) -> str:
    """Write ``{"model": weights, "__author__": author, "conversion": ...}`` to ``path`` atomically."""
    from afa_d2.engine.checkpoint import atomic_torch_save

    record = {"model": {k: v.contiguous() for k, v in weights.items()}, "__author__": author,
              "conversion": {"source": report.source, "loaded": len(report.loaded), "new": list(report.new),
                             "dropped": list(report.dropped)}}
    record.update(extra or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_torch_save(record, path)
    return path


def _match(source: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], name: str) -> Tuple[Dict, ConversionReport]:
    """Target keys from the source where the name and shape match; the report of the rest."""
    report = ConversionReport(source=name)
    out = {}
    for k, t in target.items():
        if k not in source:
            report.new.append(k)
        elif tuple(source[k].shape) != tuple(t.shape):
            report.mismatched.append((k, tuple(source[k].shape), tuple(t.shape)))
        else:
            out[k] = source[k].to(dtype=t.dtype)
            report.loaded.append(k)
    report.dropped = [k for k in source if k not in target]
    return out, report


def _mismatch_error(report: ConversionReport, what: str) -> ValueError:
    parts = []
    if report.mismatched:
        parts.append("shapes differ: " + ", ".join("{} {} vs {}".format(k, a, b) for k, a, b in report.mismatched[:5]))
    unexpected_new = [k for k in report.new if not k.startswith(NEW_BLOCK_PREFIX)]
    if unexpected_new:
        parts.append("not in the checkpoint: " + ", ".join(unexpected_new[:5])
                     + (" ... (+{})".format(len(unexpected_new) - 5) if len(unexpected_new) > 5 else ""))
    return ValueError("{} does not fit {} (another architecture?): {}".format(report.source, what, "; ".join(parts)))


# --------------------------------------------------------------------------------------------- detectron2 FPN
def _target_model(target, opts: Sequence[str] = ()) -> nn.Module:
    if isinstance(target, nn.Module):
        return target
    from detectron2.config import instantiate

    from afa_d2.engine import apply_overrides, load_config

    from .catalog import get_config

    cfg = load_config(target, list(opts)) if os.path.isfile(str(target)) else apply_overrides(
        get_config(str(target)), list(opts))
    return instantiate(cfg.model)


def convert_detectron2_fpn(source, target, *, start_as_fpn: bool = False, opts: Sequence[str] = (),
                           strict: bool = True) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """A detectron2 FPN detector's weights as the weights of an AttentionFPN detector.

    Args:
        source (str or dict): a detectron2 checkpoint (``.pkl`` from its model zoo, ``.pth``; a path
            or URL) or a state dict.
        target: the AttentionFPN detector: a built model, a zoo config name or a LazyConfig file
            (with ``opts`` overrides), e.g. "COCO/mask_rcnn_R_50_mssa_1x.py".
        start_as_fpn (bool): initialise the new blocks as FPN's sum (MSSA, concat; see the module doc).
        strict (bool): raise ValueError unless every weight outside the new aggregation blocks loads
            (a checkpoint of another architecture), naming keys and shapes.

    Returns:
        (state dict of the whole target model, :class:`ConversionReport`): shared weights from the
        source, new blocks at their initialisation.
    """
    model = _target_model(target, opts)
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "level_ops"):
        raise ValueError("the target must be a detector with an afa_d2 AttentionFPN backbone, got {}".format(
            type(backbone).__name__))
    if start_as_fpn:
        for level, op in backbone.level_ops.items():
            getattr(backbone, "fpn_aggregation{}".format(level[1:])).init_as_sum()
    weights, rest = load_weights(source) if isinstance(source, str) else (dict(source), {})
    name = source if isinstance(source, str) else "<state dict>"
    converted, report = _match(weights, model.state_dict(), name)
    report.renamed = 0
    author = rest.get("__author__")
    if author:
        report.notes.append("source author: {}".format(author))
    if strict and (report.mismatched or any(not k.startswith(NEW_BLOCK_PREFIX) for k in report.new)):
        raise _mismatch_error(report, "the target detector")
    state = model.state_dict()
    state.update(converted)
    ops = sorted(set(backbone.level_ops.values()))
    report.notes.append("operators: {}{}".format(
        ", ".join("{}={}".format(lvl, op) for lvl, op in backbone.level_ops.items()),
        "; new blocks start as FPN's sum" if start_as_fpn and ops != ["sum"] else ""))
    return state, report


# --------------------------------------------------------------------------------------------- torchvision
# What torchvision's ImageNet ResNets need in a detectron2 config (their stem, strides, statistics).
TORCHVISION_SETTINGS = [
    "model.pixel_mean=[123.675,116.28,103.53]",
    "model.pixel_std=[58.395,57.12,57.375]",
    "model.input_format=RGB",
    "model.backbone.bottom_up.stages.stride_in_1x1=False",
]


def _torchvision_name(k: str) -> Optional[str]:
    if k.startswith("fc."):
        return None
    k = re.sub(r"^conv1\.", "stem.conv1.", k)
    k = re.sub(r"^bn1\.", "stem.conv1.norm.", k)
    k = re.sub(r"^layer(\d)\.", lambda m: "res{}.".format(int(m.group(1)) + 1), k)
    k = re.sub(r"\.bn(\d)\.", lambda m: ".conv{}.norm.".format(m.group(1)), k)
    k = k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return k


def convert_torchvision_resnet(source, *, prefix: str = "backbone.bottom_up."
                               ) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """torchvision ResNet weights under detectron2's ``ResNet`` names.

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layer{i}`` -> ``res{i+1}``; ``bn{k}`` ->
    ``conv{k}.norm``; ``downsample.0/1`` -> ``shortcut``/``shortcut.norm``; ``fc`` dropped;
    ``num_batches_tracked`` dropped (detectron2's norms do not keep it). The model that loads them
    needs :data:`TORCHVISION_SETTINGS` (RGB input with ImageNet statistics, the stride of a
    Bottleneck on its 3x3 conv); ``prefix`` puts them where a detector's bottom-up is ("" for a
    bare ResNet).
    """
    weights, _ = load_weights(source) if isinstance(source, str) else (dict(source), {})
    report = ConversionReport(source=source if isinstance(source, str) else "<state dict>")
    out = {}
    for k, v in weights.items():
        if k.endswith("num_batches_tracked"):
            report.dropped.append(k)
            continue
        new = _torchvision_name(k)
        if new is None:
            report.dropped.append(k)
            continue
        out[prefix + new] = v
        report.loaded.append(prefix + new)
        report.renamed += int(new != k)
    if not any(k.startswith(prefix + "res5.") for k in out):
        raise ValueError("{}: no layer4 weights: not a torchvision ResNet checkpoint".format(report.source))
    report.notes.append("the model needs: " + " ".join(TORCHVISION_SETTINGS))
    return out, report


# --------------------------------------------------------------------------------------------- Swin
def _swin_layout(weights: Dict[str, torch.Tensor]) -> str:
    stages_with_merge = {int(m.group(1)) for k in weights for m in [re.match(r"layers\.(\d+)\.downsample\.", k)] if m}
    if not stages_with_merge:
        raise ValueError("no patch-merging weights (layers.<i>.downsample.*): not a Swin checkpoint")
    return "official" if 0 in stages_with_merge else "timm"


def convert_swin(source, bottom_up, *, prefix: str = "backbone.bottom_up.model."
                 ) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """An ImageNet Swin checkpoint (official or timm layout) as weights of a :class:`SwinBottomUp`.

    The official layout merges patches at the *end* of stages 0-2 (``layers.{i}.downsample``),
    timm >= 0.9 at the *start* of stages 1-3 (``layers.{i+1}.downsample``): the merging weights move
    one stage up. The classifier (``head``), the final ``norm`` when the bottom-up has none, and the
    buffers timm recomputes (``relative_position_index``, ``attn_mask``) are dropped; relative
    position bias tables must fit the bottom-up's window.

    Args:
        source (str or dict): the checkpoint (``{"model": ...}``, ``{"state_dict": ...}`` or bare).
        bottom_up (SwinBottomUp): the module the weights are for (its keys decide the names: timm's
            ``features_only`` model writes stage ``i`` as ``layers_{i}``).
        prefix (str): where the bottom-up's timm model sits in the detector.
    """
    weights, _ = load_weights(source) if isinstance(source, str) else (dict(source), {})
    name = source if isinstance(source, str) else "<state dict>"
    layout = _swin_layout(weights)
    target = bottom_up.model.state_dict()
    stage_fmt = "layers_{}." if any(k.startswith("layers_") for k in target) else "layers.{}."
    canonical: Dict[str, torch.Tensor] = {}
    report = ConversionReport(source=name)
    for k, v in weights.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            report.dropped.append(k + " (recomputed by timm)")
            continue
        if layout == "official":
            k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: "layers.{}.downsample.".format(int(m.group(1)) + 1), k)
            k = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)
        canonical[k] = v
    out = {}
    for k, v in canonical.items():
        local = re.sub(r"^layers\.(\d+)\.", lambda m: stage_fmt.format(m.group(1)), k)
        if local not in target:
            report.dropped.append(k)
            continue
        if tuple(v.shape) != tuple(target[local].shape):
            what = "relative position bias table (window)" if "relative_position_bias_table" in k else "tensor"
            report.mismatched.append((k, tuple(v.shape), tuple(target[local].shape)))
            raise ValueError("{}: {} {} has shape {} but the bottom-up needs {}: another Swin variant or window "
                             "size".format(name, what, k, tuple(v.shape), tuple(target[local].shape)))
        out[prefix + local] = v
        report.loaded.append(prefix + local)
        report.renamed += int(local != k or layout == "official")
    report.new = [prefix + k for k in target if prefix + k not in out]
    if report.new:
        raise ValueError("{}: the Swin bottom-up's {} are not in the checkpoint".format(name, ", ".join(report.new[:5])))
    report.notes.append("source layout: {}".format(layout))
    return out, report
