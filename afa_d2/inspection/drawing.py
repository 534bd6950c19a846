"""Drawing the attention maps (:mod:`.attention`) as PNG files with matplotlib: per query point, a row per
level and a panel per head and pool; for a grid of points, an overview of the heads' mean attention."""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from .attention import LevelAttention, QueryAttention

__all__ = ["DPI", "PANEL_INCHES", "draw_attention", "draw_attention_overview", "save_figure"]

DPI = 100
PANEL_INCHES = 2.4  # side of one attention panel


def _to_image(cell_map: np.ndarray, stride: int, input_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> np.ndarray:
    """A map on a level's grid (h, w) -> the image's pixels (H, W): each cell covers stride x stride input
    pixels (padding cropped), then the network input is resized back to the image (nearest)."""
    import cv2

    up = np.repeat(np.repeat(cell_map, stride, axis=0), stride, axis=1)[: input_hw[0], : input_hw[1]]
    return cv2.resize(up.astype(np.float32), (image_hw[1], image_hw[0]), interpolation=cv2.INTER_NEAREST)


def _check_sums(la: LevelAttention) -> None:
    sums = la.weights.sum(axis=-1)
    if not np.all(np.abs(sums - 1.0) < 1e-4):
        raise RuntimeError("attention weights of {} do not sum to 1 over the keys: {}".format(la.level, sums))


def _cell_rect(la: LevelAttention, qa: QueryAttention):
    """The query cell as an image-pixel rectangle (x, y, w, h)."""
    sy = qa.image_hw[0] / qa.input_hw[0]
    sx = qa.image_hw[1] / qa.input_hw[1]
    r, c = la.cell
    return c * la.stride * sx, r * la.stride * sy, la.stride * sx, la.stride * sy


def _figure(rows: int, cols: int, colorbar: bool):
    """A Figure of ``rows`` x ``cols`` square panels (plus a narrow colour-bar column) under a title band;
    its size in pixels is fixed by the counts (no tight bounding box)."""
    from matplotlib.figure import Figure

    width = cols * PANEL_INCHES + (0.35 if colorbar else 0.0)
    height = rows * PANEL_INCHES + 0.6
    fig = Figure(figsize=(width, height), dpi=DPI)
    ratios = [1.0] * cols + ([0.35 / PANEL_INCHES] if colorbar else [])
    gs = fig.add_gridspec(rows, len(ratios), width_ratios=ratios, left=0.01, right=0.97 if colorbar else 0.99,
                          bottom=0.01, top=1.0 - 0.6 / height, wspace=0.08, hspace=0.28)
    return fig, gs


def save_figure(fig, path: str) -> Tuple[int, int]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    w, h = fig.get_size_inches()
    return int(round(h * DPI)), int(round(w * DPI))


def draw_attention(rgb: np.ndarray, qa: QueryAttention, path: str, title: str = "") -> Dict[str, Any]:
    """One PNG for one query point: a row per level; the image with the query, then a panel per head and pool.

    Each panel overlays one head's weights on one pool's tokens (each token's weight over its
    window of the key/value map); the panel's title gives that pool's share of the head's
    attention (the shares of a head's pools add up to 100%). Colours share one scale per row.

    Args:
        rgb: the image, array of shape (H, W, 3) uint8 RGB.
        qa: :func:`attention_maps`' result for one point.
        path (str): the PNG to write.
        title (str): the figure's title (default: the point).

    Returns:
        dict: "path", "size" (H, W) of the PNG, "panels" {(level, head, pool name): the (H, W) map
        drawn}, "weights" {level: the (heads, M) array whose rows were checked to sum to 1}.
    """
    heads = max(la.weights.shape[0] for la in qa.levels)
    npools = max(len(la.pools) for la in qa.levels)
    cols = 1 + heads * npools
    fig, gs = _figure(len(qa.levels), cols, colorbar=True)
    fig.suptitle(title or "attention of the query point ({:.0f}, {:.0f}) over the pooled key/value tokens, "
                 "per head and pool".format(*qa.point), fontsize=11)
    gray = rgb.mean(axis=2).astype(np.uint8)
    panels: Dict[Tuple[str, int, str], np.ndarray] = {}
    for row, la in enumerate(qa.levels):
        _check_sums(la)
        ax = fig.add_subplot(gs[row, 0])
        ax.imshow(rgb)
        _mark(ax, la, qa)
        ax.set_title("{} {} (stride {})".format(la.level, la.op, la.stride), fontsize=9)
        ax.axis("off")
        maps = {}
        for h in range(la.weights.shape[0]):
            for pool, cell_map in zip(la.pools, la.cell_maps(h)):
                maps[(h, pool.name)] = _to_image(cell_map, la.stride, qa.input_hw, qa.image_hw)
        vmax = max(float(la.weights.max()), 1e-12)
        im = None
        for h in range(la.weights.shape[0]):
            for j, (pool, sl) in enumerate(zip(la.pools, la.pool_slices())):
                ax = fig.add_subplot(gs[row, 1 + h * npools + j])
                ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
                im = ax.imshow(maps[(h, pool.name)], cmap="inferno", alpha=0.6, vmin=0.0, vmax=vmax)
                _mark(ax, la, qa)
                ax.set_title("head {} · {} · {:.0f}%".format(h, pool.name, 100 * la.weights[h, sl].sum()), fontsize=8)
                ax.axis("off")
                panels[(la.level, h, pool.name)] = maps[(h, pool.name)]
        cax = fig.add_subplot(gs[row, cols])
        fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)
        cax.set_title("weight", fontsize=7)
    size = save_figure(fig, path)
    return {"path": path, "size": size, "panels": panels, "weights": {la.level: la.weights for la in qa.levels}}


def _mark(ax, la: LevelAttention, qa: QueryAttention) -> None:
    from matplotlib.patches import Rectangle

    x, y, w, h = _cell_rect(la, qa)
    ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="cyan", linewidth=1.2))
    ax.plot([qa.point[0]], [qa.point[1]], marker="o", color="cyan", markersize=3)


def draw_attention_overview(rgb: np.ndarray, qas: Sequence[QueryAttention], path: str,
                            title: str = "") -> Dict[str, Any]:
    """One PNG for a grid of query points: a row per point, a column per level, the heads' mean attention
    with every pool painted (so a region's colour is the attention its tokens received).

    Returns:
        dict: "path", "size" (H, W), "panels" {(point index, level): the (H, W) map drawn}.
    """
    levels = [la.level for la in qas[0].levels]
    fig, gs = _figure(len(qas), len(levels), colorbar=False)
    fig.suptitle(title or "mean attention over the heads, all pools, per query point and level", fontsize=11)
    gray = rgb.mean(axis=2).astype(np.uint8)
    panels = {}
    for i, qa in enumerate(qas):
        for j, la in enumerate(qa.levels):
            _check_sums(la)
            m = _to_image(sum(la.cell_maps(None)), la.stride, qa.input_hw, qa.image_hw)
            ax = fig.add_subplot(gs[i, j])
            ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
            ax.imshow(m, cmap="inferno", alpha=0.6, vmin=0.0, vmax=max(float(m.max()), 1e-12))
            _mark(ax, la, qa)
            ax.set_title("{} {} · ({:.0f}, {:.0f})".format(la.level, la.op, *qa.point), fontsize=8)
            ax.axis("off")
            panels[(i, la.level)] = m
    return {"path": path, "size": save_figure(fig, path), "panels": panels}
