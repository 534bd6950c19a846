"""The paper's Tables 1, 3, 4, 5 and 6 from runs' output folders: ``python tools/make_tables.py``.

Each table lists the configs of its rows (``configs/README.md``, "Paper tables <-> configs"), with
columns describing the row derived from the config itself (backbone, operator, dataset, levels,
pooling), then our box / mask AP from the runs beside the paper's numbers
(:data:`afa_d2.model_zoo.paper.PAPER_RESULTS`, headed "paper"). A row without a run says
"missing". With runs, each AP also shows its gain over the table's baseline row (docs/DESIGN.md, "The
experiments": what should reproduce across frameworks is the gain), the paper's likewise.

A run folder is what ``train_net.py`` writes: ``config.yaml`` (the dumped config) and
``metrics.json`` (one JSON object a line; the last line with "bbox/AP" is the final evaluation). A
run is placed in the row whose config it reproduces: same test dataset, architecture, bottom-up,
aggregation operator per level, pooling and epochs (:func:`config_signature`); command-line changes
to anything else (batch, lr, output folder) do not move it. ``--run CONFIG=DIR`` places a run
explicitly.

With no runs, the tables hold the paper's numbers only: that is what ``configs/README.md`` shows
between its ``<!-- make_tables:begin tableN -->`` / ``<!-- make_tables:end -->`` markers, written by
``python tools/make_tables.py --update configs/README.md`` (a test checks that they are equal).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from afa_d2.modeling.aggregation import AGGREGATION_OPS, baseline_operator, operator_label
from afa_d2.inspection.errors import RunError

__all__ = [
    "TABLES",
    "RunResult",
    "TableSpec",
    "baseline_config",
    "config_signature",
    "make_tables",
    "paper_values",
    "place_runs",
    "read_run",
    "render_table",
    "table_configs",
]

LEVELS = ("p2", "p3", "p4", "p5")


# ----------------------------------------------------------------------------------- configs
def _get(node: Any, dotted: str, default: Any = None) -> Any:
    """``node.a.b.c`` of a LazyConfig (or a plain dict), ``default`` where any part is missing."""
    for part in dotted.split("."):
        try:
            if hasattr(node, "keys") and part in node.keys():
                node = node[part]
            else:
                return default
        except Exception:  # an interpolation that cannot be resolved
            return default
    return node


def _target_name(target: Any) -> str:
    """The class name of a ``_target_`` (an object in a loaded ``.py``, a dotted str in a dumped yaml)."""
    if target is None:
        return ""
    if isinstance(target, str):
        return target.rsplit(".", 1)[-1]
    return getattr(target, "__qualname__", getattr(target, "__name__", str(target))).rsplit(".", 1)[-1]


def _bottom_up_name(bottom_up: Any) -> str:
    target = _target_name(_get(bottom_up, "_target_"))
    if target == "SwinBottomUp":
        name = str(_get(bottom_up, "name", ""))
        for key, label in (("tiny", "Swin-T"), ("small", "Swin-S"), ("base", "Swin-B"), ("large", "Swin-L")):
            if key in name:
                return label
        return "Swin ({})".format(name)
    depth = _get(bottom_up, "stages.depth")
    if target == "ResNet" and depth is not None:
        return "R-{}".format(int(depth))
    return target or "?"


def _level_ops(backbone: Any) -> Tuple[Tuple[str, str], ...]:
    """The levels that do not use the baseline operator, with their operator: (("p4", op), ("p5", op))."""
    agg = _get(backbone, "aggregation", baseline_operator())
    if hasattr(agg, "keys"):
        ops = {str(k): str(agg[k]) for k in agg.keys()}
    else:
        levels = _get(backbone, "attention_levels", None)
        if levels is None:  # every level of the pyramid: p2..p5 for the tables' R-CNNs
            levels = LEVELS
        ops = {str(lvl): str(agg) for lvl in levels}
    return tuple(sorted((lvl, op) for lvl, op in ops.items() if op != baseline_operator()))


def config_signature(cfg) -> Dict[str, Any]:
    """What makes a config a row of the paper's tables.

    Args:
        cfg: a LazyConfig (a loaded ``.py`` or a run's dumped ``config.yaml``).

    Returns:
        dict: "dataset" (test dataset names), "arch" ("cascade_mask_rcnn" / "mask_rcnn"), "bottom_up"
        ("R-50", "R-101", "Swin-T"), "ops" (non-sum levels and their operator), "pooling" (with the
        adaptive size; None without attention), "epochs".
    """
    backbone = _get(cfg, "model.backbone")
    ops = _level_ops(backbone)
    attention = any(op in AGGREGATION_OPS and AGGREGATION_OPS[op].uses_attention for _, op in ops)
    pooling = None
    if attention:
        pooling = str(_get(backbone, "pooling", "multi_scale"))
        if pooling == "adaptive":
            pooling = "adaptive {0}x{0}".format(int(_get(backbone, "adaptive_pool_size", 7)))
    names = _get(cfg, "dataloader.test.dataset.names", "")
    names = str(names) if isinstance(names, str) else ",".join(str(n) for n in names)
    epochs = _get(cfg, "train.epochs")
    return {
        "dataset": names,
        "arch": "cascade_mask_rcnn" if "Cascade" in _target_name(_get(cfg, "model.roi_heads._target_"))
        else "mask_rcnn",
        "bottom_up": _bottom_up_name(_get(backbone, "bottom_up")),
        "ops": ops,
        "pooling": pooling,
        "epochs": None if epochs is None else float(epochs),
    }


# ----------------------------------------------------------------------------------- the tables
def _backbone(sig: Dict[str, Any]) -> str:
    return sig["bottom_up"]


def _operator(sig: Dict[str, Any]) -> str:
    ops = sorted(set(op for _, op in sig["ops"]))
    if not ops:
        return operator_label(baseline_operator())
    if len(ops) == 1 and len(sig["ops"]) == len(LEVELS):
        return operator_label(ops[0])
    return "; ".join("{} on {}".format(operator_label(op), ", ".join(lvl for lvl, o in sig["ops"] if o == op))
                     for op in ops)


def _dataset(sig: Dict[str, Any]) -> str:
    name = sig["dataset"]
    if name.startswith("coco"):
        return "COCO"
    if name.startswith("lvis_v1"):
        return "LVIS v1"
    return name


def _attention_levels(sig: Dict[str, Any]) -> str:
    levels = [lvl for lvl, _ in sig["ops"]]
    if not levels:
        return "—"
    paper = ["P{}".format(int(lvl[1:]) - 2) for lvl in levels]
    if len(levels) == len(LEVELS):
        return "all four: {}..{} ({}..{})".format(levels[0], levels[-1], paper[0], paper[-1])
    names = ", ".join(levels)
    return "{} ({})".format(names, ", ".join(paper) if len(paper) < 3 else "{}..{}".format(paper[0], paper[-1]))


def _pooling(sig: Dict[str, Any]) -> str:
    pooling = sig["pooling"] or ""
    if pooling == "multi_scale":
        return "multi-scale (r_i and 2 r_i)"
    if pooling == "single_scale":
        return "single-scale (stride r_i)"
    return pooling or "—"


def _levels_header(sigs: Sequence[Dict[str, Any]]) -> str:
    """The header of the "levels" column: "<label> on", the operators the table's rows put on some levels."""
    ops = sorted({op for sig in sigs for _, op in sig["ops"]})
    return "{} on".format(" / ".join(operator_label(op) for op in ops))


#: descriptive column -> (header, or its function of the table's rows' signatures; function of a row's signature)
COLUMNS: Dict[str, Tuple[Any, Callable[[Dict[str, Any]], str]]] = {
    "backbone": ("backbone", _backbone),
    "operator": ("operator", _operator),
    "dataset": ("dataset", _dataset),
    "levels": (_levels_header, _attention_levels),
    "pooling": ("pooling", _pooling),
}


@dataclass(frozen=True)
class TableSpec:
    """One of the paper's tables: its rows (config names) and descriptive columns."""

    key: str  # "table1": the name of its block in markdown files
    number: str  # "1"
    title: str
    columns: Tuple[str, ...]  # keys of COLUMNS
    rows: Tuple[str, ...]
    fps: bool  # the paper's table has FPS


#: the paper's tables as it prints them: their titles and rows (config names, as in
#: :data:`afa_d2.model_zoo.paper.PAPER_RESULTS`)
TABLES: "OrderedDict[str, TableSpec]" = OrderedDict((t.key, t) for t in (
    TableSpec("table1", "1", "Cascade Mask R-CNN, aggregation operators", ("backbone", "operator"), (
        "COCO/cascade_mask_rcnn_R_50_sum_1x.py",
        "COCO/cascade_mask_rcnn_R_50_concat_1x.py",
        "COCO/cascade_mask_rcnn_R_50_mssa_1x.py",
        "COCO/cascade_mask_rcnn_R_50_msca_1x.py",
        "COCO/cascade_mask_rcnn_R_101_sum_1x.py",
        "COCO/cascade_mask_rcnn_R_101_concat_1x.py",
        "COCO/cascade_mask_rcnn_R_101_mssa_1x.py",
        "COCO/cascade_mask_rcnn_R_101_msca_1x.py"), fps=True),
    TableSpec("table3", "3", "Mask R-CNN R-50 on COCO and LVIS v1", ("dataset", "operator"), (
        "COCO/mask_rcnn_R_50_sum_1x.py",
        "COCO/mask_rcnn_R_50_mssa_1x.py",
        "COCO/mask_rcnn_R_50_msca_1x.py",
        "LVIS/mask_rcnn_R_50_sum_1x.py",
        "LVIS/mask_rcnn_R_50_mssa_1x.py",
        "LVIS/mask_rcnn_R_50_msca_1x.py"), fps=True),
    TableSpec("table4", "4", "Cascade R-50, MSSA on some levels, sum-up on the others (paper P0..P3 = p2..p5)",
              ("levels",), (
        "COCO/cascade_mask_rcnn_R_50_sum_1x.py",
        "COCO/cascade_mask_rcnn_R_50_mssa_p5_1x.py",
        "COCO/cascade_mask_rcnn_R_50_mssa_p4p5_1x.py",
        "COCO/cascade_mask_rcnn_R_50_mssa_p3p4p5_1x.py",
        "COCO/cascade_mask_rcnn_R_50_mssa_1x.py"), fps=False),
    TableSpec("table5", "5", "Cascade R-50 MSSA, key/value pooling", ("pooling",), (
        "COCO/cascade_mask_rcnn_R_50_mssa_single_scale_1x.py",
        "COCO/cascade_mask_rcnn_R_50_mssa_adaptive_1x.py",
        "COCO/cascade_mask_rcnn_R_50_mssa_1x.py"), fps=True),
    TableSpec("table6", "6", "Cascade Mask R-CNN with a Swin-T bottom-up (timm)", ("operator",), (
        "COCO/cascade_mask_rcnn_swin_T_sum_1x.py",
        "COCO/cascade_mask_rcnn_swin_T_mssa_1x.py"), fps=True),
))

def table_configs() -> List[str]:
    """Every config in the tables, each once, in table order."""
    out: List[str] = []
    for spec in TABLES.values():
        out += [r for r in spec.rows if r not in out]
    return out


def paper_values(table: str, config: str) -> Dict[str, Optional[float]]:
    """The paper's box AP, mask AP and FPS for ``config`` as table ``table`` prints them
    (:func:`afa_d2.model_zoo.paper.paper_table_values`)."""
    from afa_d2.model_zoo.paper import paper_table_values

    return paper_table_values(table, config)


_SIGNATURES: Dict[str, Dict[str, Any]] = {}


def _signature_of(config: str) -> Dict[str, Any]:
    if config not in _SIGNATURES:
        from afa_d2.model_zoo import get_config

        _SIGNATURES[config] = config_signature(get_config(config))
    return _SIGNATURES[config]


def baseline_config(config: str) -> Optional[str]:
    """The baseline row ``config`` is compared with (no level off the baseline operator): same dataset,
    architecture, bottom-up and epochs."""
    sig = _signature_of(config)
    key = (sig["dataset"], sig["arch"], sig["bottom_up"], sig["epochs"])
    for other in table_configs():
        o = _signature_of(other)
        if not o["ops"] and (o["dataset"], o["arch"], o["bottom_up"], o["epochs"]) == key:
            return other
    return None


# ----------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """A run's final evaluation: ``box_AP``, ``mask_AP`` (None without masks), at ``iteration``."""

    run_dir: str
    box_AP: float
    mask_AP: Optional[float]
    iteration: Optional[int]
    signature: Optional[Dict[str, Any]] = None


def read_run(run_dir: str) -> RunResult:
    """The last evaluation in ``<run_dir>/metrics.json`` and the signature of ``<run_dir>/config.yaml``.

    Raises:
        RunError: no such folder, no ``metrics.json``, no evaluation in it, or an unreadable file.
    """
    if not os.path.isdir(run_dir):
        raise RunError("run folder {!r}: no such folder (cwd: {})".format(run_dir, os.getcwd()))
    metrics = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics):
        raise RunError("run folder {} has no metrics.json: pass a train_net.py training run's output folder "
                       "(its train.output_dir), which writes metrics.json as it trains".format(run_dir))
    from afa_d2.engine.metrics_json import read_metrics

    try:
        rows = read_metrics(metrics)
    except ValueError as e:
        raise RunError("{}; re-run the evaluation with train_net.py --eval-only".format(e)) from None
    last = next((row for row in reversed(rows) if "bbox/AP" in row), None)
    if last is None:
        raise RunError("run folder {}: metrics.json has no evaluation (no line with \"bbox/AP\"): the run has not "
                       "reached an evaluation; let it finish or lower train.eval_period".format(run_dir))
    signature = None
    config_yaml = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(config_yaml):
        from detectron2.config import LazyConfig

        try:
            signature = config_signature(LazyConfig.load(config_yaml))
        except Exception as e:  # a foreign or broken dump: the run can still be placed with --run
            raise RunError("run folder {}: config.yaml cannot be read ({}); place the run with --run CONFIG={}".format(
                run_dir, str(e).splitlines()[0] if str(e) else type(e).__name__, run_dir)) from None
    mask = last.get("segm/AP")
    return RunResult(run_dir=run_dir, box_AP=float(last["bbox/AP"]), mask_AP=None if mask is None else float(mask),
                     iteration=last.get("iteration"), signature=signature)


