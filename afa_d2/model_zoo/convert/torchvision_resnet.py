"""torchvision's ResNet weights under detectron2's ``ResNet`` names (``tools/convert_torchvision_resnet.py``).

What detectron2's ``tools/convert-torchvision-to-d2.py`` does, with a report, and with the config
overrides the weights need (:func:`torchvision_resnet_overrides`): torchvision's ResNets take RGB
images normalised by ImageNet statistics and stride a Bottleneck's 3x3 conv, where the MSRA R-50
that detectron2's configs assume takes BGR with std 1 and strides the 1x1. Without those overrides
the weights load and compute something else.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .common import ConversionReport, converter_parser, run_converter, save_converted
from .reading import source_weights

__all__ = [
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "TORCHVISION_SETTINGS",
    "convert_torchvision_resnet",
    "main",
    "torchvision_resnet_overrides",
]

COMMAND_DOC = """Convert torchvision ResNet weights (e.g. resnet50-0676ba61.pth) to detectron2's ResNet names.

    python tools/convert_torchvision_resnet.py resnet50-0676ba61.pth out/R-50-torchvision.pth
    python train_net.py --config-file configs/COCO/mask_rcnn_R_50_mssa_1x.py \\
        train.init_checkpoint=out/R-50-torchvision.pth <the overrides this command prints>

