"""The study's worker process: ``python -m afa_d2.study.worker --study-dir DIR --arm A --seed S`` trains one
run, the design read from ``DIR/study.json`` (started by :mod:`.runner`)."""
from __future__ import annotations

import argparse
import os
from typing import List, Optional


def worker_main(argv: Optional[List[str]] = None) -> int:
    """Train one run of the study in ``--study-dir``."""
    import afa_d2  # noqa: F401  (detectron2 compat patches first)

    from .design import StudyDesign
    from .runs import read_json, train_run

    p = argparse.ArgumentParser(prog="python -m afa_d2.study.worker")
    p.add_argument("--study-dir", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--init-checkpoint", default=None)
    p.add_argument("--sharing", type=int, default=1)
    args = p.parse_args(argv)
    design = StudyDesign.from_dict(read_json(os.path.join(args.study_dir, "study.json"), "the study")["design"])
    train_run(design, design.arm(args.arm), args.seed, args.study_dir, init_checkpoint=args.init_checkpoint,
              sharing=args.sharing)
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