def place_runs(run_dirs: Sequence[str] = (), explicit: Optional[Mapping[str, str]] = None
               ) -> Tuple[Dict[str, RunResult], List[Tuple[str, str]]]:
    """Which run is which table row.

    Args:
        run_dirs: run folders, placed by their ``config.yaml`` (:func:`config_signature`).
        explicit: config name -> run folder, placed as told.

    Returns:
        (config name -> RunResult, [(run folder, why it was not placed)]).

    Raises:
        RunError: an unreadable run, an explicit config that is no table row, two runs for one row.
    """
    known = table_configs()
    placed: Dict[str, RunResult] = {}
    unplaced: List[Tuple[str, str]] = []
    for config, run_dir in (explicit or {}).items():
        if config not in known:
            raise RunError("--run {}={}: {!r} is not a row of Tables {}; valid: {}".format(
                config, run_dir, config, ", ".join(t.number for t in TABLES.values()), ", ".join(known)))
        placed[config] = read_run(run_dir)
    for run_dir in run_dirs:
        run = read_run(run_dir)
        if run.signature is None:
            unplaced.append((run_dir, "no config.yaml; place it with --run CONFIG={}".format(run_dir)))
            continue
        match = [c for c in known if _signature_of(c) == run.signature]
        if not match:
            unplaced.append((run_dir, "its config ({}) is no table row; place it with --run CONFIG={}".format(
                _describe(run.signature), run_dir)))
            continue
        config = match[0]
        if config in placed:
            raise RunError("two runs for {}: {} and {}; pass only one, or place one with --run {}=DIR".format(
                config, placed[config].run_dir, run_dir, config))
        placed[config] = run
    return placed, unplaced


