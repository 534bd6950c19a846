"""Drawing one ``shapes`` image: shape geometry and rasterization, colours (:data:`HUE_SPREAD_DEG`),
background, scene band and clutter, and :func:`render_image`, which puts them together from
the image's own random streams and returns the image, its visible instance masks and its scene.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import cv2
import numpy as np

from .classes import _SPLIT_CODES, SCENES, SHAPE_CLASSES

__all__ = ["HUE_SPREAD_DEG", "render_image"]

_MARKER_HALF_WIDTH = 0.45  # rhombus half-width / half-height


# ----------------------------------------------------------------------------- geometry
def _regular(n: int, start: float = -math.pi / 2) -> np.ndarray:
    a = start + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _unit_polygon(kind: str, rng: np.random.Generator, size: float) -> np.ndarray:
    """Vertices (K, 2) of a shape of extent about 2 (radius 1), before rotation."""
    if kind in ("circle", "ellipse"):
        n = int(np.clip(size * 0.6, 16, 64))
        p = _regular(n)
        if kind == "ellipse":
            p[:, 1] *= rng.uniform(0.35, 0.55)
        return p
    if kind == "square":
        return _regular(4, math.pi / 4) * math.sqrt(2) / 1.2
    if kind == "rectangle":
        h = rng.uniform(0.35, 0.55)
        return np.array([[-1, -h], [1, -h], [1, h], [-1, h]], dtype=np.float64)
    if kind == "triangle":
        return _regular(3)
    if kind == "pentagon":
        return _regular(5)
    if kind == "hexagon":
        return _regular(6)
    if kind == "star":
        outer = _regular(5)
        inner = _regular(5, -math.pi / 2 + math.pi / 5) * 0.45
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if kind == "cross":
        w = 0.34
        return np.array(
            [[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
             [-w, w], [-1, w], [-1, -w], [-w, -w]], dtype=np.float64)
    if kind == "marker":
        hw = _MARKER_HALF_WIDTH
        return np.array([[0, -1], [hw, 0], [0, 1], [-hw, 0]], dtype=np.float64)
    raise ValueError("unknown shape kind {!r}; valid: {}".format(kind, SHAPE_CLASSES + ("marker",)))


def _fill(mask: np.ndarray, pts: np.ndarray) -> None:
    """Fill polygon ``pts`` (K, 2) in pixel coordinates into ``mask`` with 1/16 px precision."""
    cv2.fillPoly(mask, [np.round((pts - 0.5) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)


def _shape_mask(kind: str, rng: np.random.Generator, size: float, angle: float,
                cx: float, cy: float, H: int, W: int) -> Optional[Tuple[np.ndarray, int, int]]:
    """Rasterize a shape; returns (crop mask uint8, x0, y0) clipped to the image, or None."""
    r = size / 2.0
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    if kind == "crescent":
        outer = _regular(int(np.clip(size * 0.6, 16, 64)))
        polys = [outer, outer * 0.85 + np.array([0.42, -0.1])]
    else:
        polys = [_unit_polygon(kind, rng, size)]
    polys = [(p * r) @ rot.T + np.array([cx, cy]) for p in polys]
    allp = np.concatenate(polys)
    x0, y0 = int(max(0, math.floor(allp[:, 0].min()) - 1)), int(max(0, math.floor(allp[:, 1].min()) - 1))
    x1, y1 = int(min(W, math.ceil(allp[:, 0].max()) + 2)), int(min(H, math.ceil(allp[:, 1].max()) + 2))
    if x1 <= x0 or y1 <= y0:
        return None
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _fill(m, polys[0] - np.array([x0, y0]))
    if kind == "crescent":
        hole = np.zeros_like(m)
        _fill(hole, polys[1] - np.array([x0, y0]))
        m &= 1 - hole
    if not m.any():
        return None
    return m, x0, y0


# ----------------------------------------------------------------------------- drawing
def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


# Hue spread (standard deviation, degrees) of a shape class around its own hue. Classes sit 36
# degrees apart (3.6 standard deviations): colour is a strong prior, as colour and texture are in
# real data, so that a detector trained from scratch on a CPU gets far enough in the demo's
# minutes (the demo's model after 1100 iterations: box AP50 20.0 at 20 degrees, 26.0 at 10);
# about 7% of shapes still fall nearer a neighbour's hue, where the shape decides. The three
# markers keep random colours: only context separates them.
HUE_SPREAD_DEG = 10.0


def _class_color(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A colour (RGB, 0..255) whose hue leans to ``kind``'s own; markers are any colour."""
    if kind not in SHAPE_CLASSES:
        return _random_color(rng)
    hue = (360.0 * SHAPE_CLASSES.index(kind) / len(SHAPE_CLASSES) + rng.normal(0, HUE_SPREAD_DEG)) % 360
    sat, val = rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)
    hsv = np.array([[[hue / 2, sat * 255, val * 255]]], np.float32)  # OpenCV: hue in 0..180
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    low = rng.uniform(40, 215, (3, 3, 3)).astype(np.float32)
    img = cv2.resize(low, (W, H), interpolation=cv2.INTER_CUBIC)
    tex = rng.normal(0, 1, (max(2, H // 12), max(2, W // 12))).astype(np.float32)
    tex = cv2.resize(tex, (W, H), interpolation=cv2.INTER_LINEAR)
    img += tex[..., None] * np.float32(rng.uniform(6, 18))
    return img


def _scene_band(rng: np.random.Generator, scene: str, H: int, W: int
                ) -> Tuple[np.ndarray, Tuple[slice, slice], str, np.ndarray]:
    """The band's pixels (h, w, 3), where it lies (a (rows, cols) slice pair), the side it is
    on, and the mean of its two colours. The slice, the side and the mean colour do not
    depend on ``scene`` (they are drawn first): only the band's texture does."""
    side = ("top", "bottom", "left", "right")[rng.integers(4)]
    frac = rng.uniform(0.20, 0.28)
    if side == "top":
        where = (slice(0, int(round(frac * H))), slice(0, W))
    elif side == "bottom":
        where = (slice(H - int(round(frac * H)), H), slice(0, W))
    elif side == "left":
        where = (slice(0, H), slice(0, int(round(frac * W))))
    else:
        where = (slice(0, H), slice(W - int(round(frac * W)), W))
    c1, c2 = _random_color(rng), _random_color(rng)
    while np.abs(c1 - c2).sum() < 150:
        c2 = _random_color(rng)
    # pattern in image coordinates (waves stay horizontal, trunks vertical on any side)
    yy = np.arange(H, dtype=np.float32)[where[0], None]
    xx = np.arange(W, dtype=np.float32)[None, where[1]]
    if scene == "sea":  # horizontal waves
        period = rng.uniform(7, 12)
        amp, wl, ph = rng.uniform(1.5, 3.5), rng.uniform(20, 40), rng.uniform(0, 2 * math.pi)
        t = np.sin(2 * math.pi * (yy + amp * np.sin(2 * math.pi * xx / wl + ph)) / period)
    elif scene == "forest":  # vertical trunks of varying width
        period = rng.uniform(8, 14)
        xs = np.cumsum(rng.uniform(0.6, 1.4, W)).astype(np.float32)[None, where[1]]
        t = np.broadcast_to(np.sin(2 * math.pi * xs / period), (yy.shape[0], xx.shape[1]))
    elif scene == "city":  # grid of blocks
        bw, bh = rng.uniform(7, 12), rng.uniform(7, 12)
        t = ((np.floor(xx / bw) + np.floor(yy / bh)) % 2) * 2 - 1
        t = t * (((xx % bw) > 1.5) & ((yy % bh) > 1.5))
    else:
        raise ValueError("unknown scene {!r}; valid: {}".format(scene, SCENES))
    band = np.where((t > 0)[..., None], c1.astype(np.float32), c2.astype(np.float32))
    return band, where, side, ((c1 + c2) / 2).astype(np.float32)


def _draw_clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    H, W = img.shape[:2]
    for _ in range(rng.integers(4, 13)):
        kind = rng.integers(4)
        color = tuple(float(c) for c in _random_color(rng))
        if kind == 0:  # irregular blob
            n = rng.integers(5, 10)
            size = math.exp(rng.uniform(math.log(4), math.log(0.4 * min(H, W))))
            a = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = size / 2 * rng.uniform(0.3, 1.0, n)
            c = rng.uniform([0, 0], [W, H])
            pts = np.stack([c[0] + rad * np.cos(a), c[1] + rad * np.sin(a)], 1)
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], color, lineType=cv2.LINE_AA, shift=4)
        elif kind == 1:  # line
            p, q = rng.uniform([0, 0], [W, H], (2, 2))
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), color,
                     int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
        elif kind == 2:  # outline of a labelled kind (not an instance)
            k = SHAPE_CLASSES[rng.integers(len(SHAPE_CLASSES) - 1)]  # crescent has no single outline
            size = math.exp(rng.uniform(math.log(10), math.log(0.5 * min(H, W))))
            ang = rng.uniform(0, 2 * math.pi)
            rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
            pts = _unit_polygon(k, rng, size) * size / 2 @ rot.T + rng.uniform([0, 0], [W, H])
            cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], True, color,
                          int(rng.integers(1, 3)), lineType=cv2.LINE_AA, shift=4)
        else:  # specks
            for p in rng.uniform([0, 0], [W, H], (int(rng.integers(5, 20)), 2)):
                cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(1, 3)), color, -1)


