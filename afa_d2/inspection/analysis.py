"""Model analysis, as detectron2's ``tools/analyze_model.py``: ``python tools/analyze_model.py``.

For any config (a zoo name such as "COCO/cascade_mask_rcnn_R_50_msca_1x.py", a LazyConfig file, a
run's dumped ``config.yaml``, or a yacs ``.yaml``), with command-line overrides, on random weights or
a checkpoint, at a chosen image size:

* ``flop``: fvcore FLOPs (one multiply-add = one flop, detectron2's convention) of the whole
  detector's inference, per module, per operator, and **per pyramid level of the neck**
  (``p2..p6``: the level's lateral 1x1 conv, its aggregation operator, with how much of it is
  attention, and its 3x3 output conv; the top block's levels: a max-pool ``p6``, or RetinaNet's and
  FCOS's ``p6`` / ``p7`` convolutions). Attention is counted: the handle of
  :func:`afa_d2.benchmark.flop_analysis` counts ``Q K^T`` and ``softmax(.) V`` of
  ``scaled_dot_product_attention``, which fvcore alone skips;
* ``activation``: fvcore activation counts (output elements of convs and linears) per module;
* ``parameter``: parameters per module (fvcore ``parameter_count_table``);
* ``structure``: the module tree.

detectron2's ``detectron2.utils.analysis`` imports ``detectron2.export``, which needs caffe2 on the
registry copy of v0.6, so fvcore is used directly here. Inference is traced on one random image
(a fixed seed): the heads' share depends on how many proposals and detections survive, which
random weights change; the neck's FLOPs depend only on the image size.
"""
from __future__ import annotations

import contextlib
import types
from collections import OrderedDict
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from afa_d2.modeling.inference import instance_tensors, raw_inference, supports_raw_inference

from .errors import AnalysisInputError
from .pyramid import find_pyramid, level_modules, operator_label, top_block_label

__all__ = [
    "TASKS",
    "ModelAnalysis",
    "activation_analysis_of",
    "analyze_model",
    "flop_analysis_of",
    "format_level_table",
    "neck_flops_by_level",
    "random_image",
]

TASKS = ("flop", "activation", "parameter", "structure")


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A random uint8-valued image, Tensor of shape (3, height, width), float32 in [0, 255)."""
    if height <= 0 or width <= 0:
        raise AnalysisInputError("image size {}x{} (H x W) must be positive".format(height, width))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=g).float()


@contextlib.contextmanager
def _traceable(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with ``forward(image) -> tuple of tensors`` (one image, inference without
    post-processing, :mod:`afa_d2.modeling.inference`) for fvcore's tracer; module names stay the model's
    own ("backbone.fpn_lateral2")."""

    def forward(self, image: torch.Tensor):
        return instance_tensors(raw_inference(self, [{"image": image}])[0])

    if not supports_raw_inference(model):
        raise AnalysisInputError("{} has no known inference path: the analysis traces detectron2 meta-architectures "
                                 "(GeneralizedRCNN, PanopticFPN, RetinaNet, FCOS)".format(type(model).__name__))
    model.forward = types.MethodType(forward, model)
    try:
        yield model
    finally:
        del model.forward


def flop_analysis_of(model: nn.Module, image: torch.Tensor):
    """fvcore ``FlopCountAnalysis`` of ``model``'s inference on ``image`` (3, H, W), attention counted
    (:func:`afa_d2.benchmark.flop_analysis`), totals computed eagerly."""
    from afa_d2.benchmark import flop_analysis

    with _traceable(model) as traced, torch.no_grad():
        analysis = flop_analysis(traced, (image,))
        analysis.total()  # trace now, while forward is patched
    return analysis


def activation_analysis_of(model: nn.Module, image: torch.Tensor):
    """fvcore ``ActivationCountAnalysis`` of ``model``'s inference on ``image`` (3, H, W)."""
    from fvcore.nn import ActivationCountAnalysis

    with _traceable(model) as traced, torch.no_grad():
        analysis = ActivationCountAnalysis(traced, (image,))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.total()
    return analysis


