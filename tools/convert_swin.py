#!/usr/bin/env python
"""Convert an ImageNet Swin checkpoint (official or timm layout) into afa_d2's Swin bottom-up.

    python tools/convert_swin.py swin_tiny_patch4_window7_224.pth out/swin_T_bottom_up.pth \\
        --config COCO/cascade_mask_rcnn_swin_T_mssa_1x.py
    python train_net.py --config-file configs/COCO/cascade_mask_rcnn_swin_T_mssa_1x.py \\
        train.init_checkpoint=out/swin_T_bottom_up.pth

Writes backbone.bottom_up.model.* keys; the classifier and the buffers timm recomputes are dropped,
patch merging moved to timm's stages. See afa_d2.model_zoo.convert.convert_swin.
"""
import argparse
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert import convert_swin, save_converted


def main(argv=None):
    from detectron2.config import instantiate

    from afa_d2.engine import apply_overrides, load_config
    from afa_d2.model_zoo import get_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a Swin checkpoint (.pth, official or timm layout)")
    p.add_argument("output", help="the converted .pth to write")
    p.add_argument("--config", default="COCO/cascade_mask_rcnn_swin_T_sum_1x.py",
                   help="a config with the Swin bottom-up (zoo name or LazyConfig file)")
    p.add_argument("opts", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_intermixed_args(argv)  # overrides may follow the flags
    import os

    cfg = load_config(args.config, args.opts) if os.path.isfile(args.config) else apply_overrides(
        get_config(args.config), args.opts)
    bottom_up = instantiate(cfg.model.backbone.bottom_up)
    try:
        weights, report = convert_swin(args.source, bottom_up)
    except (ValueError, FileNotFoundError, KeyError) as e:
        p.exit(2, "error: {}\n".format(e))
    print(report.describe())
    save_converted(weights, args.output, author="afa_d2 tools/convert_swin.py", report=report)
    print("wrote {}".format(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
