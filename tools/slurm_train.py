#!/usr/bin/env python
"""Submit train_net.py's training to a Slurm cluster: nodes x GPUs per node, one task per GPU,
requeued on time-out or preemption and resumed from the last checkpoint (afa_d2.slurm_train; ``--help``).

    python tools/slurm_train.py --config-file configs/COCO/cascade_mask_rcnn_R_50_msca_1x.py \\
        --nodes 2 --gpus-per-node 8 --partition gpu --time 3-00:00:00 train.output_dir=out/msca
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's afa_d2

from afa_d2.slurm_train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