# ----------------------------------------------------------------------------------- the neck
def neck_flops_by_level(analysis, model: nn.Module) -> "OrderedDict[str, Dict[str, int]]":
    """FLOPs of the pyramid per level, from a FlopCountAnalysis of ``model``.

    Returns:
        level ("p2".."p6", or "p3".."p5" and "p6-p7") -> {"lateral", "aggregation", "attention", "output",
        "total"} (ints; the top block's convolutions count as its "output"; the
        attention FLOPs are part of the aggregation's), plus "neck" -> the same keys summed with
        "total" the whole neck (bottom-up excluded) and "other" (neck FLOPs outside every level's
        modules; 0 for AttentionFPN). Empty when ``model`` has no pyramid.
    """
    prefix, neck = find_pyramid(model)
    out: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    if neck is None:
        return out
    by_module = analysis.by_module()
    by_mod_op = analysis.by_module_and_operator()

    def full(name: str) -> str:
        return "{}.{}".format(prefix, name) if prefix else name

    keys = ("lateral", "aggregation", "attention", "output", "total")
    summed = dict.fromkeys(keys, 0)
    for level, parts in level_modules(neck).items():
        row = dict.fromkeys(keys, 0)
        for role, name in parts.items():
            n = int(by_module.get(full(name), 0))
            if role == "top_block":
                row["output"] += n
            else:
                row[role] += n
            if role == "aggregation":
                row["attention"] = int(by_mod_op.get(full(name), {}).get("scaled_dot_product_attention", 0))
        row["total"] = row["lateral"] + row["aggregation"] + row["output"]
        out[level] = row
        for k in keys:
            summed[k] += row[k]
    bottom_up = int(by_module.get(full("bottom_up"), 0)) if hasattr(neck, "bottom_up") else 0
    neck_total = int(by_module.get(prefix, 0)) - bottom_up
    summed["other"] = neck_total - summed["total"]
    summed["total"] = neck_total
    out["neck"] = summed
    return out


def _g(n: float) -> str:
    return "{:.3f}".format(n / 1e9)


def format_level_table(per_level: Dict[str, Dict[str, int]], neck: Optional[nn.Module] = None) -> str:
    """Markdown table of :func:`neck_flops_by_level`, in GFLOPs (MFLOPs for a neck under 1 GFLOP)."""
    if not per_level:
        return "(the model has no feature pyramid: no per-level FLOPs)"
    scale, unit = (1e9, "GFLOPs") if per_level["neck"]["total"] >= 1e9 else (1e6, "MFLOPs")

    def f(n: int) -> str:
        return "{:.3f}".format(n / scale)

    parts = level_modules(neck) if neck is not None else {}
    lines = ["| level | operator | lateral 1x1 | aggregation | of which attention | output conv | total ({}) |".format(
        unit), "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for level, row in per_level.items():
        if level == "neck":
            continue
        roles = parts.get(level, {})
        op = operator_label(neck, level) if "aggregation" in roles else (top_block_label(neck) if "top_block" in roles
                                                                          else "")
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            level, op, f(row["lateral"]), f(row["aggregation"]), f(row["attention"]), f(row["output"]),
            f(row["total"])))
    n = per_level["neck"]
    lines.append("| **neck** | {} | {} | {} | {} | {} | **{}** |".format(
        operator_label(neck), f(n["lateral"]), f(n["aggregation"]), f(n["attention"]), f(n["output"]),
        f(n["total"])))
    if n.get("other"):
        lines.append("\n(neck FLOPs outside the levels' modules: {} {})".format(f(n["other"]), unit))
    return "\n".join(lines)


def _module_table(counts: Dict[str, int], max_depth: int, unit: str) -> str:
    """Markdown table of per-module counts down to ``max_depth`` dots, in millions."""
    lines = ["| module | {} |".format(unit), "| --- | ---: |"]
    for name, n in counts.items():
        depth = 0 if name == "" else name.count(".") + 1
        if depth > max_depth or (depth > 0 and n == 0):
            continue
        lines.append("| {} | {:.3f} |".format(name or "model", n / 1e6))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- analysis
