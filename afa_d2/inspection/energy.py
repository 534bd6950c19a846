"""The energy of each pyramid level (mean squared activation, or the mean L2 norm over channels) of every
checkpoint, and a chart of them side by side."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Sequence

import numpy as np
import torch

from .drawing import DPI, save_figure
from .errors import VisualizeInputError
from .models import LoadedModel, prepare_input

__all__ = ["ENERGY_INCHES", "ENERGY_METRICS", "draw_energy", "pyramid_energy"]

ENERGY_INCHES = (8.0, 4.5)  # the energy chart
ENERGY_METRICS = ("mean_square", "l2")


def pyramid_energy(lm: LoadedModel, images: Sequence[np.ndarray], metric: str = "mean_square") -> Dict[str, float]:
    """The energy of each pyramid output (``p2..p6``), averaged over ``images``.

    Args:
        lm: the model.
        images: RGB arrays (H, W, 3) uint8, resized as the config's test loader does.
        metric (str): "mean_square" (mean of x^2 over N, C, H, W) or "l2" (mean over positions of the
            L2 norm over channels).

    Returns:
        OrderedDict level -> energy (float).
    """
    if metric not in ENERGY_METRICS:
        raise VisualizeInputError("unknown energy metric {!r}; valid: {}".format(metric, ", ".join(ENERGY_METRICS)))
    if not images:
        raise VisualizeInputError("no image given: pass --images FILES or --dataset NAME")
    totals: "OrderedDict[str, float]" = OrderedDict()
    for rgb in images:
        prep = prepare_input(lm, rgb)
        with torch.no_grad():
            features = lm.model.backbone(lm.model.preprocess_image([prep.inputs]).tensor)
        for level in sorted(features, key=lambda k: (len(k), k)):
            f = features[level].float()
            value = f.pow(2).mean() if metric == "mean_square" else f.norm(dim=1).mean()
            totals[level] = totals.get(level, 0.0) + float(value)
    return OrderedDict((k, v / len(images)) for k, v in totals.items())


def draw_energy(energies: Dict[str, Dict[str, float]], path: str, metric: str = "mean_square",
                title: str = "") -> Dict[str, Any]:
    """Grouped bars: the energy of each pyramid level (x) for each model (colour, legend).

    Args:
        energies: model label -> {level: energy} (:func:`pyramid_energy`).
        path (str): the PNG to write.
        metric (str): the metric's name, for the axis.

    Returns:
        dict: "path", "size" (H, W), "log" (whether the y axis is logarithmic).
    """
    from matplotlib.figure import Figure

    labels = list(energies)
    if not labels:
        raise VisualizeInputError("no model given: pass --model at least once")
    levels = list(energies[labels[0]])
    fig = Figure(figsize=ENERGY_INCHES, dpi=DPI)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.1, top=0.9)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(labels)
    values = np.array([[energies[m].get(lvl, np.nan) for lvl in levels] for m in labels])
    positive = values[np.isfinite(values) & (values > 0)]
    log = positive.size > 0 and positive.max() / positive.min() > 50
    for k, m in enumerate(labels):
        xs = np.arange(len(levels)) + (k - (len(labels) - 1) / 2) * width
        bars = ax.bar(xs, values[k], width=width, label=m)
        ax.bar_label(bars, labels=["{:.3g}".format(v) for v in values[k]], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(np.arange(len(levels)), levels)
    ax.margins(y=0.15)
    ax.set_ylabel({"mean_square": "mean squared activation", "l2": "mean L2 norm over channels"}[metric])
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_xlabel("pyramid level")
    ax.set_title(title or "energy of the pyramid levels per model", fontsize=10)
    return {"path": path, "size": save_figure(fig, path), "log": bool(log)}