def _describe(sig: Dict[str, Any]) -> str:
    return "{} {} on {}, {}, {} epochs".format(sig["arch"], sig["bottom_up"], sig["dataset"] or "?", _operator(sig),
                                               "?" if sig["epochs"] is None else "{:g}".format(sig["epochs"]))


# ----------------------------------------------------------------------------------- markdown
def _num(v: Optional[float], base: Optional[float] = None) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    text = "{:.1f}".format(v)
    if base is not None and not (isinstance(base, float) and math.isnan(base)):
        text += " ({:+.1f})".format(v - base)
    return text


def render_table(spec: TableSpec, runs: Optional[Mapping[str, RunResult]] = None) -> str:
    """One table as markdown: its bold title line, a blank line, the table.

    Args:
        spec: the table.
        runs: config name -> RunResult. None: the paper's numbers only (what configs/README.md shows);
            a mapping (even empty): our AP and the paper's side by side, gains over the baseline row,
            "missing" where a row has no run.
    """
    sigs = [_signature_of(config) for config in spec.rows]
    header = ["config"] + [h(sigs) if callable(h) else h for h in (COLUMNS[c][0] for c in spec.columns)]
    align = ["---"] * len(header)
    if runs is not None:
        header += ["box AP", "paper box AP", "mask AP", "paper mask AP"]
    else:
        header += ["paper box AP", "paper mask AP"]
    align += ["---:"] * (len(header) - len(align))
    if spec.fps:
        header.append("paper FPS")
        align.append("---:")
    if runs is not None:
        header.append("run")
        align.append("---")
    lines = ["**Table {}** — {}".format(spec.number, spec.title), "",
             "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for config in spec.rows:
        sig = _signature_of(config)
        paper = paper_values(spec.number, config)
        cells = ["`{}`".format(config)] + [COLUMNS[c][1](sig) for c in spec.columns]
        if runs is None:
            cells += [_num(paper["box_AP"]), _num(paper["mask_AP"])]
        else:
            base = baseline_config(config)
            base = None if base == config else base
            paper_base = paper_values(spec.number, base) if base else {"box_AP": None, "mask_AP": None}
            run, base_run = runs.get(config), runs.get(base) if base else None
            if run is None:
                ours = ["missing", "missing"]
            else:
                ours = [_num(run.box_AP, base_run.box_AP if base_run else None),
                        _num(run.mask_AP, base_run.mask_AP if base_run and run.mask_AP is not None else None)]
            cells += [ours[0], _num(paper["box_AP"], paper_base["box_AP"]),
                      ours[1], _num(paper["mask_AP"], paper_base["mask_AP"])]
        if spec.fps:
            cells.append(_num(paper["fps"]))
        if runs is not None:
            cells.append("`{}`".format(runs[config].run_dir) if config in runs else "missing")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_tables(run_dirs: Sequence[str] = (), explicit: Optional[Mapping[str, str]] = None,
                tables: Optional[Sequence[str]] = None, paper_only: Optional[bool] = None) -> Dict[str, Any]:
    """The tables as markdown blocks.

    Args:
        run_dirs: run folders to place by their config.
        explicit: config name -> run folder.
        tables: table keys ("table1") or numbers ("1"); default all of :data:`TABLES`.
        paper_only: the paper's numbers only; default: when no run is given.

    Returns:
        dict: "blocks" (table key -> markdown), "runs" (config -> RunResult), "unplaced" ([(dir, why)]).
    """
    keys = _table_keys(tables)
    runs, unplaced = place_runs(run_dirs, explicit)
    if paper_only is None:
        paper_only = not run_dirs and not explicit
    blocks = OrderedDict((k, render_table(TABLES[k], None if paper_only else runs)) for k in keys)
    return {"blocks": blocks, "runs": runs, "unplaced": unplaced}


def _table_keys(tables: Optional[Sequence[str]]) -> List[str]:
    if not tables:
        return list(TABLES)
    out = []
    for t in tables:
        key = t if str(t).startswith("table") else "table{}".format(t)
        if key not in TABLES:
            raise RunError("unknown table {!r}; valid: {}".format(t, ", ".join(s.number for s in TABLES.values())))
        out.append(key)
    return out
