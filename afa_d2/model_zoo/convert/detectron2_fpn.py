"""A detectron2 FPN detector's weights as an AttentionFPN detector's (``tools/convert_detectron2_fpn.py``).

The source is a detectron2 FPN detector: its model-zoo ``.pkl`` or a ``.pth``. The target is an
:class:`~afa_d2.modeling.AttentionFPN` detector of any operator ("sum", "concat", "mssa", "msca").
``AttentionFPN`` keeps FPN's module names (``backbone.fpn_lateral{s}``, ``backbone.fpn_output{s}``,
``backbone.bottom_up.*``; RPN and RoI heads are detectron2's), so every shared weight loads as it is
and only the operators' own blocks (``backbone.fpn_aggregation{s}.*``) are new. Anything else that
does not fit (a shape, a key on one side only) is a checkpoint of another architecture: an error
naming keys and shapes, unless ``strict=False``.

Starting the new blocks as FPN (``start_as_fpn=True`` here or on ``AttentionFPN``; docs/DESIGN.md,
"Converters and ``start_as_fpn``"): MSSA is ``P_i = MS-Att(R_i)``, ``R_i = F_i + Up(P_{i+1})``, and
MS-Att's output is its query plus a DW-MLP branch (eq. 7). With the DW-MLP's last linear (``fc2``,
weight and bias) at zero, ``MS-Att(R_i) = R_i`` and ``P_i = F_i + Up(P_{i+1})``, FPN's sum: exactly
FPN when ``Up`` is nearest (``upsample_mode="nearest"``, detectron2 FPN's), so the converted
detector gives the FPN detector's detections; with the paper's bilinear ``Up`` the start is close
to FPN's, not equal (DESIGN.md gives the measured difference). concat starts as the sum with fuse
weight ``[I | I]`` and bias 0 (without a norm in its fuse conv); "sum" is the sum already. MSCA
cannot: ``P_i = F_i + MS-Att(F_i, Up(P_{i+1}))`` and MS-Att's output already holds its query
``F_i``, so with ``fc2`` at zero ``P_i = 2 F_i`` and the deeper level is lost (ValueError); for
MSCA the converter loads every shared weight and leaves the MSCA blocks at their fresh (PVTv2)
initialisation.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from afa_d2.modeling.aggregation import baseline_operator

from .common import (
    NEW_BLOCK_PREFIX,
    ConversionReport,
    Target,
    converter_parser,
    instantiate_target,
    run_converter,
    save_converted,
    short_keys,
)
from .reading import source_weights

__all__ = ["convert_detectron2_fpn", "main"]

COMMAND_DOC = """Convert a detectron2 FPN checkpoint into the weights of an afa_d2 AttentionFPN detector.

    python tools/convert_detectron2_fpn.py model_final_a54504.pkl out/mask_rcnn_R_50_mssa_from_fpn.pth \\
        --config COCO/mask_rcnn_R_50_mssa_1x.py --start-as-fpn +model.backbone.upsample_mode=nearest

