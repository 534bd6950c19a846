#!/usr/bin/env python
"""Convert torchvision ResNet weights (e.g. resnet50-0676ba61.pth) to detectron2's ResNet names.

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
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert import convert_torchvision_resnet, converter_parser, run_converter


def main(argv=None) -> int:
    p = converter_parser(__doc__, "a torchvision ResNet state dict (.pth, path or URL)")
    p.add_argument("--prefix", default="backbone.bottom_up.",
                   help="key prefix (default: a detector's bottom-up; \"\" for detectron2's name matching)")
    args = p.parse_args(argv)
    return run_converter(p, lambda: convert_torchvision_resnet(args.source, prefix=args.prefix, output=args.output))


if __name__ == "__main__":
    sys.exit(main())
