#!/usr/bin/env python
"""Convert a detectron2 FPN checkpoint into the weights of an afa_d2 AttentionFPN detector.

    python tools/convert_detectron2_fpn.py model_final_a54504.pkl out/mask_rcnn_R_50_mssa_from_fpn.pth \\
        --config COCO/mask_rcnn_R_50_mssa_1x.py --start-as-fpn +model.backbone.upsample_mode=nearest

Every shared weight (bottom-up, laterals, output convs, RPN and RoI heads) loads; only the
operator's blocks (backbone.fpn_aggregation*) are new. --start-as-fpn starts MSSA / concat as FPN's
sum (with Up nearest, the converted detector gives the FPN detector's detections; MSCA cannot).
Prints what was loaded, what is new and what was dropped; a checkpoint of another architecture is
an error naming keys and shapes (--allow-mismatch converts anyway). The source is a detectron2
model-zoo .pkl (read without running any code it may hold) or a .pth, a path or a URL
(detectron2://...). See afa_d2.model_zoo.convert.convert_detectron2_fpn.
"""
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert import convert_detectron2_fpn, converter_parser, run_converter


def main(argv=None) -> int:
    p = converter_parser(__doc__, "detectron2 checkpoint: its model-zoo .pkl or a .pth (path or URL)")
    p.add_argument("--config", required=True,
                   help="the target detector: a LazyConfig file or an afa_d2 zoo config name")
    p.add_argument("--start-as-fpn", action="store_true", help="start MSSA / concat blocks as FPN's sum")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="convert even if weights outside the new blocks do not fit (they keep their initialisation)")
    p.add_argument("opts", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_intermixed_args(argv)  # overrides may follow the flags
    return run_converter(p, lambda: convert_detectron2_fpn(
        args.source, args.config, opts=args.opts, start_as_fpn=args.start_as_fpn,
        strict=not args.allow_mismatch, output=args.output))


if __name__ == "__main__":
    sys.exit(main())