def _layout_objects(rng_obj, side: str, H: int, W: int) -> Tuple[List[tuple], np.ndarray]:
    """The objects as (kind, size, angle, cx, cy) and their paint order: the shapes, then the markers in the
    half of the image opposite the band. The band's side comes from rng_band, but marker positions must not
    depend on the scene, so the side is drawn before the scene's pattern parameters (first draw of rng_band)
    and is scene-independent."""
    short = min(H, W)
    objs = []
    n_large = 0
    for _ in range(rng_obj.integers(4, 15)):
        kind = SHAPE_CLASSES[rng_obj.integers(len(SHAPE_CLASSES))]
        size = math.exp(rng_obj.uniform(math.log(4), math.log(0.85 * short)))
        if size > 0.45 * short:
            n_large += 1
            if n_large > 2:
                size = rng_obj.uniform(0.1, 0.45) * short
        cx = rng_obj.uniform(size / 4, W - size / 4)
        cy = rng_obj.uniform(size / 4, H - size / 4)
        objs.append((kind, size, rng_obj.uniform(0, 2 * math.pi), cx, cy))
    n_markers = int(rng_obj.choice(4, p=[0.2, 0.35, 0.3, 0.15]))
    for _ in range(n_markers):
        size = rng_obj.uniform(7, 14)
        angle = rng_obj.uniform(-0.2, 0.2)
        m = size / 2 + 2
        # far half: the half of the image opposite the band
        if side == "top":
            cx, cy = rng_obj.uniform(m, W - m), rng_obj.uniform(H / 2 + m, H - m)
        elif side == "bottom":
            cx, cy = rng_obj.uniform(m, W - m), rng_obj.uniform(m, H / 2 - m)
        elif side == "left":
            cx, cy = rng_obj.uniform(W / 2 + m, W - m), rng_obj.uniform(m, H - m)
        else:
            cx, cy = rng_obj.uniform(m, W / 2 - m), rng_obj.uniform(m, H - m)
        objs.append(("marker", size, angle, cx, cy))
    # paint order: mostly larger first (so smaller ones end up on top), with jitter
    order = np.argsort([-o[1] * math.exp(rng_obj.normal(0, 0.6)) for o in objs], kind="stable")
    return objs, order


