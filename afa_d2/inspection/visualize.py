"""What the models see and predict, as PNG files: ``python tools/visualize.py {predictions,attention,energy}``.

Three views, each over one or more checkpoints of any afa_d2 config:

* **predictions** (the paper's Fig. 3): the same images with the ground truth and the predictions of
  two or more checkpoints (e.g. sum-up and MSCA) side by side, drawn with detectron2's ``Visualizer``;
* **attention**: for a query point (or a grid of them), the attention weights of every head of every
  MS-Att block over its pooled key/value tokens, painted back onto the image. Each pool's tokens are
  the averages of windows of the key/value map (multi-scale pooling has two pools, strides ``r`` and
  ``2r``; see :func:`kv_token_regions`), so a token's weight is drawn over its window, one panel per
  head and pool, the panel's title giving that pool's share of the head's attention;
* **energy**: the energy of each pyramid level (mean squared activation, or the mean L2 norm over
  channels) of every checkpoint, side by side.

The attention weights are the blocks' own: forward hooks on the aggregation modules capture each
block's inputs ``(F_i, P_{i+1})`` during the model's own backbone forward (the model's code is not
changed); the operator turns them into MS-Att's query and key/value maps
(``Aggregation.attention_inputs``, what its reference path attends with), and
:meth:`~afa_d2.modeling.MSAttention.attention_weights` gives the softmax over the pooled tokens, each
token's window read from :meth:`~afa_d2.modeling.MSAttention.pool_windows`. The tests check that the
block recomputed from the captured inputs gives the captured output and that the weights reproduce the
block's ``scaled_dot_product_attention``.

Checkpoints are named by a *model spec*: ``CONFIG=WEIGHTS`` (a zoo name or config file, and a
checkpoint), a published checkpoint alone (its ``afa_d2_metadata`` names its config), or ``CONFIG``
alone (random weights, for trying the tool).
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from afa_d2.model_zoo.build import build_model, inference_augmentations, input_format, load_any_config

from .analysis import AnalysisInputError, find_pyramid, operator_label
from afa_d2.cli import known_errors, one_line

__all__ = [
    "DPI",
    "ENERGY_INCHES",
    "ENERGY_METRICS",
    "PANEL_INCHES",
    "LevelAttention",
    "LoadedModel",
    "PoolRegions",
    "QueryAttention",
    "VisualizeInputError",
    "attention_maps",
    "capture_aggregations",
    "dataset_records",
    "draw_attention",
    "draw_attention_overview",
    "draw_energy",
    "draw_predictions",
    "grid_points",
    "kv_token_regions",
    "load_model",
    "main",
    "paint_tokens",
    "parse_model_spec",
    "predict",
    "prepare_input",
    "pyramid_energy",
    "read_image",
]

DPI = 100
PANEL_INCHES = 2.4  # side of one attention panel
ENERGY_INCHES = (8.0, 4.5)  # the energy chart
ENERGY_METRICS = ("mean_square", "l2")
HEADER_PX = 32  # the title band of the predictions grid
GAP_PX = 8


class VisualizeInputError(AnalysisInputError):
    """A bad input to the visualization tool (one line: what, and how to fix it)."""


# ----------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A model ready for inference on single images.

    Attributes:
        label: how figures name it ("MSCA", or the user's label).
        config_name: the config it was built from.
        cfg: its LazyConfig or yacs CfgNode.
        model: the detector, eval mode.
        augmentations: the config's test-time augmentations (instantiated).
        input_format: "BGR" or "RGB", the channel order of the model's input.
        dataset: the config's test dataset name ("" if none), for class names.
    """

    label: str
    config_name: str
    cfg: Any
    model: nn.Module
    augmentations: list
    input_format: str
    dataset: str = ""