class ModelAnalysis(dict):
    """The results of :func:`analyze_model`: a dict with, per task run, its numbers and text.

    Keys: "config", "image_size" (H, W), "operator"; "flop" -> {"total", "by_operator",
    "by_level", "unsupported", "table", "level_table"}; "activation" -> {"total", "table"};
    "parameter" -> {"total", "table"}; "structure" -> str.
    """

    def text(self) -> str:
        """Everything as the command prints it."""
        out = ["config: {}  operator: {}  image: {}x{} (H x W)".format(
            self["config"], self["operator"], *self["image_size"])]
        if "flop" in self:
            f = self["flop"]
            out += ["", "## FLOPs (fvcore multiply-adds, attention counted): {} G".format(_g(f["total"])), "",
                    "Per pyramid level of the neck:", "", f["level_table"], "",
                    "By operator (GFLOPs): " + ", ".join("{} {}".format(k, _g(v)) for k, v in
                                                         sorted(f["by_operator"].items(), key=lambda kv: -kv[1])),
                    "Not counted (fvcore has no handle): " + (", ".join(
                        "{} x{}".format(k, v) for k, v in sorted(f["unsupported"].items())) or "none"),
                    "", "Per module:", "", f["table"]]
        if "activation" in self:
            a = self["activation"]
            out += ["", "## Activations: {:.3f} M".format(a["total"] / 1e6), "", a["table"]]
        if "parameter" in self:
            p = self["parameter"]
            out += ["", "## Parameters: {:.3f} M".format(p["total"] / 1e6), "", p["table"]]
        if "structure" in self:
            out += ["", "## Structure", "", self["structure"]]
        return "\n".join(out)


def analyze_model(model: nn.Module, tasks: Sequence[str] = TASKS, image_size: Tuple[int, int] = (800, 1333),
                  *, max_depth: int = 3, config_name: str = "", seed: int = 0) -> ModelAnalysis:
    """Run the analysis ``tasks`` on ``model`` (eval mode) with one random image.

    Args:
        model: a detectron2 meta-architecture (``GeneralizedRCNN``, ``PanopticFPN``, ``RetinaNet``, ``FCOS``).
        tasks (list[str]): a subset of :data:`TASKS`.
        image_size: (H, W) of the random input image (the model pads it to its size divisibility).
        max_depth (int): module depth of the per-module tables.
        config_name (str): shown in the report.
        seed (int): the image's RNG seed.

    Returns:
        ModelAnalysis (see there).
    """
    from fvcore.nn import flop_count_table, parameter_count, parameter_count_table

    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise AnalysisInputError("unknown task(s) {}; valid: {}".format(bad or list(tasks), list(TASKS)))
    h, w = (int(image_size[0]), int(image_size[1]))
    image = random_image(h, w, seed).to(next(model.parameters()).device)
    _, neck = find_pyramid(model)
    result = ModelAnalysis(config=config_name or type(model).__name__, image_size=(h, w),
                           operator=operator_label(neck))
    if "flop" in tasks:
        flops = flop_analysis_of(model, image)
        per_level = neck_flops_by_level(flops, model)
        result["flop"] = {
            "total": int(flops.total()),
            "by_operator": {k: int(v) for k, v in flops.by_operator().items()},
            "by_level": per_level,
            "unsupported": dict(flops.unsupported_ops()),
            "table": flop_count_table(flops, max_depth=max_depth, show_param_shapes=False),
            "level_table": format_level_table(per_level, neck),
        }
    if "activation" in tasks:
        acts = activation_analysis_of(model, image)
        result["activation"] = {"total": int(acts.total()),
                                "table": _module_table(acts.by_module(), max_depth, "activations (M)")}
    if "parameter" in tasks:
        result["parameter"] = {"total": int(parameter_count(model)[""]),
                               "table": parameter_count_table(model, max_depth=max_depth)}
    if "structure" in tasks:
        result["structure"] = str(model)
    return result
