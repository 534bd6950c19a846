"""The detectors the benchmark measures, and their inputs (docs/DESIGN.md, "What is measured").

``--model``: detectron2's LazyConfig ``common/models/mask_rcnn_fpn.py``, ``cascade_rcnn.py``, ``retinanet.py``
or ``fcos.py`` with the FPN replaced by :class:`~afa_d2.modeling.AttentionFPN`, as
``configs/common/models/*_afpn.py`` do. The weights are random (nothing is downloaded): the bottom-up uses
``--norm`` (GN by default; FrozenBN or BN in eval mode at random init blow the activations up to ~1e4 and
leave a handful of proposals), every variant shares the weights of the parts it has in common with the
baseline operator (the bottom-up, lateral/output convs, heads), and the test score threshold is 0, so the
heads do (nearly) the same work for every operator (:func:`set_inference_budget`).
"""
import argparse
import contextlib
from typing import Dict, Iterator, Optional

import torch
from torch import nn

from .variants import BASE

#: --model -> detectron2's LazyConfig whose FPN becomes AttentionFPN
MODELS = {"mask_rcnn": "common/models/mask_rcnn_fpn.py", "cascade_mask_rcnn": "common/models/cascade_rcnn.py",
          "retinanet": "common/models/retinanet.py", "fcos": "common/models/fcos.py"}
#: the one-stage (dense) detectors: no proposals, no RoI heads; p3..p7
ONE_STAGE = ("retinanet", "fcos")


def build_model(
    op: str,
    model: str = "mask_rcnn",
    norm: str = "GN",
    seed: int = 0,
    detections_per_image: int = 100,
    proposals: int = 1000,
    shared_state: Optional[Dict[str, torch.Tensor]] = None,
) -> nn.Module:
    """detectron2's LazyConfig detector ``MODELS[model]`` with AttentionFPN(aggregation=op) as its
    backbone (the pyramid, bottom-up levels and top block of detectron2's FPN there: p2..p6 from
    res2..res5 for the R-CNNs, p3..p7 from res3..res5 for RetinaNet and FCOS), the test-time budget of
    :func:`set_inference_budget`.

    ``shared_state`` (e.g. the baseline model's state_dict) is loaded non-strictly, so the
    variants differ only in their operators' own weights.
    """
    from detectron2 import model_zoo
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    from afa_d2.modeling import AttentionFPN

    if model not in MODELS:
        raise ValueError("unknown model {!r}; valid: {}".format(model, ", ".join(MODELS)))
    cfg = model_zoo.get_config(MODELS[model]).model
    fpn = cfg.backbone
    fpn.bottom_up.stem.norm = norm
    fpn.bottom_up.stages.norm = norm
    cfg.backbone = L(AttentionFPN)(
        bottom_up=fpn.bottom_up,
        in_features="${.bottom_up.out_features}",  # res2..res5 (R-CNNs) or res3..res5 (RetinaNet, FCOS)
        out_channels=fpn.out_channels,
        aggregation=op,
        top_block=fpn.top_block,  # LastLevelMaxPool (p6), or LastLevelP6P7 from res5 (RetinaNet) / p5 (FCOS)
    )
    set_inference_budget(cfg, detections_per_image, proposals)
    torch.manual_seed(seed)
    detector = instantiate(cfg)
    if shared_state is not None:
        detector.load_state_dict(shared_state, strict=False)
    return detector


def set_inference_budget(cfg, detections_per_image: int, proposals: int) -> None:
    """Test-time settings of a detector's LazyConfig (``cfg``: its ``model``) that keep the heads' work
    the same for every operator on random weights: the score threshold at 0, so that the boxes entering
    NMS are the top-k, not those random scores let through.

    R-CNNs: the box predictors' ``test_score_thresh`` 0 and ``test_topk_per_image`` =
    ``detections_per_image``, the RPN's test ``post_nms_topk`` = ``proposals``. RetinaNet and FCOS (no
    proposals, no RoI heads): ``test_score_thresh`` 0, ``test_topk_candidates`` = ``proposals`` (per
    level, before the final NMS), ``max_detections_per_image`` = ``detections_per_image``.
    """
    if "roi_heads" not in cfg:  # RetinaNet, FCOS (DenseDetector)
        cfg.test_score_thresh = 0.0
        cfg.test_topk_candidates = proposals
        cfg.max_detections_per_image = detections_per_image
        return
    for p in cfg.roi_heads.get("box_predictors") or [cfg.roi_heads.box_predictor]:
        p.test_score_thresh = 0.0
        p.test_topk_per_image = detections_per_image
    cfg.proposal_generator.post_nms_topk = (cfg.proposal_generator.post_nms_topk[0], proposals)


@contextlib.contextmanager
def counting_nms_boxes(model: nn.Module, counts: Dict[str, int]) -> Iterator[None]:
    """Within the block, ``model``'s forward records in ``counts`` how many boxes entered its last NMS:
    "proposals" (an R-CNN's RPN output, the RoI heads' input) or "candidates" (RetinaNet's / FCOS's
    top-k of every level, into the final NMS)."""
    generator = getattr(model, "proposal_generator", None)
    if generator is not None:
        hook = generator.register_forward_hook(lambda m, i, o: counts.__setitem__("proposals", len(o[0][0])))
        try:
            yield
        finally:
            hook.remove()
        return
    decode = getattr(model, "_decode_multi_level_predictions", None)  # DenseDetector: every level's top-k
    if decode is None:
        yield
        return

    def counted(*args, **kwargs):
        candidates = decode(*args, **kwargs)
        counts["candidates"] = len(candidates)
        return candidates

    model._decode_multi_level_predictions = counted  # shadows the method on this instance only
    try:
        yield
    finally:
        del model._decode_multi_level_predictions


def _image(height: int, width: int, device: torch.device) -> torch.Tensor:
    """The benchmark's input: a (3, height, width) image of random pixels in [0, 255), the same every run."""
    g = torch.Generator().manual_seed(1)
    return (torch.rand(3, height, width, generator=g) * 255).to(device)


def _build(op: str, args: argparse.Namespace, shared_state=None) -> nn.Module:
    """:func:`build_model` of the operator ``op`` with the command line's ``--model``, ``--norm``, ``--seed``
    and test-time budget."""
    return build_model(
        op, args.model, args.norm, args.seed, args.detections_per_image, args.proposals,
        shared_state,
    )


def shared_state_dict(args: argparse.Namespace) -> Dict[str, torch.Tensor]:
    """The baseline model's weights, the common part of every variant."""
    return _build(BASE, args).state_dict()


def _stock_fpn_model(args: argparse.Namespace, shared_state: Dict[str, torch.Tensor]) -> nn.Module:
    """detectron2's own detector of ``--model`` (Mask R-CNN, Cascade, RetinaNet, FCOS) with its ``FPN``, the
    test-time budget of :func:`build_model`: the baseline's weights load exactly."""
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    cfg = model_zoo.get_config(MODELS[args.model]).model
    cfg.backbone.bottom_up.stem.norm = args.norm
    cfg.backbone.bottom_up.stages.norm = args.norm
    set_inference_budget(cfg, args.detections_per_image, args.proposals)
    model = instantiate(cfg)
    incompatible = model.load_state_dict(shared_state, strict=False)
    assert not incompatible.missing_keys, incompatible.missing_keys  # every FPN weight is a baseline weight
    return model
