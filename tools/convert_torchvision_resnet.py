#!/usr/bin/env python
"""Convert torchvision ResNet weights (e.g. resnet50-0676ba61.pth) to detectron2's names.

    python tools/convert_torchvision_resnet.py resnet50-0676ba61.pth out/R-50-torchvision.pth
    python train_net.py --config-file configs/COCO/mask_rcnn_R_50_mssa_1x.py \\
        train.init_checkpoint=out/R-50-torchvision.pth <the settings this command prints>

What detectron2's tools/convert-torchvision-to-d2.py does, written under the detector's
backbone.bottom_up. prefix (--prefix "" for a bare ResNet). torchvision's weights need RGB input with
ImageNet statistics and the Bottleneck's stride on its 3x3 conv: the command prints those overrides.
See afa_d2.model_zoo.convert.convert_torchvision_resnet.
"""
import argparse
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert import TORCHVISION_SETTINGS, convert_torchvision_resnet, save_converted


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a torchvision ResNet state dict (.pth)")
    p.add_argument("output", help="the converted .pth to write")
    p.add_argument("--prefix", default="backbone.bottom_up.", help="key prefix (default: a detector's bottom-up)")
    args = p.parse_args(argv)
    try:
        weights, report = convert_torchvision_resnet(args.source, prefix=args.prefix)
    except (ValueError, FileNotFoundError, KeyError) as e:
        p.exit(2, "error: {}\n".format(e))
    print(report.describe())
    save_converted(weights, args.output, author="torchvision", report=report,
                   extra={"matching_heuristics": False, "settings": TORCHVISION_SETTINGS})
    print("wrote {}\nconfig overrides these weights need:\n  {}".format(args.output, " ".join(TORCHVISION_SETTINGS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
