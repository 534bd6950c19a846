"""An ImageNet Swin checkpoint as :class:`~afa_d2.modeling.SwinBottomUp`'s weights (``tools/convert_swin.py``).

Swin checkpoints come in two layouts. The official one (microsoft/Swin-Transformer) merges patches
at the *end* of stages 0..2 (``layers.{i}.downsample.*``) and names its classifier ``head``; timm's
(>= 0.9), which ``SwinBottomUp`` builds on, merges at the *start* of stages 1..3
(``layers.{i+1}.downsample.*``) and names it ``head.fc``. The converter tells them apart, moves the
merging weights and writes the bottom-up's keys (``backbone.bottom_up.model.*``). What the bottom-up
has no use for (the classifier, the final norm, unused stages, buffers timm recomputes) is dropped
and reported; a tensor of the wrong shape (a relative-position bias table of another window size)
is an error naming it, since loading around it would leave a block at random.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch

from .common import (
    ConversionReport,
    Target,
    converter_parser,
    instantiate_target,
    run_converter,
    save_converted,
    short_keys,
)
from .reading import source_weights

__all__ = ["convert_swin", "main"]

COMMAND_DOC = """Convert an ImageNet Swin checkpoint (official or timm layout) into afa_d2's Swin bottom-up.

    python tools/convert_swin.py swin_tiny_patch4_window7_224.pth out/swin_T_bottom_up.pth \\
        --config COCO/cascade_mask_rcnn_swin_T_mssa_1x.py
    python train_net.py --config-file configs/COCO/cascade_mask_rcnn_swin_T_mssa_1x.py \\
        train.init_checkpoint=out/swin_T_bottom_up.pth

Writes backbone.bottom_up.model.* keys. The layout is detected: the official one's patch merging
(end of stages 0-2) moves to timm's (start of stages 1-3) and head -> head.fc; the classifier,
the final norm and the buffers timm recomputes (relative_position_index, attn_mask) are dropped and
reported as such; a relative-position bias table of another window size is an error. See
afa_d2.model_zoo.convert.convert_swin.
"""

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

    The layout is told by ``layers.0.downsample`` (only the official one has it) and the merging
    weights move one stage up (the module doc). Then, for the bottom-up (timm's ``features_only``
    model, whose stage ``i`` is ``layers_{i}``): the classifier, the final ``norm`` (the bottom-up
    has none) and stages it does not use are dropped, and so are the buffers the official code
    saves and timm recomputes (``relative_position_index``, ``attn_mask``), each reported as such.
    Every tensor the bottom-up has must come from the checkpoint with its shape; a
    relative-position bias table of another window size (or any other shape) is an error naming it.

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

    weights, _, name = source_weights(source)
    layout = _swin_layout(weights, name)
    module = instantiate_target(bottom_up, opts, "model.backbone.bottom_up")
    if not isinstance(module, SwinBottomUp):
        raise ValueError("convert_swin needs a SwinBottomUp (or a config whose model.backbone.bottom_up is one), "
                         "got a {}".format(type(module).__name__))
    target = module.model.state_dict()
    report = ConversionReport(source=name, target="{} ({})".format(type(module).__name__, module.name))
    out, bad_shapes = _map_keys(weights, target, layout, prefix, report)
    _check_complete(name, bad_shapes, [prefix + k for k in target if prefix + k not in out])
    report.notes.append("source layout: {}{}".format(layout, " (patch merging moved to the start of stages 1-3, "
                                                             "head -> head.fc)" if layout == "official" else ""))
    if output:
        save_converted(out, output, author="Swin Transformer ({} layout)".format(layout), report=report)
    return out, report


def _canonical(k: str, layout: str) -> str:
    """A checkpoint key in timm's layout: official merging one stage up, ``head`` -> ``head.fc``."""
    if layout != "official":
        return k
    k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: "layers.{}.downsample.".format(int(m.group(1)) + 1), k)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)


def _why_not_used(canonical: str, used_stages: Set[int]) -> str:
    stage = re.match(r"layers\.(\d+)\.", canonical)
    if canonical.startswith("head."):
        return "the ImageNet classifier"
    if canonical.startswith("norm."):
        return "the final norm (the bottom-up has none)"
    if stage and int(stage.group(1)) not in used_stages:
        return "a stage the bottom-up does not use (its out_features)"
    return "not in the bottom-up"


def _map_keys(weights: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor], layout: str, prefix: str,
              report: ConversionReport) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, tuple, tuple]]]:
    """Each checkpoint tensor under the bottom-up's key (``prefix`` in front), or dropped with the reason
    in ``report``. Returns the tensors that fit and (source key, its shape, the target's) of those that do not."""
    flat = any(k.startswith("layers_") for k in target)  # features_only: "layers_0", a plain model: "layers.0"
    used_stages = {int(m.group(1)) for k in target for m in [re.match(r"layers[._](\d+)\.", k)] if m}
    out: Dict[str, torch.Tensor] = {}
    bad_shapes = []
    for k, v in weights.items():
        if k.endswith(_SWIN_BUFFERS):
            report.drop(k, "a buffer timm recomputes (not a weight)")
            continue
        canonical = _canonical(k, layout)
        local = re.sub(r"^layers\.(\d+)\.", r"layers_\1.", canonical) if flat else canonical
        if local not in target:
            report.drop(k, _why_not_used(canonical, used_stages))
        elif tuple(v.shape) != tuple(target[local].shape):
            bad_shapes.append((k, tuple(v.shape), tuple(target[local].shape)))
        else:
            out[prefix + local] = v
            report.loaded.append(prefix + local)
            report.renamed += int(local != k)
    return out, bad_shapes


def _check_complete(name: str, bad_shapes: Sequence[Tuple[str, tuple, tuple]], missing: List[str]) -> None:
    """ValueError naming a tensor of the wrong shape, or the bottom-up's tensors the checkpoint lacks."""
    if bad_shapes:
        k, a, b = bad_shapes[0]
        what = ("relative position bias table: made for another window size (the bottom-up's window gives "
                "{})".format(b) if k.endswith("relative_position_bias_table") else "tensor")
        raise ValueError("{}: {} {} has shape {}, the bottom-up needs {}: another Swin variant or window size{}".format(
            name, what, k, a, b, " ({} such tensors)".format(len(bad_shapes)) if len(bad_shapes) > 1 else ""))
    if missing:
        raise ValueError("{}: the Swin bottom-up's {} are not in the checkpoint (another Swin variant?)".format(
            name, short_keys(missing, 5)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/convert_swin.py``: prints the report; a bad source is one line, exit 2."""
    p = converter_parser(COMMAND_DOC, "a Swin checkpoint (.pth, path or URL; official or timm layout)")
    p.add_argument("--config", default="COCO/cascade_mask_rcnn_swin_T_sum_1x.py",
                   help="a config whose model.backbone.bottom_up is the Swin bottom-up (LazyConfig file or zoo name)")
    p.add_argument("--prefix", default="backbone.bottom_up.model.", help="key prefix (default: a detector's)")
    p.add_argument("opts", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_intermixed_args(argv)  # overrides may follow the flags
    return run_converter(p, lambda: convert_swin(
        args.source, args.config, opts=args.opts, prefix=args.prefix, output=args.output))