Every shared weight (bottom-up, laterals, output convs, RPN and RoI heads) loads; only the
operator's blocks (backbone.fpn_aggregation*) are new. --start-as-fpn starts MSSA / concat as FPN's
sum (with Up nearest, the converted detector gives the FPN detector's detections; MSCA cannot).
Prints what was loaded, what is new and what was dropped; a checkpoint of another architecture is
an error naming keys and shapes (--allow-mismatch converts anyway). The source is a detectron2
model-zoo .pkl (read without running any code it may hold) or a .pth, a path or a URL
(detectron2://...). See afa_d2.model_zoo.convert.convert_detectron2_fpn.
"""


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
            path or URL, see :func:`~afa_d2.model_zoo.convert.load_weights`) or a state dict.
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
        the source; new blocks at the target's initialisation, or started as FPN's sum with
        ``start_as_fpn``) and what happened.
    """
    if not isinstance(start_as_fpn, bool):
        raise ValueError("start_as_fpn must be a bool, got {!r}".format(start_as_fpn))
    weights, rest, name = source_weights(source)  # a bad file fails before a model is built
    model = instantiate_target(target, opts, "model")
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "level_ops"):
        raise ValueError("the target must be a detector with an afa_d2 AttentionFPN backbone (model.backbone), "
                         "got a {} with backbone {}".format(type(model).__name__, type(backbone).__name__))
    report = ConversionReport(source=name, target=_target_name(target, opts))
    if start_as_fpn:
        backbone.init_as_fpn()  # ValueError for msca / concat with a norm, before anything else changes
        report.new_start = "started as FPN's sum"
    target_state = model.state_dict()
    converted, unused = _match_by_name(model, target_state, weights, report)
    author = rest.get("__author__")
    if author:
        report.notes.append("source author: {}".format(author))
    report.notes.append("operators: {}{}".format(
        ", ".join("{}={}".format(lvl, op) for lvl, op in backbone.level_ops.items()),
        "; new blocks start as FPN's sum" if start_as_fpn and set(backbone.level_ops.values()) != {baseline_operator()}
        else ""))
    if strict and (report.mismatched or report.missing or unused):
        raise ValueError(_mismatch_message(report, unused, rest))
    state = dict(target_state)
    state.update(converted)
    if output:
        save_converted(state, output, author=str(author or "detectron2"), report=report,
                       extra={"start_as_fpn": start_as_fpn})
    return state, report


def _target_name(target: Target, opts: Sequence[str]) -> str:
    if isinstance(target, nn.Module):
        return type(target).__name__
    return " ".join([str(target)] + list(opts))


def _match_by_name(model: nn.Module, target_state: Dict[str, torch.Tensor], weights: Dict[str, torch.Tensor],
                   report: ConversionReport) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Each tensor of ``target_state`` (``model``'s) from the source tensor of its own name, in its dtype.

    Fills ``report`` (loaded; new: in the operators' blocks, which no FPN has; missing; shapes
    that do not fit; dropped with the reason). Returns the tensors that fit and the source keys
    that have no place in the target (the ones ``strict`` refuses).
    """
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
    return converted, unused


def _mismatch_message(report: ConversionReport, unused: Sequence[str], rest: Dict[str, Any]) -> str:
    """The one-line error of a strict conversion that does not fit: shapes, keys on one side only."""
    parts = []
    if report.mismatched:
        parts.append("shapes differ (source vs target): " + short_keys(
            ["{} {} vs {}".format(k, a, b) for k, a, b in report.mismatched], 5))
    if report.missing:
        parts.append("not in the checkpoint: " + short_keys(report.missing, 5))
    if unused:
        parts.append("in the checkpoint, not in the target: " + short_keys(list(unused), 5))
    hint = ""
    if rest.get("matching_heuristics"):
        hint = " (the file is marked matching_heuristics: a bottom-up for name matching, not a detector)"
    return "{} does not fit {} (another architecture?){}: {}; pass strict=False (--allow-mismatch) to " \
           "convert anyway".format(report.source, report.target, hint, "; ".join(parts))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/convert_detectron2_fpn.py``: prints the report; a bad source is one line, exit 2."""
    p = converter_parser(COMMAND_DOC, "detectron2 checkpoint: its model-zoo .pkl or a .pth (path or URL)")
    p.add_argument("--config", required=True,
                   help="the target detector: a LazyConfig file or an afa_d2 zoo config name")
    p.add_argument("--start-as-fpn", action="store_true", help="start MSSA / concat blocks as FPN's sum")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="convert even if weights outside the new blocks do not fit (they keep their initialisation)")
    p.add_argument("opts", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_intermixed_args(argv)  # overrides may follow the flags
    return run_converter(p, lambda: convert_detectron2_fpn(
        args.source, args.config, opts=args.opts, start_as_fpn=args.start_as_fpn,
        strict=not args.allow_mismatch, output=args.output))
