#!/usr/bin/env python
"""Train and publish the built-in-dataset model zoo, then write its index and MODEL_ZOO.md.

    python tools/train_model_zoo.py                          # 5 models x 1300 iterations, ~1 hour on 2 cores
    python tools/train_model_zoo.py --md MODEL_ZOO.md        # and rewrite the repository's MODEL_ZOO.md
    python tools/train_model_zoo.py --configs shapes/mask_rcnn_R_18_msca.py --max-iter 300 --zoo-dir /srv/zoo

Publishes into ``$AFA_D2_CACHE/model_zoo`` unless ``--zoo-dir`` says otherwise; then
``afa_d2.model_zoo.get("shapes/mask_rcnn_R_18_msca.py", trained=True)`` loads from there (or from
wherever ``$AFA_D2_ZOO_URL`` points, e.g. a web server over that folder). See
:mod:`afa_d2.model_zoo.train`.
"""
import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.model_zoo.train import main

if __name__ == "__main__":
    main()
