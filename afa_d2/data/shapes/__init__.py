"""``shapes``: the built-in synthetic instance-segmentation dataset (docs/DESIGN.md, "The data").

A deterministic, offline stand-in for COCO that is hard enough to tell aggregation
operators apart, and that holds the paper's claim (global, cross-scale context helps)
in miniature.

What an image holds (sizes are in pixels; images are ``min_size``..``max_size`` on
each side, 192..320 by default, so odd sizes appear):

- background: a smooth random colour field, mid-frequency texture and pixel noise;
- a *scene band* along one image side (top, bottom, left or right; 20-28 % of the
  image): horizontal waves ("sea"), vertical trunks ("forest") or a grid of blocks
  ("city"), drawn in random colours, so only its texture tells the scene;
- clutter: unlabelled irregular blobs, lines, specks, and outlines of the labelled
  shapes (an outline is not an instance);
- 4-14 labelled filled shapes of 10 kinds (:data:`SHAPE_CLASSES`), random rotation, a
  colour whose hue leans to its class's (:data:`HUE_SPREAD_DEG` around hues 36 degrees
  apart: a strong prior, which lets a model trained from scratch on a CPU learn the
  classes within minutes; where neighbouring hues overlap, the shape decides),
  log-uniform size from 4 px to 85 % of the shorter image side, with a slight shading; they occlude each other
  (mostly smaller on top of larger), and each
  instance mask is the *visible* part (holes included, hence RLE), its box the box of
  that part; instances with less than 25 % (or 6 px) visible are dropped;
- 0-3 small *markers* (an upright elongated rhombus, 7-14 px), placed in the half
  of the image away from the scene band. The marker's pixels do not depend on the
  scene, but its category does: ``marker_sea``, ``marker_forest`` or ``marker_city``.
  Only the distant band separates these three categories (the context group).

Every image is drawn from its own random streams, seeded by ``(seed, split, index)``,
so an image does not depend on how many images the split has, and a generation gives
the same bytes on every run (same OpenCV build). :data:`VERSION` is part of the cache
path: bump it with any change to the generator.

Splits are written as COCO json (``instances.json``) and LVIS v1 json (``lvis_v1.json``,
categories with ``frequency`` r/c/f that follow LVIS's image-count rule on the *LVIS
train* split, which keeps the annotations of a few categories on only some images,
plus per-image ``neg_category_ids`` and ``not_exhaustive_category_ids``).

Command line (writes a preview PNG of a few images with their masks)::

    python -m afa_d2.data.shapes --out /tmp/shapes_preview --preview
"""
from __future__ import annotations

from .catalog import _load as _load
from .catalog import register_shapes, shapes_split_names
from .classes import CLASSES, MARKER_CLASSES, SCENES, SHAPE_CLASSES, VERSION
from .render import HUE_SPREAD_DEG as HUE_SPREAD_DEG
from .render import _class_color as _class_color
from .render import render_image
from .splits import LVIS_TARGET_IMAGES, default_cache_root, ensure_split, generate_split, load_lvis_json, lvis_frequency
from .splits import _categories as _categories
from .splits import _lvis_json as _lvis_json
from .splits import ensure_lvis_val as ensure_lvis_val
from .splits import lvis_image_counts as lvis_image_counts
from .splits import split_dirname as split_dirname

__all__ = [
    "VERSION",
    "SHAPE_CLASSES",
    "MARKER_CLASSES",
    "CLASSES",
    "SCENES",
    "LVIS_TARGET_IMAGES",
    "default_cache_root",
    "render_image",
    "generate_split",
    "ensure_split",
    "lvis_frequency",
    "load_lvis_json",
    "register_shapes",
    "shapes_split_names",
]