def _checkpoint_config(path: str) -> Tuple[str, List[str]]:
    """The config name and overrides a published checkpoint's metadata records."""
    from afa_d2.engine.checkpoint import load_checkpoint_file

    data = load_checkpoint_file(path)
    meta = data.get("afa_d2_metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not meta.get("config"):
        raise VisualizeInputError(
            "checkpoint {} has no afa_d2_metadata naming its config: write the model as CONFIG={} "
            "(e.g. shapes/mask_rcnn_R_18_msca.py={})".format(path, path, path))
    return str(meta["config"]), [str(o) for o in meta.get("config_overrides", []) or []]


def parse_model_spec(spec: str) -> Tuple[str, Optional[str], List[str]]:
    """``CONFIG=WEIGHTS`` | ``WEIGHTS`` (a published checkpoint) | ``CONFIG`` -> (config, weights, overrides).

    ``weights`` is None for a config alone (random weights); ``overrides`` are those recorded in a
    published checkpoint's metadata.
    """
    spec = spec.strip()
    if not spec:
        raise VisualizeInputError("empty model spec; write CONFIG=WEIGHTS, a published WEIGHTS.pth, or CONFIG")
    if "=" in spec and not os.path.isfile(spec):
        config, weights = spec.split("=", 1)
        if not config or not weights:
            raise VisualizeInputError("model spec {!r}: write CONFIG=WEIGHTS with both parts".format(spec))
        return config, weights, []
    if spec.endswith((".pth", ".pkl")):
        if not os.path.isfile(spec):
            raise VisualizeInputError("model spec {!r}: no such checkpoint file (cwd: {})".format(spec, os.getcwd()))
        config, overrides = _checkpoint_config(spec)
        return config, spec, overrides
    return spec, None, []


def _test_dataset(cfg) -> str:
    if hasattr(cfg, "DATASETS"):
        return str(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else ""
    try:
        names = cfg.dataloader.test.dataset.names
    except (AttributeError, KeyError):
        return ""
    return str(names if isinstance(names, str) else names[0])


def load_model(spec: str, opts: Sequence[str] = (), *, label: Optional[str] = None, device: str = "cpu",
               seed: int = 0) -> LoadedModel:
    """Build and load the model of a model spec (see :func:`parse_model_spec`).

    Args:
        spec (str): ``CONFIG=WEIGHTS``, a published ``WEIGHTS.pth``, or ``CONFIG`` (random weights).
        opts (list[str]): config overrides ``key=value`` (after those a published checkpoint records).
        label (str): the name in figures; default the pyramid's operator ("MSCA", "sum-up (FPN)").
        device (str): e.g. "cpu".
        seed (int): seed of the random initialisation (before loading the weights).

    Raises:
        UnknownConfigError, CheckpointMismatchError, UnknownConfigKeyError, VisualizeInputError: one line each.
    """
    config, weights, recorded = parse_model_spec(spec)
    cfg = load_any_config(config, list(recorded) + list(opts))
    model = build_model(cfg, weights, device, seed, config_name=config)
    if label is None:
        label = operator_label(find_pyramid(model)[1])
        if weights is None:
            label += " (random weights)"
    return LoadedModel(label=label, config_name=config, cfg=cfg, model=model,
                       augmentations=inference_augmentations(cfg), input_format=input_format(cfg),
                       dataset=_test_dataset(cfg))


# ----------------------------------------------------------------------------------- images
def read_image(path: str) -> np.ndarray:
    """An image file as an RGB array of shape (H, W, 3), uint8 (:func:`afa_d2.data.read_image`).

    Raises:
        VisualizeInputError: no such file, or not an image PIL can read.
    """
    from afa_d2.data import ImageReadError
    from afa_d2.data import read_image as read

    try:
        return np.ascontiguousarray(read(path, "RGB"))
    except ImageReadError as e:
        raise VisualizeInputError(str(e)) from None


def dataset_records(name: str, num_images: int, start: int = 0) -> List[dict]:
    """``num_images`` records of a registered dataset (detectron2's dicts, with ground truth).

    Raises:
        VisualizeInputError: the name is not registered (one line with the closest names).
    """
    from detectron2.data import DatasetCatalog

    known = list(DatasetCatalog.list())
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise VisualizeInputError("dataset {!r} is not registered; closest: {} (import afa_d2 registers shapes_train, "
                                  "shapes_val; detectron2 registers coco_2017_val etc.)".format(
                                      name, ", ".join(close) or "none"))
    if num_images <= 0 or start < 0:
        raise VisualizeInputError("--num-images {} / --start {}: need num_images > 0 and start >= 0".format(
            num_images, start))
    records = DatasetCatalog.get(name)
    if start >= len(records):
        raise VisualizeInputError("dataset {} has {} images; --start {} is past its end".format(
            name, len(records), start))
    return list(records[start:start + num_images])


@dataclass
class PreparedInput:
    """One image as the model takes it, and how its coordinates map onto the network input."""

    inputs: dict  # the model's input dict
    transforms: Any  # detectron2 TransformList, original -> network input coordinates
    input_hw: Tuple[int, int]  # network input size before padding


def prepare_input(lm: LoadedModel, rgb: np.ndarray) -> PreparedInput:
    """The model's input for one image, resized as the config's test loader does.

    Args:
        lm: the model (its test-time augmentations and input format are used).
        rgb: array of shape (H, W, 3), uint8, RGB.

    Returns:
        PreparedInput: ``inputs`` ({"image": Tensor of shape (3, H', W'), "height": H, "width": W}),
        ``transforms`` (image -> network input coordinates), ``input_hw`` (H', W').
    """
    from detectron2.data import transforms as T

    image = rgb if lm.input_format == "RGB" else rgb[:, :, ::-1]
    aug_input = T.AugInput(np.ascontiguousarray(image))
    transforms = T.AugmentationList(list(lm.augmentations))(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    device = next(lm.model.parameters()).device
    inputs = {"image": tensor.to(device), "height": rgb.shape[0], "width": rgb.shape[1]}
    return PreparedInput(inputs, transforms, (int(tensor.shape[1]), int(tensor.shape[2])))


def predict(lm: LoadedModel, rgb: np.ndarray):
    """Detections of ``lm`` on one RGB image (H, W, 3) uint8, in the image's coordinates (``Instances``, CPU)."""
    with torch.no_grad():
        return lm.model([prepare_input(lm, rgb).inputs])[0]["instances"].to("cpu")


def _metadata(name: str):
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get(name) if name else None


def _title_band(width: int, height: int, text: str) -> np.ndarray:
    """A white (height, width, 3) band with ``text`` centred, shrunk to fit."""
    import cv2

    band = np.full((height, width, 3), 255, np.uint8)
    scale = 0.55
    while scale > 0.25:
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        if tw <= width - 4:
            break
        scale -= 0.05
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    org = (max(2, (width - tw) // 2), (height + th) // 2)
    cv2.putText(band, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def _fit(panel: np.ndarray, h: int, w: int) -> np.ndarray:
    """``panel`` resized to exactly (h, w) when the drawing is off by a pixel of rounding."""
    import cv2

    return cv2.resize(panel, (w, h), interpolation=cv2.INTER_AREA) if panel.shape[:2] != (h, w) else panel


def draw_predictions(models: Sequence[LoadedModel], images: Sequence[Tuple[np.ndarray, Optional[dict]]], path: str,
                     *, score_thresh: float = 0.5, scale: float = 1.0, dataset: str = "") -> Dict[str, Any]:
    """One PNG: a row per image; columns ground truth (when the images have it), then each model.

    Args:
        models: the checkpoints to compare (e.g. sum-up and MSCA), in column order.
        images: (RGB array (H, W, 3) uint8, dataset record with "annotations" or None) per row.
        path (str): the PNG to write.
        score_thresh (float): detections below this score are not drawn.
        scale (float): drawing scale of every panel.
        dataset (str): the dataset whose class names label the boxes (default: the first model's test set).

    Returns:
        dict: "path", "size" (H, W) of the PNG, "cell_width" (the widest panel; narrower ones are
        padded white), "row_heights" (each row's panel height), "columns" (titles), "detections"
        (per row, per model: how many were drawn).
    """
    from detectron2.utils.visualizer import Visualizer

    if not models:
        raise VisualizeInputError("no model given: pass --model at least once (two or more to compare)")
    if not images:
        raise VisualizeInputError("no image given: pass --images FILES or --dataset NAME")
    if not 0.0 <= score_thresh <= 1.0:
        raise VisualizeInputError("--score-thresh {} must be in [0, 1]".format(score_thresh))
    if not scale > 0:
        raise VisualizeInputError("--scale {} must be > 0 (1 draws the images at their size)".format(scale))
    metadata = _metadata(dataset or models[0].dataset)
    with_gt = any(record is not None for _, record in images)
    titles = (["ground truth"] if with_gt else []) + [m.label for m in models]
    cells = [(int(round(rgb.shape[0] * scale)), int(round(rgb.shape[1] * scale))) for rgb, _ in images]
    cell_w = max(c[1] for c in cells)
    rows, detections = [], []
    for (rgb, record), (h, w) in zip(images, cells):
        cell_h = h
        panels, counts = [], []
        if with_gt:
            gt = Visualizer(rgb, metadata, scale=scale)
            panels.append(gt.draw_dataset_dict(record).get_image() if record is not None else rgb.copy())
        for m in models:
            inst = predict(m, rgb)
            inst = inst[inst.scores >= score_thresh]
            counts.append(len(inst))
            panels.append(Visualizer(rgb, metadata, scale=scale).draw_instance_predictions(inst).get_image())
        detections.append(counts)
        row = []
        for k, panel in enumerate(panels):
            cell = np.full((cell_h, cell_w, 3), 255, np.uint8)
            cell[:h, :w] = _fit(panel, h, w)
            row += [cell] if k == 0 else [np.full((cell_h, GAP_PX, 3), 255, np.uint8), cell]
        rows.append(np.concatenate(row, axis=1))
    width = rows[0].shape[1]
    header = [_title_band(cell_w, HEADER_PX, t) for t in titles]
    header = np.concatenate(sum(([np.full((HEADER_PX, GAP_PX, 3), 255, np.uint8), b] for b in header[1:]),
                                [header[0]]), axis=1)
    parts = [header]
    for row in rows:
        parts += [row, np.full((GAP_PX, width, 3), 255, np.uint8)]
    grid = np.concatenate(parts[:-1], axis=0)
    _write_png(path, grid)
    return {"path": path, "size": grid.shape[:2], "cell_width": cell_w, "row_heights": [c[0] for c in cells],
            "columns": titles, "detections": detections}


def _write_png(path: str, rgb: np.ndarray) -> None:
    import cv2

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError("could not write {}".format(path))


# ----------------------------------------------------------------------------------- attention
@dataclass
class CapturedBlock:
    """One aggregation module's call: its inputs ``F_i`` (lateral), ``P_{i+1}`` (top_down) and output ``P_i``."""

    level: str
    module: nn.Module
    lateral: Tensor
    top_down: Optional[Tensor]
    output: Tensor


def capture_aggregations(model: nn.Module, inputs: List[dict]) -> "OrderedDict[str, CapturedBlock]":
    """Run the model's backbone once on ``inputs`` and capture every MSSA / MSCA block's inputs and output.

    Forward hooks on the pyramid's ``fpn_aggregation<s>`` modules, removed afterwards; the forward
    itself is the model's own (``model.backbone(model.preprocess_image(inputs).tensor)``, what the
    detector's forward runs first; the heads do not change the pyramid).

    Args:
        model: a detectron2 meta-architecture, eval mode.
        inputs: its input dicts (``{"image": Tensor of shape (3, H, W), ...}``).

    Returns:
        level ("p2".."p5") -> :class:`CapturedBlock`, for the levels that use attention.
    """
    _, neck = find_pyramid(model)
    blocks: "OrderedDict[str, CapturedBlock]" = OrderedDict()
    handles = []
    if neck is not None:
        for name, module in neck.named_children():
            if name.startswith("fpn_aggregation") and getattr(module, "uses_attention", False):
                level = "p" + name[len("fpn_aggregation"):]

                def hook(mod, args, output, level=level):
                    lateral = args[0]
                    top_down = args[1] if len(args) > 1 else None
                    blocks[level] = CapturedBlock(level, mod, lateral.detach(),
                                                  None if top_down is None else top_down.detach(), output.detach())

                handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.backbone(model.preprocess_image(inputs).tensor)
    finally:
        for h in handles:
            h.remove()
    return OrderedDict(sorted(blocks.items(), key=lambda kv: int(kv[0][1:])))


@dataclass
class PoolRegions:
    """Where one pool's tokens come from on the key/value map.

    Attributes:
        name: e.g. "r=16", "r=32", "7x7 adaptive".
        grid: (h, w) of the pool's output; its h*w tokens are in row-major order.
        boxes: int array of shape (h*w, 4): (y0, y1, x0, x1) of each token's window, in key/value map cells.
    """

    name: str
    grid: Tuple[int, int]
    boxes: np.ndarray


def kv_token_regions(attn: nn.Module, kv_hw: Tuple[int, int]) -> List[PoolRegions]:
    """The window of every pooled key/value token of ``attn`` on a key/value map of size ``kv_hw``.

    In the order of :func:`~afa_d2.modeling.ms_attention.pool_tokens`: pool after pool, row-major
    within a pool; token t of the result is the average of ``x_kv`` over its window.

    Args:
        attn: an :class:`~afa_d2.modeling.MSAttention`.
        kv_hw: (H', W') of the key/value map.

    Returns:
        list[PoolRegions]: one per pool (two for multi-scale, strides r and 2r).
    """
    return [PoolRegions(pool.name, pool.out, np.array(pool.token_windows(), dtype=np.int64).reshape(-1, 4))
            for pool in attn.pool_windows(int(kv_hw[0]), int(kv_hw[1]))]


def paint_tokens(weights: np.ndarray, boxes: np.ndarray, grid_hw: Tuple[int, int]) -> np.ndarray:
    """Each token's weight painted over its window: float array of shape ``grid_hw`` (summed where windows overlap).

    Args:
        weights: array of shape (m,), one weight per token.
        boxes: int array of shape (m, 4), (y0, y1, x0, x1) per token.
        grid_hw: (H', W') of the key/value map.
    """
    out = np.zeros(grid_hw, dtype=np.float64)
    for wt, (y0, y1, x0, x1) in zip(weights, boxes):
        out[y0:y1, x0:x1] += wt
    return out


@dataclass
class LevelAttention:
    """The attention of one query point at one level.

    Attributes:
        level: "p2".."p5"; op: "MSSA" / "MSCA"; stride: the level's stride in network-input pixels.
        cell: (row, col) of the query on the level's grid.
        weights: array of shape (heads, M), each row sums to 1 (the softmax over the M tokens).
        pools: :class:`PoolRegions` of the M tokens, in order.
        kv_hw: (H', W') of the key/value map (= the level's grid).
    """

    level: str
    op: str
    stride: int
    cell: Tuple[int, int]
    weights: np.ndarray
    pools: List[PoolRegions]
    kv_hw: Tuple[int, int]

    def pool_slices(self) -> List[slice]:
        """The token range of each pool in ``weights``' last axis."""
        out, start = [], 0
        for p in self.pools:
            n = len(p.boxes)
            out.append(slice(start, start + n))
            start += n
        return out

    def cell_maps(self, head: Optional[int] = None) -> List[np.ndarray]:
        """One (H', W') map per pool: the head's (or the heads' mean) weights painted on the key/value grid."""
        w = self.weights.mean(axis=0) if head is None else self.weights[head]
        return [paint_tokens(w[s], p.boxes, self.kv_hw) for s, p in zip(self.pool_slices(), self.pools)]


@dataclass
class QueryAttention:
    """Every attention level's weights for one query point ``point`` = (x, y), in image pixels."""

    point: Tuple[float, float]
    image_hw: Tuple[int, int]
    input_hw: Tuple[int, int]
    levels: List[LevelAttention] = field(default_factory=list)


def grid_points(image_hw: Tuple[int, int], rows: int, cols: int) -> List[Tuple[float, float]]:
    """``rows`` x ``cols`` query points (x, y) at the centres of an even grid over an image of size (H, W)."""
    if rows <= 0 or cols <= 0:
        raise VisualizeInputError("--grid {}x{}: need at least 1x1 (e.g. 3x3)".format(rows, cols))
    h, w = image_hw
    return [((j + 0.5) * w / cols, (i + 0.5) * h / rows) for i in range(rows) for j in range(cols)]


def _check_point(point: Tuple[float, float], image_hw: Tuple[int, int], name: str) -> None:
    x, y = point
    h, w = image_hw
    if not (0 <= x < w and 0 <= y < h):
        raise VisualizeInputError("query point ({:g}, {:g}) is outside the image {} of {}x{} (W x H); valid: "
                                  "0 <= x < {}, 0 <= y < {}".format(x, y, name, w, h, w, h))


def attention_maps(lm: LoadedModel, rgb: np.ndarray, points: Sequence[Tuple[float, float]],
                   levels: Optional[Sequence[str]] = None, image_name: str = "the image") -> List[QueryAttention]:
    """The attention of every MS-Att block of ``lm`` for each query point, recomputed from the blocks' weights.

    Args:
        lm: a model with MSSA or MSCA blocks.
        rgb: the image, array of shape (H, W, 3) uint8 RGB.
        points: query points (x, y) in the image's pixels.
        levels: the levels to keep (default: every attention level).
        image_name: how errors name the image.

    Returns:
        one :class:`QueryAttention` per point.

    Raises:
        VisualizeInputError: a point outside the image, a level without attention, a model without attention.
    """
    if not points:
        raise VisualizeInputError("no query point: pass --point X Y or --grid RxC")
    image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    for p in points:
        _check_point(p, image_hw, image_name)
    prep = prepare_input(lm, rgb)
    blocks = capture_aggregations(lm.model, [prep.inputs])
    if not blocks:
        raise VisualizeInputError("{} ({}) has no attention block (operator {}): attention maps need mssa or msca "
                                  "on some level".format(lm.label, lm.config_name,
                                                         operator_label(find_pyramid(lm.model)[1])))
    if levels:
        bad = [lvl for lvl in levels if lvl not in blocks]
        if bad:
            raise VisualizeInputError("level {} has no attention in {}; valid: {}".format(
                bad[0], lm.label, ", ".join(blocks)))
        blocks = OrderedDict((k, v) for k, v in blocks.items() if k in levels)
    _, neck = find_pyramid(lm.model)
    strides = {k: v.stride for k, v in neck.output_shape().items()}
    in_xy = prep.transforms.apply_coords(np.asarray(points, dtype=np.float64).reshape(-1, 2))  # network input (x, y)
    results = [QueryAttention((float(x), float(y)), image_hw, prep.input_hw) for x, y in points]
    for level, block in blocks.items():
        x_q, x_kv = block.module.attention_inputs(block.lateral, block.top_down)
        h, w = int(x_q.shape[-2]), int(x_q.shape[-1])
        s = strides[level]
        cells = [(min(max(int(y // s), 0), h - 1), min(max(int(x // s), 0), w - 1)) for x, y in in_xy]
        with torch.no_grad():
            weights = block.module.attn.attention_weights(x_q, x_kv, [r * w + c for r, c in cells])
        weights = weights[0].cpu().numpy()  # (heads, Q, M)
        pools = kv_token_regions(block.module.attn, (int(x_kv.shape[-2]), int(x_kv.shape[-1])))
        for k, qa in enumerate(results):
            qa.levels.append(LevelAttention(level, block.module.label, s, cells[k],
                                            weights[:, k].astype(np.float64), pools,
                                            (int(x_kv.shape[-2]), int(x_kv.shape[-1]))))
    return results


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


def _save(fig, path: str) -> Tuple[int, int]:
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
    size = _save(fig, path)
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
    return {"path": path, "size": _save(fig, path), "panels": panels}


# ----------------------------------------------------------------------------------- energy
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
    return {"path": path, "size": _save(fig, path), "log": bool(log)}


# ----------------------------------------------------------------------------------- command line
def _add_models(p: argparse.ArgumentParser, many: bool) -> None:
    p.add_argument("--model", action="append", required=True, metavar="SPEC",
                   help="CONFIG=WEIGHTS (a zoo name or config file, and a checkpoint), a published WEIGHTS.pth "
                   "(its metadata names the config) or CONFIG (random weights)" + (
                       "; repeat to compare (e.g. sum-up and MSCA)" if many else ""))
    p.add_argument("--label", action="append", default=None, help="a figure label per --model, in order")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")


def _add_images(p: argparse.ArgumentParser, single: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--images", nargs="+", metavar="FILE", help="image files (no ground truth)")
    g.add_argument("--dataset", help="a registered dataset (with ground truth), e.g. shapes_val")
    p.add_argument("--num-images", type=int, default=1 if single else 4, help="images from --dataset" + (
        " (each gets its own files)" if single else ""))
    p.add_argument("--start", type=int, default=0, help="first image of --dataset")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python tools/visualize.py",
        description="Predictions side by side (the paper's Fig. 3), attention maps of the MS-Att blocks, and the "
        "energy of the pyramid levels, as PNG files.")
    sub = p.add_subparsers(dest="command", required=True)
    pred = sub.add_parser("predictions", help="ground truth and each model's predictions, side by side",
                          description="Ground truth and the predictions of each --model on the same images.")
    _add_models(pred, many=True)
    _add_images(pred)
    pred.add_argument("--score-thresh", type=float, default=0.5)
    pred.add_argument("--scale", type=float, default=1.0, help="drawing scale of each panel")
    pred.add_argument("--output", default="output/visualize/predictions.png")
    pred.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value (every model)")

    att = sub.add_parser("attention", help="attention weights of each head over the pooled tokens, per level",
                         description="For query points of one image: every MS-Att block's attention per head and "
                         "pool, painted on the image. One PNG per point, plus an overview for a grid.")
    _add_models(att, many=False)
    _add_images(att, single=True)
    where = att.add_mutually_exclusive_group()
    where.add_argument("--point", nargs=2, type=float, action="append", metavar=("X", "Y"),
                       help="a query point in image pixels (repeatable); default: the image centre")
    where.add_argument("--grid", default=None, metavar="RxC", help="a grid of query points, e.g. 3x3")
    att.add_argument("--levels", nargs="+", default=None, help="levels to show (default: every attention level)")
    att.add_argument("--output-dir", default="output/visualize/attention")
    att.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")

    en = sub.add_parser("energy", help="energy of each pyramid level per model",
                        description="Energy of the pyramid outputs p2..p6 of each --model, averaged over the images.")
    _add_models(en, many=True)
    _add_images(en)
    en.add_argument("--metric", default="mean_square", help="mean_square or l2")
    en.add_argument("--output", default="output/visualize/energy.png")
    en.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value (every model)")
    args = p.parse_args(argv)
    if args.images:  # "--images a.png key=value": the override is not an image
        moved = [f for f in args.images if "=" in f and not os.path.isfile(f)]
        args.images = [f for f in args.images if f not in moved]
        args.opts = moved + list(args.opts or [])
    return args


def _models(args: argparse.Namespace) -> List[LoadedModel]:
    labels = args.label or []
    if labels and len(labels) != len(args.model):
        raise VisualizeInputError("{} --label for {} --model: give one label per model, or none".format(
            len(labels), len(args.model)))
    models = [load_model(spec, list(args.opts or []), label=labels[k] if labels else None, device=args.device,
                         seed=args.seed) for k, spec in enumerate(args.model)]
    seen: Dict[str, int] = {}
    for m in models:  # two checkpoints of one operator: tell them apart by their config
        seen[m.label] = seen.get(m.label, 0) + 1
    for m in models:
        if seen[m.label] > 1 and not labels:
            m.label = "{} ({})".format(m.label, os.path.splitext(os.path.basename(m.config_name))[0])
    return models


def _images(args: argparse.Namespace) -> List[Tuple[np.ndarray, Optional[dict], str]]:
    if args.images:
        return [(read_image(f), None, f) for f in args.images]
    return [(read_image(r["file_name"]), r, r["file_name"])
            for r in dataset_records(args.dataset, args.num_images, args.start)]


def _parse_grid(text: str) -> Tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise VisualizeInputError("--grid {!r}: write ROWSxCOLS, e.g. 3x3".format(text)) from None
    return r, c


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """What ``tools/visualize.py`` does with parsed ``args``; returns what was written (errors raised)."""
    if args.command == "energy" and args.metric not in ENERGY_METRICS:
        raise VisualizeInputError("unknown --metric {!r}; valid: {}".format(args.metric, ", ".join(ENERGY_METRICS)))
    if args.command == "attention" and len(args.model) != 1:
        raise VisualizeInputError("attention takes one --model (got {})".format(len(args.model)))
    images = _images(args)
    models = _models(args)
    if args.command == "predictions":
        return draw_predictions(models, [(rgb, rec) for rgb, rec, _ in images], args.output,
                                score_thresh=args.score_thresh, scale=args.scale,
                                dataset=args.dataset or "")
    if args.command == "energy":
        energies = OrderedDict((m.label, pyramid_energy(m, [rgb for rgb, _, _ in images], args.metric))
                               for m in models)
        out = draw_energy(energies, args.output, args.metric,
                          "energy of the pyramid levels ({}, {} image(s))".format(args.metric, len(images)))
        out["energies"] = energies
        return out
    grid = _parse_grid(args.grid) if args.grid else None
    out: Dict[str, Any] = {"paths": []}
    for rgb, _, name in images:
        h, w = rgb.shape[:2]
        if grid:
            points = grid_points((h, w), *grid)
        else:
            points = [tuple(p) for p in args.point] if args.point else [(w / 2.0, h / 2.0)]
        qas = attention_maps(models[0], rgb, points, args.levels, image_name=name)
        # one image: attention_x.._y...png; several: each image's name in front
        prefix = "" if len(images) == 1 else os.path.splitext(os.path.basename(name))[0] + "_"
        for qa in qas:
            path = os.path.join(args.output_dir, "{}attention_x{:.0f}_y{:.0f}.png".format(prefix, *qa.point))
            out["paths"].append(draw_attention(rgb, qa, path, "{}: query ({:.0f}, {:.0f}) of {}".format(
                models[0].label, qa.point[0], qa.point[1], os.path.basename(name)))["path"])
        if len(qas) > 1:
            out["paths"].append(draw_attention_overview(
                rgb, qas, os.path.join(args.output_dir, "{}attention_overview.png".format(prefix)),
                "{}: mean attention over heads and pools, {}".format(models[0].label, os.path.basename(name)))["path"])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/visualize.py``; bad input is one line on stderr, exit 2."""
    args = parse_args(argv)
    try:
        out = run(args)
    except known_errors() as e:
        print("visualize: error: {}".format(one_line(e)), file=sys.stderr)
        return 2
    if "path" in out:
        print("wrote {}".format(out["path"]))
    for path in out.get("paths", []):
        print("wrote {}".format(path))
    if "energies" in out:
        for label, values in out["energies"].items():
            print("{}: {}".format(label, ", ".join("{} {:.4g}".format(k, v) for k, v in values.items())))
    return 0
