"""``train_net.py`` for a yacs ``.yaml`` config using the registered backbone."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch

from .checkpoint import AtomicCheckpointer
from .train_loop import default_setup

__all__ = ["run_yacs"]

logger = logging.getLogger(__name__)


def _yacs_trainer_class():
    import weakref

    from detectron2.engine import DefaultTrainer

    class YacsTrainer(DefaultTrainer):
        """detectron2's ``DefaultTrainer`` with afa_d2's evaluators and atomic checkpointer."""

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            from afa_d2.evaluation import build_evaluator as _build

            return _build(dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

        def build_hooks(self):
            # DefaultTrainer made a plain DetectionCheckpointer just before calling this.
            self.checkpointer = AtomicCheckpointer(
                self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
            )
            return super().build_hooks()

    return YacsTrainer


def run_yacs(args) -> Dict[str, Any]:
    """``train_net.py`` for a yacs ``.yaml``: ``get_cfg() + add_afa_config``, DefaultTrainer.

    Single-process on CPU (detectron2 v0.6's DefaultTrainer gives DDP CUDA device ids).
    """
    from detectron2.config import get_cfg

    import afa_d2.modeling  # noqa: F401  (registers the backbones in BACKBONE_REGISTRY)
    from afa_d2.config import add_afa_config

    try:
        import afa_d2.data  # noqa: F401  (registers the built-in datasets)
    except ImportError:  # pragma: no cover - the data package is optional for the registry path
        pass
    cfg = get_cfg()
    add_afa_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.info("CUDA is not available: MODEL.DEVICE set to cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    trainer_cls = _yacs_trainer_class()
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        ckpt = AtomicCheckpointer(model, cfg.OUTPUT_DIR, strict_shapes=True)
        ckpt.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return dict(getattr(trainer, "_last_eval_results", None) or {})

