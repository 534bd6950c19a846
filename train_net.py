#!/usr/bin/env python
"""Train or evaluate an afa_d2 model.

    python train_net.py --config-file configs/COCO/cascade_mask_rcnn_R_50_mssa_1x.py --num-gpus 8
    python train_net.py --config-file ... --eval-only train.init_checkpoint=model_final.pth
    python train_net.py --config-file ... --resume                  # continue output_dir's run
    python train_net.py --config-file ... model.backbone.aggregation=msca train.output_dir=out/

The command line, its checks and the per-worker flow are :mod:`afa_d2.train_net` (``--help``).
"""
import sys

from afa_d2.train_net import parse_args, run

if __name__ == "__main__":
    sys.exit(run(parse_args()))