What detectron2's tools/convert-torchvision-to-d2.py does: conv1/bn1 -> stem.conv1(.norm),
layerN -> res(N+1), bnK -> convK.norm, downsample -> shortcut, fc dropped. Keys are written under
the detector's backbone.bottom_up. prefix; with --prefix "" the file is detectron2's format
("matching_heuristics": True: detectron2's checkpointer then finds the prefix by name matching).
torchvision's weights need RGB input, ImageNet pixel statistics and (Bottleneck depths) the stride
on the 3x3 conv: the command prints those config overrides. See
afa_d2.model_zoo.convert.convert_torchvision_resnet.
"""


# torchvision's ImageNet ResNets: RGB input scaled to [0, 1] then normalised by
# mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), i.e. on detectron2's 0..255 scale:
TORCHVISION_PIXEL_MEAN = [123.675, 116.28, 103.53]
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]

_RESNET_DEPTHS = {  # (blocks per stage, bottleneck) -> depth
    ((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152,
}


def torchvision_resnet_overrides(depth: int = 50) -> List[str]:
    """The LazyConfig overrides a detector needs for torchvision ResNet weights.

    torchvision's ResNets take RGB images normalised by ImageNet statistics and put a
    Bottleneck's stride on its 3x3 conv; MSRA's R-50 that detectron2's configs assume takes BGR
    with std 1 and strides the 1x1 (``stride_in_1x1=True``). In a LazyConfig the channel order of
    the images is the data mapper's ``image_format`` (``model.input_format`` is only for
    visualisation), so both are set; the test mapper of detectron2's and afa_d2's
    ``common/data/*.py`` follows ``dataloader.train.mapper.image_format``.

    Args:
        depth (int): 18, 34 (BasicBlock: no stride setting to make) or 50, 101, 152.

    Returns:
        list[str]: ``key=value`` strings for ``train_net.py`` / :func:`afa_d2.engine.apply_overrides`.
    """
    if depth not in (18, 34, 50, 101, 152):
        raise ValueError("depth must be one of 18, 34, 50, 101, 152 (torchvision's ResNets), got {!r}".format(depth))
    out = [
        "model.pixel_mean=[{}]".format(",".join(str(v) for v in TORCHVISION_PIXEL_MEAN)),
        "model.pixel_std=[{}]".format(",".join(str(v) for v in TORCHVISION_PIXEL_STD)),
        "model.input_format=RGB",
        "dataloader.train.mapper.image_format=RGB",
        "model.backbone.bottom_up.stages.depth={}".format(depth),
    ]
    if depth >= 50:
        out.append("model.backbone.bottom_up.stages.stride_in_1x1=False")
    return out


TORCHVISION_SETTINGS = torchvision_resnet_overrides(50)


def _torchvision_name(k: str) -> Optional[str]:
    """torchvision ResNet key -> detectron2 ResNet key (None: not part of detectron2's ResNet)."""
    if k.startswith("fc."):
        return None
    k = re.sub(r"^conv1\.", "stem.conv1.", k)
    k = re.sub(r"^bn1\.", "stem.conv1.norm.", k)
    k = re.sub(r"^layer(\d)\.", lambda m: "res{}.".format(int(m.group(1)) + 1), k)
    k = re.sub(r"\.bn(\d)\.", lambda m: ".conv{}.norm.".format(m.group(1)), k)
    k = k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return k


def _resnet_layout(weights: Dict[str, torch.Tensor]) -> Tuple[Tuple[int, ...], bool]:
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in weights for m in [re.match(r"layer{}\.(\d+)\.".format(stage), k)] if m}
        blocks.append(max(ids) + 1 if ids else 0)
    return tuple(blocks), "layer1.0.conv3.weight" in weights


def convert_torchvision_resnet(
    source: Union[str, Dict[str, Any]],
    *,
    prefix: str = "backbone.bottom_up.",
    output: Optional[str] = None,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """torchvision ResNet weights under detectron2's ``ResNet`` names.

    ``conv1`` / ``bn1`` -> ``stem.conv1`` / ``stem.conv1.norm``; ``layer{N}.{i}`` -> ``res{N+1}.{i}``;
    ``bn{K}`` -> ``conv{K}.norm``; ``downsample.0`` / ``downsample.1`` -> ``shortcut`` /
    ``shortcut.norm``; ``fc`` (the classifier) and BatchNorm's ``num_batches_tracked`` dropped.

    Where the keys go: with ``prefix="backbone.bottom_up."`` (default) they are a detector's
    bottom-up, loaded by name like any checkpoint. With ``prefix=""`` the file is what
    detectron2's ``tools/convert-torchvision-to-d2.py`` writes (``"__author__": "torchvision"``,
    ``"matching_heuristics": True``): detectron2's ``DetectionCheckpointer`` then matches each
    model key to the checkpoint key it ends with (``align_and_update_state_dicts``), which adds
    the ``backbone.bottom_up.`` prefix by name matching.

    The weights need :func:`torchvision_resnet_overrides` (RGB images, torchvision's pixel
    statistics, the Bottleneck's stride on its 3x3 conv): ``report.config_overrides`` holds them
    for the depth found.

    Args:
        source (str or dict): a torchvision ResNet state dict (``.pth`` path / URL, or a dict).
        prefix (str): put in front of every converted key.
        output (str or None): where to write the converted ``.pth`` (atomically), if given.

    Returns:
        (dict[str, Tensor], ConversionReport)
    """
    weights, _, name = source_weights(source)
    missing = [k for k in ("conv1.weight", "bn1.weight", "layer4.0.conv1.weight") if k not in weights]
    if missing:
        raise ValueError("{}: no {}: not a torchvision ResNet state dict (keys conv1.*, bn1.*, layer1-4.*, fc.*)"
                         .format(name, ", ".join(missing)))
    blocks, bottleneck = _resnet_layout(weights)
    depth = _RESNET_DEPTHS.get((blocks, bottleneck))
    report = ConversionReport(source=name, target="detectron2 ResNet ({})".format(
        "depth {}".format(depth) if depth else "{} blocks per stage".format(list(blocks))))
    out = {}
    for k, v in weights.items():
        if k.endswith("num_batches_tracked"):
            report.drop(k, "BatchNorm's step counter (detectron2's norms keep none)")
            continue
        new = _torchvision_name(k)
        if new is None:
            report.drop(k, "the ImageNet classifier")
            continue
        out[prefix + new] = v
        report.loaded.append(prefix + new)
        report.renamed += int(prefix + new != k)
    if depth is not None:
        report.config_overrides = torchvision_resnet_overrides(depth)
        if depth < 50:
            report.notes.append("depth {} uses BasicBlock, which takes no stride_in_1x1: remove that key from a "
                                "config that sets it (detectron2's common/models/mask_rcnn_fpn.py does)".format(depth))
    else:
        report.config_overrides = [o for o in torchvision_resnet_overrides(50) if ".depth=" not in o]
        report.notes.append("not a standard depth ({} blocks per stage, {}): build the bottom-up to match".format(
            list(blocks), "Bottleneck" if bottleneck else "BasicBlock"))
    extra = {"matching_heuristics": not prefix, "config_overrides": list(report.config_overrides)}
    if output:
        save_converted(out, output, author="torchvision", report=report, extra=extra)
    return out, report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tools/convert_torchvision_resnet.py``: prints the report and the overrides; a bad source is
    one line, exit 2."""
    p = converter_parser(COMMAND_DOC, "a torchvision ResNet state dict (.pth, path or URL)")
    p.add_argument("--prefix", default="backbone.bottom_up.",
                   help="key prefix (default: a detector's bottom-up; \"\" for detectron2's name matching)")
    args = p.parse_args(argv)
    return run_converter(p, lambda: convert_torchvision_resnet(args.source, prefix=args.prefix, output=args.output))
