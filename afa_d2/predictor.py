"""``Predictor``: one image in, detections out, for any afa_d2 config (detectron2's ``DefaultPredictor``).

    from afa_d2.predictor import Predictor
    predictor = Predictor("shapes/mask_rcnn_R_18_msca.py", weights="output/model_final.pth")
    instances = predictor(cv2.imread("image.jpg"))["instances"]      # BGR uint8, as cv2 reads it

It builds the config's model (a zoo name, a LazyConfig file, or a loaded LazyConfig), loads the
weights (a path or URL, hash-checked like every afa_d2 load; ``trained=True`` takes the zoo's
published checkpoint), resizes as the config's test loader does, and runs the model in eval mode
without gradients. On the CPU it first calls :func:`afa_d2.execution.runtime.configure_cpu_runtime`
(glibc keeps freed memory; logged; ``AFA_D2_MALLOC=default`` turns it off) and
:func:`afa_d2.execution.runtime.prepare_for_cpu_inference` (threaded RoIAlign and NMS, the RoI heads' FC layers
and 3x3 convolutions on the host's faster kernels, channels-last weights).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from afa_d2.engine.precision import check_precision, outputs_to_fp32, precision_scope

__all__ = ["Predictor"]

logger = logging.getLogger(__name__)


class Predictor:
    """Run an afa_d2 detector on single images.

    Args:
        config (str or LazyConfig): a zoo name ("shapes/mask_rcnn_R_18_msca.py"), a LazyConfig
            ``.py`` / dumped ``config.yaml`` file, or a loaded LazyConfig.
        weights (str): a checkpoint path or URL; None: ``train.init_checkpoint`` of the config
            (or the zoo's published checkpoint with ``trained=True``).
        device (str): default "cuda" when available, else "cpu".
        opts (list[str]): config overrides ``key=value``.
        trained (bool): with a zoo name, load its published checkpoint.
        precision (str): "fp32" (default), "bf16" (CPUs with native bf16, GPUs) or "fp16" (GPUs): the model
            runs under ``torch.autocast``, the detections come back in fp32
            (:mod:`afa_d2.engine.precision`; refused in one line where the device has no fast path).
        force_precision (bool): run ``precision`` even without a fast path.
    """

    def __init__(self, config: Union[str, Any], weights: Optional[str] = None, device: Optional[str] = None, *,
                 opts: Sequence[str] = (), trained: bool = False, precision: str = "fp32",
                 force_precision: bool = False):
        from afa_d2.engine import apply_overrides
        from afa_d2.model_zoo.build import build_model, inference_augmentations, input_format, load_any_config

        if isinstance(config, str):
            cfg = load_any_config(config, list(opts), trained=trained)
        else:
            cfg = apply_overrides(config, list(opts))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        check_precision(precision, self.device, force=force_precision)
        self.precision = precision
        if self.device == "cpu":
            from afa_d2.execution.runtime import configure_cpu_runtime

            configure_cpu_runtime("the predictor")
        self.cfg = cfg
        path = weights if weights is not None else cfg.train.get("init_checkpoint", "")
        if not path:
            logger.warning("Predictor without weights: the model is randomly initialised")
        self.model = build_model(cfg, path or None, self.device, seed=None,
                                 config_name=config if isinstance(config, str) else "the given config")
        if self.device == "cpu":
            from afa_d2.execution.runtime import prepare_for_cpu_inference

            prepare_for_cpu_inference(self.model)
        self.augmentations = inference_augmentations(cfg)
        self.input_format = input_format(cfg)

    def __call__(self, image: np.ndarray) -> Dict[str, Any]:
        """
        Args:
            image: array of shape (H, W, 3), uint8, BGR (as ``cv2.imread`` gives it).

        Returns:
            dict: ``{"instances": Instances}`` in the image's own coordinates (detectron2's format).
        """
        from afa_d2.model_zoo.build import test_time_input

        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("Predictor expects an (H, W, 3) BGR uint8 array, got {}".format(
                getattr(image, "shape", type(image).__name__)))
        inputs, _ = test_time_input(image, self.augmentations, self.input_format, "BGR", self.device)
        with torch.no_grad(), precision_scope(self.precision, self.device):
            out = self.model([inputs])[0]
        return outputs_to_fp32(out)
