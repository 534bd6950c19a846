"""Converters: weights that already exist, as afa_d2 models' weights, with a report of what happened.

* :func:`convert_detectron2_fpn`: a detectron2 FPN detector (its model-zoo ``.pkl``, or a ``.pth``)
  into an :class:`~afa_d2.modeling.AttentionFPN` detector of any operator ("sum", "concat",
  "mssa", "msca"). ``AttentionFPN`` keeps FPN's module names (``backbone.fpn_lateral{s}``,
  ``backbone.fpn_output{s}``, ``backbone.bottom_up.*``; RPN and RoI heads are detectron2's), so
  every shared weight loads as it is and only the operators' own blocks
  (``backbone.fpn_aggregation{s}.*``) are new.
* :func:`convert_torchvision_resnet`: torchvision's ResNet weights under detectron2's ``ResNet``
  names (what detectron2's ``tools/convert-torchvision-to-d2.py`` does), with the config
  overrides they need (:func:`torchvision_resnet_overrides`).
* :func:`convert_swin`: an official (microsoft/Swin-Transformer) or timm Swin checkpoint into
  :class:`~afa_d2.modeling.SwinBottomUp`'s keys (``backbone.bottom_up.model.*``).

Every converter returns the converted weights and a :class:`ConversionReport` (loaded, new,
dropped and why, missing, shapes that do not fit) and, given ``output``, writes
``{"model": weights, "__author__": ..., "conversion": {what it was converted from}}``
atomically (:func:`save_converted`). A ``.pkl`` is read by a restricted unpickler that builds
numpy arrays, dtypes, scalars and plain containers and refuses any other global by name, never
by ``pickle.load``, which would run whatever code the file holds; a ``.pth`` by
``torch.load(weights_only=True)`` (:func:`afa_d2.engine.checkpoint.load_checkpoint_file`).

Starting the new blocks as FPN (docs/DESIGN.md, "Checkpoints", ``start_as_fpn=True`` here or on ``AttentionFPN``)
    MSSA is ``P_i = MS-Att(R_i)``, ``R_i = F_i + Up(P_{i+1})``, and MS-Att's output is its query plus
    a DW-MLP branch (eq. 7): with the DW-MLP's last linear (``fc2``, weight and bias) at zero,
    ``MS-Att(R_i) = R_i`` and ``P_i = F_i + Up(P_{i+1})``, FPN's sum. It is FPN exactly when ``Up``
    is nearest (``upsample_mode="nearest"``, detectron2 FPN's): the converted detector then gives
    the FPN detector's boxes, scores, classes and masks (``tests/test_convert.py``, within 1e-5).
    With the paper's bilinear ``Up``, ``R_i`` sums a bilinear instead of a nearest upsampling of
    the deeper level, and the start is not FPN's. Measured on the small random Mask R-CNN of
    ``tests/test_convert.py`` (tiny ResNet, 16 channels, 2 classes, images 97x131 and 128x96; a
    random model is a harsh case, its maps have no spatial smoothness), converted with
    ``start_as_fpn`` and bilinear ``Up`` against the FPN model: the pyramid differs by up to
    263 / 207 / 102 on p2 / p3 / p4 (largest values 855 / 861 / 515; mean difference 25% / 21% /
    19% of the mean value), p5 and p6 not at all (no ``Up`` on the top level); the box head's
    class probabilities on the same 80 proposals differ by up to 0.78 (mean 0.078, median
    0.012); of the 158 detections, 95 have no same-class box at IoU >= 0.5 among the converted
    model's, and the 63 matched ones' scores differ by a median 0.020 (max 0.87). With nearest
    ``Up`` every one of these differences is 0. A trained detector's maps are smooth and the two
    upsamplings differ far less (configs/README.md reports a shapes-zoo checkpoint converted to
    MSSA at its own 13.61 box AP with nearest ``Up``, 13.57 with bilinear).

    concat starts as the sum with fuse weight ``[I | I]`` and bias 0 (without a norm in its fuse
    conv). "sum" is the sum already. MSCA cannot start as the sum: ``P_i = F_i + MS-Att(F_i,
    Up(P_{i+1}))`` and MS-Att's output already holds its query ``F_i``, so with ``fc2`` at zero
    ``P_i = 2 F_i`` and the deeper level is lost entirely (ValueError); for MSCA the converter
    loads every shared weight and leaves the MSCA blocks at their fresh (PVTv2) initialisation.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "ConversionReport",
    "converter_parser",
    "run_converter",
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "TORCHVISION_SETTINGS",
    "convert_detectron2_fpn",
    "convert_swin",
    "convert_torchvision_resnet",
    "load_weights",
    "save_converted",
    "torchvision_resnet_overrides",
]

NEW_BLOCK_PREFIX = "backbone.fpn_aggregation"

Target = Union[str, nn.Module]


# --------------------------------------------------------------------------------------------- report
@dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        source (str): the file converted (or "<state dict>").
        target (str): what it was converted for (a config, a class).
        loaded (list[str]): target keys given a source tensor (under the target's names).
        new (list[str]): target keys an afa_d2 model adds (``backbone.fpn_aggregation*``), left at
            their initialisation.
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
            lines.append("new, not in the source (left at their initialisation): {} tensor(s): {}".format(
                len(self.new), _short(_groups(self.new), limit)))
        by_reason: Dict[str, List[str]] = collections.OrderedDict()
        for k in self.dropped:
            by_reason.setdefault(self.why.get(k, "not in the target"), []).append(k)
        for reason, keys in by_reason.items():
            lines.append("dropped, {}: {} tensor(s): {}".format(reason, len(keys), _short(keys, limit)))
        if self.missing:
            lines.append("MISSING from the source (left at their initialisation): {}".format(
                _short(self.missing, limit)))
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


def _short(keys: Sequence[str], limit: int) -> str:
    return ", ".join(keys[:limit]) + (" ... (+{})".format(len(keys) - limit) if len(keys) > limit else "")


def _groups(keys: Sequence[str]) -> List[str]:
    """``backbone.fpn_aggregation2.attn.q.weight`` ... -> ``backbone.fpn_aggregation2.* (17)``."""
    counts: Dict[str, int] = collections.OrderedDict()
    for k in keys:
        m = re.match(r"(backbone\.fpn_aggregation\d+)\.", k)
        g = m.group(1) + ".*" if m else k
        counts[g] = counts.get(g, 0) + 1
    return ["{} ({})".format(g, n) if n > 1 else g for g, n in counts.items()]


# --------------------------------------------------------------------------------------------- reading
def _numpy_core(submodule: str, name: str):
    try:  # numpy >= 2 names its core numpy._core; pickles written by numpy 1 say numpy.core
        return getattr(importlib.import_module("numpy._core." + submodule), name)
    except ImportError:
        return getattr(importlib.import_module("numpy.core." + submodule), name)


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles what detectron2 model-zoo ``.pkl`` files hold, and nothing else.

    Allowed: numpy arrays (``_reconstruct``, ``ndarray``, protocol 5's ``_frombuffer``), dtypes and
    scalars; ``_codecs.encode`` (how protocol <= 2 pickles from Python 3 spell ``bytes``);
    ``OrderedDict``, ``set``, ``frozenset``, ``bytearray``. Dicts, lists, tuples, strings and numbers
    need no global. Anything else is refused with ``pickle.UnpicklingError`` naming the global.
    """

    _ALLOWED = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,
        ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    }
    for _core in ("numpy.core", "numpy._core"):
        _ALLOWED[(_core + ".multiarray", "_reconstruct")] = lambda: _numpy_core("multiarray", "_reconstruct")
        _ALLOWED[(_core + ".multiarray", "scalar")] = lambda: _numpy_core("multiarray", "scalar")
        _ALLOWED[(_core + ".numeric", "_frombuffer")] = lambda: _numpy_core("numeric", "_frombuffer")
    for _builtins in ("builtins", "__builtin__"):  # Python 3 and Python 2 pickles
        for _name, _obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray)):
            _ALLOWED[(_builtins, _name)] = (lambda o: lambda: o)(_obj)
    del _core, _builtins, _name, _obj

    def find_class(self, module: str, name: str):
        make = self._ALLOWED.get((module, name))
        if make is None:
            raise _RefusedGlobal(
                "refusing GLOBAL {}.{}: a model-zoo .pkl holds numpy arrays and plain containers only, and "
                "unpickling anything else could run code".format(module, name))
        return make()


