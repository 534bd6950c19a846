"""A study's results for people: a markdown table, one sentence per comparison, and a figure.

``study.md``: the design and recipe, per arm the mean and 95% interval of each metric over seeds, then
the paired differences against each arm's baseline with their intervals and p-values, then one
sentence per comparison. ``study.png``: per arm one dot per seed and the mean with its interval, for
box AP, mask AP and context box AP, and a panel of the paired differences with zero marked.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

from .runs import INFERENCE_IMAGES

__all__ = ["markdown", "sentences", "write_reports", "plot", "replace_between_markers"]

_SHOWN = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("bbox/AP50", "box AP50"), ("bbox/APs", "box APs"),
          ("bbox/APm", "box APm"), ("bbox/APl", "box APl"), ("bbox/AP-context", "context box AP"),
          ("segm/AP-context", "context mask AP"), ("bbox/AP-shapes", "shapes box AP"))
_COMPARED = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("bbox/AP-context", "context box AP"),
             ("bbox/AP-shapes", "shapes box AP"), ("bbox/APs", "box APs"))


def _num(v: Optional[float], digits: int = 1, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return ("{:+.%df}" % digits).format(v) if sign else ("{:.%df}" % digits).format(v)


def _interval(s: Dict, sign: bool = False, digits: int = 1) -> str:
    if s.get("ci_low") is None:
        return _num(s.get("mean"), digits, sign)
    return "{} [{}, {}]".format(_num(s["mean"], digits, sign), _num(s["ci_low"], digits, sign),
                                _num(s["ci_high"], digits, sign))


def _p(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else "{:.3f}".format(p)


def _labels(study: Dict) -> Dict[str, str]:
    return {a["name"]: a.get("label") or a["name"] for a in study["design"]["arms"]}


def sentences(study: Dict) -> List[str]:
    """One sentence per comparison: the mean paired difference of box AP (and mask, context) with its interval."""
    stats = study["statistics"]
    labels = _labels(study)
    out = []
    for arm, pair in stats["paired"].items():
        box = pair.get("bbox/AP")
        if not box:
            continue
        n = box["n"]
        parts = []
        for metric, name in (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("bbox/AP-context", "context box AP")):
            d = pair.get(metric)
            if not d:
                continue
            if d.get("ci_low") is None:
                parts.append("{} {}".format(_num(d["mean"], sign=True), name))
                continue
            verdict = ("not distinguishable from zero" if d["ci_low"] <= 0 <= d["ci_high"]
                       else "above zero" if d["ci_low"] > 0 else "below zero")
            p_text = _p(d.get("p"))
            parts.append("{} {} (95% CI {} to {}, p {}: {})".format(
                _num(d["mean"], sign=True), name, _num(d["ci_low"], sign=True), _num(d["ci_high"], sign=True),
                p_text if p_text.startswith("<") else "= " + p_text, verdict))
        out.append("{} − {}: {}; {} seed{} paired.".format(labels.get(arm, arm), labels.get(pair["baseline"]),
                                                           "; ".join(parts), n, "" if n == 1 else "s"))
    return out


def markdown(study: Dict) -> str:
    design = study["design"]
    stats = study["statistics"]
    labels = _labels(study)
    recipe = design["recipe"]
    seeds = sorted({r["seed"] for r in study["runs"]})
    planned = len(design["arms"]) * len(study.get("seeds") or seeds)
    lines = [
        "**{}** — {}.".format(design["name"], design.get("description", "")),
        "",
        "Recipe, the same for every arm: {max_iter} iterations (fine-tuned arms: their own count, the same for "
        "all), shapes_train {num_train} images, evaluated on {num_val} val images, {threads} thread(s) a run. "
        "Finished runs: {runs} of {planned}{unfinished}; seeds {seeds}. Means with 95% Student-t intervals over "
        "seeds; differences paired by seed (same data order, same initialisation of the shared parts), two-sided "
        "paired t-test."
        .format(runs=len(study["runs"]), planned=planned, seeds=", ".join(str(s) for s in seeds) or "none",
                unfinished="" if len(study["runs"]) >= planned else " (unfinished: the same command trains the rest)",
                **recipe),
        "",
        "| arm | seeds | " + " | ".join(name for _, name in _SHOWN) + " | params | GFLOPs | train s/iter "
        "| inference s/img |",
        "| --- | ---: | " + " | ".join("---:" for _ in _SHOWN) + " | ---: | ---: | ---: | ---: |",
    ]
    cost = study.get("cost", {})
    for arm in design["arms"]:
        s = stats["arms"].get(arm["name"], {})
        n = s.get("bbox/AP", {}).get("n", 0)
        cells = [_interval(s[m]) if m in s else "n/a" for m, _ in _SHOWN]
        c = cost.get(arm["name"], {})
        cells += ["{:.2f} M".format(c["params"] / 1e6) if "params" in c else "n/a", _num(c.get("gflops"), 2)]
        cells += [_num(s.get(m, {}).get("mean"), 3) for m in ("time/train_s_per_iter", "time/inference_s_per_image")]
        lines.append("| {} | {} | {} |".format(labels[arm["name"]], n, " | ".join(cells)))
    if stats["paired"]:
        lines += ["", "Paired differences against the baseline, mean [95% CI] (p):", "",
                  "| arm − baseline | pairs | " + " | ".join("Δ " + name for _, name in _COMPARED) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in _COMPARED) + " |"]
        for arm, pair in stats["paired"].items():
            n = pair.get("bbox/AP", {}).get("n", 0)
            cells = ["{} ({})".format(_interval(pair[m], sign=True), _p(pair[m].get("p"))) if m in pair else "n/a"
                     for m, _ in _COMPARED]
            lines.append("| {} − {} | {} | {} |".format(labels[arm], labels[pair["baseline"]], n, " | ".join(cells)))
    timing = "Timings are the runs' own (median step; inference over {} val images), measured while {} run(s) shared " \
             "the host: compare them only within one study.".format(INFERENCE_IMAGES, max((r.get("time", {}).get(
                 "runs_sharing_host", 1) for r in study["runs"]), default=1))
    lines += ["", timing]
    quiet = study.get("quiet_timing")
    if quiet:
        lines += ["", "Measured side by side in one process on a quiet host ({} threads, {} rounds, medians; "
                  "`tools/study.py --time`; {}):".format(quiet["threads"], quiet["rounds"],
                                                       (quiet.get("host") or {}).get("cpu", "host not recorded")),
                  "", "| arm | inference s/img | × baseline | train s/step | × baseline |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for arm in design["arms"]:
            q = quiet["arms"].get(arm["name"], {})
            lines.append("| {} | {} | {} | {} | {} |".format(
                labels[arm["name"]], _num(q.get("inference_s_per_image"), 3), _num(q.get("inference_ratio"), 2),
                _num(q.get("train_s_per_step"), 3), _num(q.get("train_ratio"), 2)))
    if cost:
        size = next(iter(cost.values())).get("image_size")
        lines += ["", "Parameters and GFLOPs (multiply-adds, attention counted) of inference on one {}x{} image "
                  "(the config's test size), `afa_d2.inspection.analysis`.".format(*(size or ("?", "?")))]
    said = sentences(study)
    if said:
        lines += [""] + ["- " + s for s in said]
    return "\n".join(lines) + "\n"


def plot(study: Dict, path: str) -> None:
    """The study's figure (PNG): dots per seed, mean and interval per arm; paired differences with zero marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    design = study["design"]
    labels = _labels(study)
    names = [a["name"] for a in design["arms"]]
    panels = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("bbox/AP-context", "context box AP (markers)"))
    fig, axes = plt.subplots(1, 4, figsize=(18, 0.55 * len(names) + 2.2), constrained_layout=True)
    for ax, (metric, title) in zip(axes, panels):
        for i, name in enumerate(names):
            values = [r["metrics"].get(metric) for r in study["runs"] if r["arm"] == name]
            values = [v for v in values if v is not None]
            ax.scatter(values, [i] * len(values), s=18, color="0.55", zorder=2)
            s = study["statistics"]["arms"].get(name, {}).get(metric)
            if s and s.get("mean") is not None:
                if s.get("ci_low") is not None:
                    ax.plot([s["ci_low"], s["ci_high"]], [i, i], color="C0", lw=2.5, zorder=3)
                ax.plot([s["mean"]], [i], marker="D", color="C0", zorder=4)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([labels[n] for n in names] if ax is axes[0] else [])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    ax = axes[3]
    rows = []
    for arm, pair in study["statistics"]["paired"].items():
        for k, (metric, short) in enumerate(panels):
            d = pair.get(metric)
            if d:
                rows.append(("{} − {}: {}".format(labels[arm], labels[pair["baseline"]], short.split(" (")[0]), d, k))
    for i, (text, d, k) in enumerate(rows):
        if d.get("ci_low") is not None:
            ax.plot([d["ci_low"], d["ci_high"]], [i, i], color="C{}".format(k + 1), lw=2.5)
        ax.plot([d["mean"]], [i], marker="o", color="C{}".format(k + 1))
    ax.axvline(0.0, color="k", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.yaxis.tick_right()
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
    ax.set_title("paired difference, mean and 95% CI")
    ax.grid(axis="x", alpha=0.3)
    n = len({r["seed"] for r in study["runs"]})
    fig.suptitle("{}: {} ({} seed{}; dots: seeds, diamond and bar: mean and 95% CI)".format(
        design["name"], design.get("description", ""), n, "" if n == 1 else "s"), fontsize=10)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_reports(output_dir: str, study: Dict) -> None:
    """``study.md`` and ``study.png`` beside ``study.json``."""
    from afa_d2.storage import atomic_write_text

    atomic_write_text(markdown(study), os.path.join(output_dir, "study.md"))
    if study["runs"]:
        plot(study, os.path.join(output_dir, "study.png"))


def replace_between_markers(text: str, key: str, body: str, where: str = "the file") -> str:
    """``text`` with what stands between ``<!-- study:KEY -->`` and ``<!-- /study:KEY -->`` replaced by ``body``."""
    begin, end = "<!-- study:{} -->".format(key), "<!-- /study:{} -->".format(key)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError("{} has no '{}' ... '{}' markers; add them where the study's results go".format(
            where, begin, end))
    return text[:i + len(begin)] + "\n" + body.rstrip("\n") + "\n" + text[j:]
