#!/usr/bin/env python
"""Convert an ImageNet Swin checkpoint (official or timm layout) into afa_d2's Swin bottom-up.

    python tools/convert_swin.py swin_tiny_patch4_window7_224.pth out/swin_T_bottom_up.pth \\
        --config COCO/cascade_mask_rcnn_swin_T_mssa_1x.py
    python train_net.py --config-file configs/COCO/cascade_mask_rcnn_swin_T_mssa_1x.py \\
        train.init_checkpoint=out/swin_T_bottom_up.pth

Writes backbone.bottom_up.model.* keys. The layout is detected: the official one's patch merging
(end of stages 0-2) moves to timm's (start of stages 1-3) and head -> head.fc; the classifier,
the final norm and the buffers timm recomputes (relative_position_index, attn_mask) are dropped and
reported as such; a relative-position bias table of another window size is an error. See
afa_d2.model_zoo.convert.convert_swin.
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert import convert_swin, converter_parser, run_converter


def main(argv=None) -> int:
    p = converter_parser(__doc__, "a Swin checkpoint (.pth, path or URL; official or timm layout)")
    p.add_argument("--config", default="COCO/cascade_mask_rcnn_swin_T_sum_1x.py",
                   help="a config whose model.backbone.bottom_up is the Swin bottom-up (LazyConfig file or zoo name)")
    p.add_argument("--prefix", default="backbone.bottom_up.model.", help="key prefix (default: a detector's)")
    p.add_argument("opts", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_intermixed_args(argv)  # overrides may follow the flags
    return run_converter(p, lambda: convert_swin(
        args.source, args.config, opts=args.opts, prefix=args.prefix, output=args.output))


if __name__ == "__main__":
    sys.exit(main())