def _read_pkl(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as e:
        raise pickle.UnpicklingError("{}: {}".format(path, e)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise pickle.UnpicklingError("{}: not a readable pickle (truncated or corrupt?): {}: {}".format(
            path, type(e).__name__, e)) from None


def _to_tensor(v) -> Optional[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.array(v, order="C"))  # a copy (writeable, contiguous; 0-d stays 0-d)
    return None


def load_weights(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors of a checkpoint file, whatever its layout.

    Args:
        path (str): a ``.pkl`` (detectron2's model zoo: numpy arrays, read by a restricted
            unpickler) or a ``.pth`` / ``.pt`` / ``.bin`` (``torch.load(weights_only=True)``);
            a local path, or a URL / hash-named file fetched and checked by
            :func:`afa_d2.hub.fetch_checkpoint`.

    Returns:
        (dict[str, Tensor], dict): the weights (from ``{"model": ...}``, ``{"state_dict": ...}``,
        Detectron's ``{"blobs": ...}`` or a bare state dict) and the file's other top-level
        entries (``__author__``, ``matching_heuristics``, ...).

    Raises:
        FileNotFoundError, pickle.UnpicklingError (a refused global, named), ValueError (an entry
        that is not an array or tensor, named).
    """
    from afa_d2.engine.checkpoint import load_checkpoint_file

    from afa_d2.hub import expected_hash_prefix, fetch_checkpoint

    if "://" in path or expected_hash_prefix(path):
        path = fetch_checkpoint(path)
    if not os.path.isfile(path):
        raise FileNotFoundError("checkpoint {}: no such file".format(path))
    data = _read_pkl(path) if path.endswith(".pkl") else load_checkpoint_file(path)
    return _unwrap(data, path)


def _unwrap(data: Any, name: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    if not isinstance(data, dict):
        raise ValueError("{} holds a {}, not a state dict or a dict with one".format(name, type(data).__name__))
    for key in ("model", "state_dict", "blobs"):
        if isinstance(data.get(key), dict):
            weights, rest = data[key], {k: v for k, v in data.items() if k != key}
            if key == "blobs":  # Detectron (Caffe2) files: blob names, matched by heuristics
                rest.setdefault("__author__", "Caffe2")
                rest["matching_heuristics"] = True
            break
    else:
        weights, rest = data, {}
    out = {}
    for k, v in weights.items():
        t = _to_tensor(v)
        if t is None:
            raise ValueError("{}: entry {!r} is a {}, not an array or tensor".format(name, k, type(v).__name__))
        out[str(k)] = t
    return out, rest


def _source_weights(source) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    if isinstance(source, str):
        weights, rest = load_weights(source)
        return weights, rest, source
    if isinstance(source, dict):
        weights, rest = _unwrap(source, "<state dict>")
        return weights, rest, "<state dict>"
    raise ValueError("source must be a checkpoint path / URL or a state dict, got a {}".format(type(source).__name__))


def save_converted(weights: Dict[str, torch.Tensor], path: str, *, author: str, report: ConversionReport,
                   extra: Optional[Dict[str, Any]] = None) -> str:
    """Write ``{"model": weights, "__author__": author, "conversion": ...}`` to ``path`` atomically.

    ``conversion`` records what the weights were converted from and how (:meth:`ConversionReport.as_record`,
    the afa_d2 version, the time); ``extra`` adds top-level entries (e.g. ``matching_heuristics``).
    The file holds tensors and plain types only, so it loads with ``weights_only=True``.
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
    return path


def _instantiate(target: Target, opts: Sequence[str], node: str) -> nn.Module:
    """A built module, or ``node`` of a LazyConfig (file, or afa_d2 zoo name) with ``opts``."""
    if isinstance(target, nn.Module):
        if opts:
            raise ValueError("opts {} given with a built model: overrides apply to a config only".format(list(opts)))
        return target
    if not isinstance(target, str):
        raise ValueError("the target must be a built model, a LazyConfig file or a zoo config name, got a {}".format(
            type(target).__name__))
    from detectron2.config import instantiate

    from detectron2.config import LazyConfig

    from afa_d2.engine import apply_overrides

    from ..zoo import get_config

    cfg = apply_overrides(LazyConfig.load(target) if os.path.isfile(target) else get_config(target), list(opts))
    for part in node.split("."):
        cfg = cfg[part]
    return instantiate(cfg)


# --------------------------------------------------------------------------------------------- detectron2 FPN
def _target_name(target: Target, opts: Sequence[str]) -> str:
    if isinstance(target, nn.Module):
        return type(target).__name__
    return " ".join([str(target)] + list(opts))


def convert_detectron2_fpn(
    source: Union[str, Dict[str, Any]],
    target: Target,
    *,
    opts: Sequence[str] = (),
    start_as_fpn: bool = False,
    strict: bool = True,
    output: Optional[str] = None,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """A detectron2 FPN detector's weights as the weights of an AttentionFPN detector.

    Every tensor of the source must land on the target under its own name (the bottom-up, the
    laterals ``fpn_lateral{s}``, the output convs ``fpn_output{s}``, RPN and RoI heads); the only
    target tensors the source may lack are the operators' own blocks
    (``backbone.fpn_aggregation{s}.*``), reported as new. See the module doc for
    ``start_as_fpn`` and what nearest / bilinear ``Up`` give.

    Args:
        source (str or dict): a detectron2 checkpoint (its model zoo's ``.pkl`` or a ``.pth``;
            path or URL, see :func:`load_weights`) or a state dict.
        target (str or nn.Module): the AttentionFPN detector: a built model, or a LazyConfig
            (file, or afa_d2 zoo name such as "COCO/mask_rcnn_R_50_mssa_1x.py") with ``opts``.
        opts (list[str]): ``key=value`` overrides of a config ``target``.
        start_as_fpn (bool): initialise the new blocks as FPN's sum (MSSA, concat; "sum" has
            nothing to initialise; ValueError for MSCA, saying why). The target's own
            ``start_as_fpn=True`` does the same at construction.
        strict (bool): raise ValueError (one line naming keys and both shapes) when a shape does
            not fit, a target key outside the new blocks is not in the source, or a source weight
            has no place in the target: a checkpoint of another architecture. With
            ``strict=False`` those are only reported, and the tensors concerned keep the target's
            initialisation.
        output (str or None): where to write the converted ``.pth`` (atomically), if given.

    Returns:
        (dict[str, Tensor], ConversionReport): the whole target's state dict (shared weights from
        the source, new blocks at their initialisation) and what happened.
    """
    if not isinstance(start_as_fpn, bool):
        raise ValueError("start_as_fpn must be a bool, got {!r}".format(start_as_fpn))
    weights, rest, name = _source_weights(source)  # a bad file fails before a model is built
    model = _instantiate(target, opts, "model")
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "level_ops"):
        raise ValueError("the target must be a detector with an afa_d2 AttentionFPN backbone (model.backbone), "
                         "got a {} with backbone {}".format(type(model).__name__, type(backbone).__name__))
    if start_as_fpn:
        backbone.init_as_fpn()  # ValueError for msca / concat with a norm, before anything else changes
    target_state = model.state_dict()
    report = ConversionReport(source=name, target=_target_name(target, opts))
    non_persistent = {k for k, _ in model.named_buffers()} - set(target_state)
    converted: Dict[str, torch.Tensor] = {}
    for k, t in target_state.items():
        if k not in weights:
            (report.new if k.startswith(NEW_BLOCK_PREFIX) else report.missing).append(k)
        elif tuple(weights[k].shape) != tuple(t.shape):
            report.mismatched.append((k, tuple(weights[k].shape), tuple(t.shape)))
        else:
            converted[k] = weights[k].to(dtype=t.dtype)
            report.loaded.append(k)
    unused = []
    for k in weights:
        if k in target_state:
            continue
        if k in non_persistent:
            report.drop(k, "a buffer the target sets from its config (not saved by it)")
        elif k.endswith("num_batches_tracked"):
            report.drop(k, "BatchNorm's step counter (the target's norm keeps none)")
        else:
            report.drop(k, "not in the target")
            unused.append(k)
    author = rest.get("__author__")
    if author:
        report.notes.append("source author: {}".format(author))
    report.notes.append("operators: {}{}".format(
        ", ".join("{}={}".format(lvl, op) for lvl, op in backbone.level_ops.items()),
        "; new blocks start as FPN's sum" if start_as_fpn and set(backbone.level_ops.values()) != {"sum"} else ""))
    if strict and (report.mismatched or report.missing or unused):
        raise ValueError(_mismatch_message(report, unused, rest))
    state = dict(target_state)
    state.update(converted)
    if output:
        save_converted(state, output, author=str(author or "detectron2"), report=report,
                       extra={"start_as_fpn": start_as_fpn})
        report.notes.append("wrote {}".format(output))
    return state, report


def _mismatch_message(report: ConversionReport, unused: Sequence[str], rest: Dict[str, Any]) -> str:
    parts = []
    if report.mismatched:
        parts.append("shapes differ (source vs target): " + ", ".join(
            "{} {} vs {}".format(k, a, b) for k, a, b in report.mismatched[:5])
            + (" ... (+{})".format(len(report.mismatched) - 5) if len(report.mismatched) > 5 else ""))
    if report.missing:
        parts.append("not in the checkpoint: " + _short(report.missing, 5))
    if unused:
        parts.append("in the checkpoint, not in the target: " + _short(list(unused), 5))
    hint = ""
    if rest.get("matching_heuristics"):
        hint = " (the file is marked matching_heuristics: a bottom-up for name matching, not a detector)"
    return "{} does not fit {} (another architecture?){}: {}; pass strict=False (--allow-mismatch) to " \
           "convert anyway".format(report.source, report.target, hint, "; ".join(parts))


# --------------------------------------------------------------------------------------------- torchvision
# torchvision's ImageNet ResNets: RGB input scaled to [0, 1] then normalised by
# mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), i.e. on detectron2's 0..255 scale:
TORCHVISION_PIXEL_MEAN = [123.675, 116.28, 103.53]
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]

_RESNET_DEPTHS = {  # (blocks per stage, bottleneck) -> depth
    ((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152,
}


def torchvision_resnet_overrides(depth: int = 50) -> List[str]:
    """The LazyConfig overrides a detector needs for torchvision ResNet weights.

    torchvision's ResNets take RGB images normalised by ImageNet statistics and put a
    Bottleneck's stride on its 3x3 conv; MSRA's R-50 that detectron2's configs assume takes BGR
    with std 1 and strides the 1x1 (``stride_in_1x1=True``). In a LazyConfig the channel order of
    the images is the data mapper's ``image_format`` (``model.input_format`` is only for
    visualisation), so both are set; the test mapper of detectron2's and afa_d2's
    ``common/data/*.py`` follows ``dataloader.train.mapper.image_format``.

    Args:
        depth (int): 18, 34 (BasicBlock: no stride setting to make) or 50, 101, 152.

    Returns:
        list[str]: ``key=value`` strings for ``train_net.py`` / :func:`afa_d2.engine.apply_overrides`.
    """
    if depth not in (18, 34, 50, 101, 152):
        raise ValueError("depth must be one of 18, 34, 50, 101, 152 (torchvision's ResNets), got {!r}".format(depth))
    out = [
        "model.pixel_mean=[{}]".format(",".join(str(v) for v in TORCHVISION_PIXEL_MEAN)),
        "model.pixel_std=[{}]".format(",".join(str(v) for v in TORCHVISION_PIXEL_STD)),
        "model.input_format=RGB",
        "dataloader.train.mapper.image_format=RGB",
        "model.backbone.bottom_up.stages.depth={}".format(depth),
    ]
    if depth >= 50:
        out.append("model.backbone.bottom_up.stages.stride_in_1x1=False")
    return out


TORCHVISION_SETTINGS = torchvision_resnet_overrides(50)


def _torchvision_name(k: str) -> Optional[str]:
    """torchvision ResNet key -> detectron2 ResNet key (None: not part of detectron2's ResNet)."""
    if k.startswith("fc."):
        return None
    k = re.sub(r"^conv1\.", "stem.conv1.", k)
    k = re.sub(r"^bn1\.", "stem.conv1.norm.", k)
    k = re.sub(r"^layer(\d)\.", lambda m: "res{}.".format(int(m.group(1)) + 1), k)
    k = re.sub(r"\.bn(\d)\.", lambda m: ".conv{}.norm.".format(m.group(1)), k)
    k = k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return k


def _resnet_layout(weights: Dict[str, torch.Tensor]) -> Tuple[Tuple[int, ...], bool]:
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in weights for m in [re.match(r"layer{}\.(\d+)\.".format(stage), k)] if m}
        blocks.append(max(ids) + 1 if ids else 0)
    return tuple(blocks), "layer1.0.conv3.weight" in weights


def convert_torchvision_resnet(
    source: Union[str, Dict[str, Any]],
    *,
    prefix: str = "backbone.bottom_up.",
    output: Optional[str] = None,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """torchvision ResNet weights under detectron2's ``ResNet`` names.

    ``conv1`` / ``bn1`` -> ``stem.conv1`` / ``stem.conv1.norm``; ``layer{N}.{i}`` -> ``res{N+1}.{i}``;
    ``bn{K}`` -> ``conv{K}.norm``; ``downsample.0`` / ``downsample.1`` -> ``shortcut`` /
    ``shortcut.norm``; ``fc`` (the classifier) and BatchNorm's ``num_batches_tracked`` dropped.

    Where the keys go: with ``prefix="backbone.bottom_up."`` (default) they are a detector's
    bottom-up, loaded by name like any checkpoint. With ``prefix=""`` the file is what
    detectron2's ``tools/convert-torchvision-to-d2.py`` writes (``"__author__": "torchvision"``,
    ``"matching_heuristics": True``): detectron2's ``DetectionCheckpointer`` then matches each
    model key to the checkpoint key it ends with (``align_and_update_state_dicts``), which adds
    the ``backbone.bottom_up.`` prefix by name matching.

    The weights need :func:`torchvision_resnet_overrides` (RGB images, torchvision's pixel
    statistics, the Bottleneck's stride on its 3x3 conv): ``report.config_overrides`` holds them
    for the depth found.

    Args:
        source (str or dict): a torchvision ResNet state dict (``.pth`` path / URL, or a dict).
        prefix (str): put in front of every converted key.
        output (str or None): where to write the converted ``.pth`` (atomically), if given.

    Returns:
        (dict[str, Tensor], ConversionReport)
    """
    weights, _, name = _source_weights(source)
    missing = [k for k in ("conv1.weight", "bn1.weight", "layer4.0.conv1.weight") if k not in weights]
    if missing:
        raise ValueError("{}: no {}: not a torchvision ResNet state dict (keys conv1.*, bn1.*, layer1-4.*, fc.*)"
                         .format(name, ", ".join(missing)))
    blocks, bottleneck = _resnet_layout(weights)
    depth = _RESNET_DEPTHS.get((blocks, bottleneck))
    report = ConversionReport(source=name, target="detectron2 ResNet ({})".format(
        "depth {}".format(depth) if depth else "{} blocks per stage".format(list(blocks))))
    out = {}
    for k, v in weights.items():
        if k.endswith("num_batches_tracked"):
            report.drop(k, "BatchNorm's step counter (detectron2's norms keep none)")
            continue
        new = _torchvision_name(k)
        if new is None:
            report.drop(k, "the ImageNet classifier")
            continue
        out[prefix + new] = v
        report.loaded.append(prefix + new)
        report.renamed += int(prefix + new != k)
    if depth is not None:
        report.config_overrides = torchvision_resnet_overrides(depth)
        if depth < 50:
            report.notes.append("depth {} uses BasicBlock, which takes no stride_in_1x1: remove that key from a "
                                "config that sets it (detectron2's common/models/mask_rcnn_fpn.py does)".format(depth))
    else:
        report.config_overrides = [o for o in torchvision_resnet_overrides(50) if ".depth=" not in o]
        report.notes.append("not a standard depth ({} blocks per stage, {}): build the bottom-up to match".format(
            list(blocks), "Bottleneck" if bottleneck else "BasicBlock"))
    extra = {"matching_heuristics": not prefix, "config_overrides": list(report.config_overrides)}
    if output:
        save_converted(out, output, author="torchvision", report=report, extra=extra)
        report.notes.append("wrote {}".format(output))
    return out, report


# --------------------------------------------------------------------------------------------- Swin
_SWIN_BUFFERS = ("relative_position_index", "attn_mask")


def _swin_layout(weights: Dict[str, torch.Tensor], name: str) -> str:
    """"official" (merging at the end of stages 0..2) or "timm" (at the start of stages 1..3)."""
    merging = {int(m.group(1)) for k in weights for m in [re.match(r"layers\.(\d+)\.downsample\.", k)] if m}
    if not merging:
        raise ValueError("{}: no patch-merging weights (layers.<i>.downsample.*): not a Swin Transformer "
                         "checkpoint".format(name))
    return "official" if 0 in merging else "timm"


def convert_swin(
    source: Union[str, Dict[str, Any]],
    bottom_up: Target,
    *,
    opts: Sequence[str] = (),
    prefix: str = "backbone.bottom_up.model.",
    output: Optional[str] = None,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """An ImageNet Swin checkpoint (official or timm layout) as weights of a :class:`SwinBottomUp`.

    The official layout (microsoft/Swin-Transformer) merges patches at the *end* of stages 0..2
    (``layers.{i}.downsample.*``) and names its classifier ``head``; timm >= 0.9 merges at the
    *start* of stages 1..3 (``layers.{i+1}.downsample.*``) and names it ``head.fc``. The layout is
    told by ``layers.0.downsample`` (only the official one has it) and the merging weights move
    one stage up. Then, for the bottom-up (timm's ``features_only`` model, whose stage ``i`` is
    ``layers_{i}``): the classifier, the final ``norm`` (the bottom-up has none) and stages it
    does not use are dropped, and so are the buffers the official code saves and timm
    recomputes (``relative_position_index``, ``attn_mask``), each reported as such. Every
    tensor the bottom-up has must come from the checkpoint with its shape; a relative-position
    bias table of another window size (or any other shape) is an error naming it.

    Args:
        source (str or dict): the checkpoint (``{"model": ...}``, ``{"state_dict": ...}`` or bare;
            path, URL or dict).
        bottom_up (SwinBottomUp, or str): the module the weights are for (its keys decide the
            names), or a LazyConfig (file or zoo name, with ``opts``) whose
            ``model.backbone.bottom_up`` is one.
        opts (list[str]): overrides of a config ``bottom_up``.
        prefix (str): where the bottom-up's timm model sits in the detector ("" for the bare
            ``bottom_up.model``).
        output (str or None): where to write the converted ``.pth`` (atomically), if given.

    Returns:
        (dict[str, Tensor], ConversionReport)
    """
    from afa_d2.modeling import SwinBottomUp

    weights, _, name = _source_weights(source)
    layout = _swin_layout(weights, name)
    module = _instantiate(bottom_up, opts, "model.backbone.bottom_up")
    if not isinstance(module, SwinBottomUp):
        raise ValueError("convert_swin needs a SwinBottomUp (or a config whose model.backbone.bottom_up is one), "
                         "got a {}".format(type(module).__name__))
    target = module.model.state_dict()
    flat = any(k.startswith("layers_") for k in target)  # features_only: "layers_0", a plain model: "layers.0"
    used_stages = {int(m.group(1)) for k in target for m in [re.match(r"layers[._](\d+)\.", k)] if m}
    report = ConversionReport(source=name, target="{} ({})".format(type(module).__name__, module.name))
    out: Dict[str, torch.Tensor] = {}
    bad_shapes = []
    for k, v in weights.items():
        if k.endswith(_SWIN_BUFFERS):
            report.drop(k, "a buffer timm recomputes (not a weight)")
            continue
        canonical = k
        if layout == "official":
            canonical = re.sub(r"^layers\.(\d+)\.downsample\.",
                               lambda m: "layers.{}.downsample.".format(int(m.group(1)) + 1), canonical)
            canonical = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", canonical)
        local = re.sub(r"^layers\.(\d+)\.", r"layers_\1.", canonical) if flat else canonical
        if local not in target:
            stage = re.match(r"layers\.(\d+)\.", canonical)
            if canonical.startswith("head."):
                report.drop(k, "the ImageNet classifier")
            elif canonical.startswith("norm."):
                report.drop(k, "the final norm (the bottom-up has none)")
            elif stage and int(stage.group(1)) not in used_stages:
                report.drop(k, "a stage the bottom-up does not use (its out_features)")
            else:
                report.drop(k, "not in the bottom-up")
            continue
        if tuple(v.shape) != tuple(target[local].shape):
            bad_shapes.append((k, tuple(v.shape), tuple(target[local].shape)))
            continue
        out[prefix + local] = v
        report.loaded.append(prefix + local)
        report.renamed += int(local != k)
    report.mismatched = bad_shapes
    if bad_shapes:
        k, a, b = bad_shapes[0]
        what = ("relative position bias table: made for another window size (the bottom-up's window gives "
                "{})".format(b) if k.endswith("relative_position_bias_table") else "tensor")
        raise ValueError("{}: {} {} has shape {}, the bottom-up needs {}: another Swin variant or window size{}".format(
            name, what, k, a, b, " ({} such tensors)".format(len(bad_shapes)) if len(bad_shapes) > 1 else ""))
    report.missing = [prefix + k for k in target if prefix + k not in out]
    if report.missing:
        raise ValueError("{}: the Swin bottom-up's {} are not in the checkpoint (another Swin variant?)".format(
            name, _short(report.missing, 5)))
    report.notes.append("source layout: {}{}".format(layout, " (patch merging moved to the start of stages 1-3, "
                                                             "head -> head.fc)" if layout == "official" else ""))
    if output:
        save_converted(out, output, author="Swin Transformer ({} layout)".format(layout), report=report)
        report.notes.append("wrote {}".format(output))
    return out, report


# --------------------------------------------------------------------------------------------- commands
def converter_parser(doc: str, source_help: str) -> argparse.ArgumentParser:
    """The shared start of ``tools/convert_*.py``: its docstring as help (first paragraph as the
    description), the ``source`` checkpoint and the ``output`` file to write."""
    head, tail = doc.split("\n\n", 1)
    p = argparse.ArgumentParser(description=head, epilog=tail, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help=source_help)
    p.add_argument("output", help="the converted .pth to write (atomically)")
    return p


def run_converter(parser: argparse.ArgumentParser, convert) -> int:
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
