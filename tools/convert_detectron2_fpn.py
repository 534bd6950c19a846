#!/usr/bin/env python
"""Convert a detectron2 FPN checkpoint into an afa_d2 AttentionFPN detector's weights.

    python tools/convert_detectron2_fpn.py model_final_f10217.pkl out/mask_rcnn_R_50_mssa_from_fpn.pth \\
        --config COCO/mask_rcnn_R_50_mssa_1x.py --start-as-fpn +model.backbone.upsample_mode=nearest

Every shared weight (bottom-up, laterals, output convs, RPN and RoI heads) loads; only the
operator's blocks (backbone.fpn_aggregation*) are new. --start-as-fpn starts MSSA / concat as FPN's
sum (with Up nearest, the converted detector's outputs equal the FPN detector's). Prints what was
loaded, what is new and what was dropped. See afa_d2.model_zoo.convert.convert_detectron2_fpn.
"""
import argparse
import sys

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.convert import convert_detectron2_fpn, save_converted


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="detectron2 checkpoint: its model-zoo .pkl or a .pth (path or URL)")
    p.add_argument("output", help="the converted .pth to write")
    p.add_argument("--config", required=True, help="the target: a zoo config name or a LazyConfig file")
    p.add_argument("--start-as-fpn", action="store_true", help="start MSSA / concat blocks as FPN's sum")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="write even if weights outside the new blocks do not fit (e.g. another number of classes)")
    p.add_argument("opts", nargs="*", default=[], help="config overrides key=value")
    args = p.parse_intermixed_args(argv)  # overrides may follow the flags
    try:
        state, report = convert_detectron2_fpn(args.source, args.config, start_as_fpn=args.start_as_fpn,
                                               opts=args.opts, strict=not args.allow_mismatch)
    except (ValueError, FileNotFoundError, KeyError) as e:
        p.exit(2, "error: {}\n".format(e))
    print(report.describe())
    save_converted(state, args.output, author="afa_d2 tools/convert_detectron2_fpn.py", report=report,
                   extra={"target_config": args.config, "start_as_fpn": args.start_as_fpn})
    print("wrote {}".format(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