def _paint_objects(rng_obj, objs: List[tuple], order: np.ndarray, img: np.ndarray, ref: np.ndarray) -> List[dict]:
    """Paint ``objs`` in ``order`` on ``img`` (and on ``ref``, the scene-independent canvas colours are chosen
    against), each in its class colour shaded by a ramp, kept apart from what is underneath; returns each
    painted object with its mask crop and paint rank."""
    H, W = img.shape[:2]
    rendered = []
    for rank, i in enumerate(order):
        kind, size, angle, cx, cy = objs[i]
        r = _shape_mask(kind, rng_obj, size, angle, cx, cy, H, W)
        base = _class_color(rng_obj, kind)
        shade = rng_obj.uniform(-0.25, 0.25, 2)
        if r is None:
            continue
        m, x0, y0 = r
        h, w = m.shape
        sub = img[y0:y0 + h, x0:x0 + w]
        sub_ref = ref[y0:y0 + h, x0:x0 + w]
        mb = m.astype(bool)
        # keep a contrast to what is underneath
        under = sub_ref[mb].mean(0)
        if np.abs(base - under).sum() < 90:
            base = np.where(under > 127, under - 110, under + 110)
        gy, gx = np.nonzero(mb)
        ramp = shade[0] * (gx / max(w, 1) - 0.5) + shade[1] * (gy / max(h, 1) - 0.5)
        sub[mb] = sub_ref[mb] = base[None, :] * (1 + ramp[:, None])
        rendered.append(dict(kind=kind, size=size, crop=(m, x0, y0), order=rank))
    return rendered


