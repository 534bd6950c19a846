"""The installed detectron2 runs detectron2's own Mask R-CNN and Cascade Mask R-CNN
R-50-FPN (random init) on CPU: one training step and one inference."""
import math

import pytest
import torch

from detectron2 import model_zoo
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage


def _sample(height=128, width=160):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 70.0, 80.0], [90.0, 30.0, 150.0, 100.0]]))
    inst.gt_classes = torch.tensor([3, 17])
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 12:80, 10:70] = True
    masks[1, 30:100, 90:150] = True
    inst.gt_masks = BitMasks(masks)
    return {"image": image, "instances": inst, "height": height, "width": width}


@pytest.mark.parametrize("config", ["common/models/mask_rcnn_fpn.py", "common/models/cascade_rcnn.py"])
def test_train_step_and_inference(config):
    torch.manual_seed(0)
    cfg = model_zoo.get_config(config).model
    # From scratch, FrozenBN's random statistics explode (docs/DESIGN.md, "The recipe"): trainable BN instead.
    cfg.backbone.bottom_up.stem.norm = "BN"
    cfg.backbone.bottom_up.stages.norm = "BN"
    model = instantiate(cfg)
    model.train()
    with EventStorage(0):
        losses = model([_sample(), _sample()])
    expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"}
    expected |= {"loss_cls", "loss_box_reg"} if "mask_rcnn" in config else {
        "loss_{}_stage{}".format(k, s) for k in ("cls", "box_reg") for s in range(3)}
    assert set(losses) == expected
    for name, value in losses.items():
        assert math.isfinite(value.item()), "{} = {}".format(name, value.item())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, "no gradient reached " + name
            assert torch.isfinite(p.grad).all(), "non-finite gradient in " + name

    model.eval()
    with torch.no_grad():
        out = model([_sample()])[0]["instances"]
    assert out.image_size == (128, 160)
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(out.get_fields())
    assert len(out) <= 100  # detections per image, docs/DESIGN.md, "The recipe"
    if len(out):
        assert out.pred_masks.shape[1:] == (128, 160)
        assert ((out.scores >= 0) & (out.scores <= 1)).all()
