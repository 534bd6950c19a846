"""The evaluation loop: the config's evaluator, ``do_test``, and ``--eval-only`` (the counterpart of
:mod:`.train_loop`; the evaluators themselves are :mod:`afa_d2.evaluation`)."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

from detectron2.config import instantiate
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from .checkpoint import AtomicCheckpointer
from .ddp import create_ddp_model
from .precision import PrecisionModel, check_precision

__all__ = ["build_evaluator", "do_test", "do_eval_only"]

logger = logging.getLogger(__name__)


def build_evaluator(cfg):
    """``cfg.dataloader.evaluator`` (its ``output_dir`` defaulted to ``<output_dir>/inference``),
    else afa_d2's evaluator for the test dataset, else None."""
    out = os.path.join(cfg.train.output_dir, "inference")
    if "evaluator" in cfg.dataloader:
        ev = cfg.dataloader.evaluator
        if "output_dir" in ev and ev.output_dir is None:
            ev.output_dir = out
        elif "output_dir" not in ev:
            ev.output_dir = out
        return instantiate(ev)
    names = cfg.dataloader.test.dataset.get("names", None) if "test" in cfg.dataloader else None
    if names is None:
        return None
    from afa_d2.evaluation import build_evaluator as _build

    return _build(names if isinstance(names, str) else names[0], out)


def do_test(cfg, model, precision: str = "fp32") -> Dict[str, Any]:
    """Evaluate ``model`` on ``cfg.dataloader.test`` in ``precision`` (:mod:`.precision`: autocast, outputs
    in fp32); returns detectron2's nested results dict."""
    if "test" not in cfg.dataloader:
        return {}
    evaluator = build_evaluator(cfg)
    if evaluator is None:
        return {}
    if str(cfg.train.device) == "cpu":  # the same values, the RoIs split over the threads
        from afa_d2.execution.runtime import prepare_for_cpu_inference

        prepare_for_cpu_inference(model, channels_last=False)
    if precision != "fp32":
        model = PrecisionModel(model, precision, cfg.train.device)
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process() and ret:
        print_csv_format(ret)
    return ret or {}


def do_eval_only(cfg, *, resume: bool = False, precision: str = "fp32",
                 force_precision: bool = False) -> Dict[str, Any]:
    """Load weights (the last checkpoint with ``resume``, else ``train.init_checkpoint``) and
    evaluate in ``precision`` ("fp32", "bf16", "fp16"; :func:`.precision.check_precision` refuses what the
    device cannot run fast, unless ``force_precision``). A checkpoint whose shapes do not fit raises
    :class:`CheckpointShapeError`."""
    check_precision(precision, cfg.train.device, force=force_precision)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, strict_shapes=True)
    if resume and checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
    else:
        path = cfg.train.init_checkpoint
    if not path:
        logger.warning("--eval-only without train.init_checkpoint: evaluating randomly initialized weights")
    checkpointer.load(path)
    if str(cfg.train.device) == "cpu":
        from afa_d2.execution.runtime import prepare_for_cpu_inference

        prepare_for_cpu_inference(model)
    model = create_ddp_model(model)
    return do_test(cfg, model, precision)