def _visible_instances(rendered: List[dict], scene: str, H: int, W: int) -> List[dict]:
    """The instances' visible masks, walking from the top-most painted object down; an object less than a
    quarter visible (or under 6 pixels) is not an instance. Sorted by paint order."""
    occupied = np.zeros((H, W), bool)
    instances = []
    for obj in reversed(rendered):
        m, x0, y0 = obj["crop"]
        h, w = m.shape
        occ = occupied[y0:y0 + h, x0:x0 + w]
        vis = m.astype(bool) & ~occ
        occ |= m.astype(bool)
        full_area = int(m.sum())
        area = int(vis.sum())
        if area < max(6, 0.25 * full_area):
            continue
        full = np.zeros((H, W), np.uint8)
        full[y0:y0 + h, x0:x0 + w] = vis
        name = "marker_" + scene if obj["kind"] == "marker" else obj["kind"]
        instances.append(dict(category=name, mask=full, full_area=full_area, size=obj["size"], order=obj["order"]))
    instances.sort(key=lambda d: d["order"])
    return instances


def render_image(seed: int, split: str, index: int, *, min_size: int = 192, max_size: int = 320,
                 scene: Optional[str] = None) -> Tuple[np.ndarray, List[dict], dict]:
    """Draw image ``index`` of ``split``.

    Args:
        seed (int): dataset seed.
        split (str): "train", "val" or "test" (selects an independent random stream).
        index (int): image index in the split.
        min_size, max_size (int): range of the image's height and width.
        scene (str or None): force the scene ("sea", "forest", "city"). Only the band's
            pixels and the markers' categories change with it: every other pixel and
            every mask are the same (tests use this to show markers differ by context only).

    Returns:
        image: uint8 array of shape (H, W, 3), BGR.
        instances: list of dicts with "category" (name), "mask" (H, W) uint8 visible mask,
            "full_area" (pixels before occlusion), "size" (px), "order" (paint order).
        info: dict with "scene", "side" (of the band), "band_mask" (H, W) bool.
    """
    if split not in _SPLIT_CODES:
        raise ValueError("unknown split {!r}; valid: {}".format(split, sorted(_SPLIT_CODES)))
    if not 4 <= min_size <= max_size:
        raise ValueError("need 4 <= min_size <= max_size, got {} and {}".format(min_size, max_size))
    key = [int(seed), _SPLIT_CODES[split], int(index)]
    rng_layout = np.random.default_rng(key + [0])
    rng_band = np.random.default_rng(key + [1])
    rng_obj = np.random.default_rng(key + [2])
    rng_noise = np.random.default_rng(key + [3])

    H, W = (int(v) for v in rng_layout.integers(min_size, max_size + 1, 2))
    drawn_scene = SCENES[rng_layout.integers(len(SCENES))]
    scene = drawn_scene if scene is None else scene
    if scene not in SCENES:
        raise ValueError("unknown scene {!r}; valid: {}".format(scene, SCENES))

    img = _background(rng_layout, H, W)
    _draw_clutter(rng_layout, img)
    band, where, side, band_mean = _scene_band(rng_band, scene, H, W)
    # ``ref`` is the canvas with a scene-independent band (its mean colour): object colours
    # are chosen against it, so that no pixel outside the band depends on the scene
    ref = img.copy()
    ref[where] = band_mean
    img[where] = band
    band_mask = np.zeros((H, W), bool)
    band_mask[where] = True

    objs, order = _layout_objects(rng_obj, side, H, W)
    rendered = _paint_objects(rng_obj, objs, order, img, ref)

    img += rng_noise.standard_normal(img.shape, dtype=np.float32) * np.float32(rng_noise.uniform(3, 10))
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    instances = _visible_instances(rendered, scene, H, W)
    return image, instances, dict(scene=scene, side=side, band_mask=band_mask)
