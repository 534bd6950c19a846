"""Small-scale RetinaNet on the built-in ``shapes`` dataset, sum-up (FPN) aggregation (docs/DESIGN.md,
"Beyond the paper's two detectors").

The recipe of ``mask_rcnn_R_18_sum.py`` (its half-width ResNet-18 with GroupNorm from scratch, 64-channel
pyramid, shortest edge 192, AdamW at lr 1e-3, total batch 2, 4 epochs with the lr decays at 0.85 and 0.95, seed
0) under RetinaNet's own detector, ``common/models/retinanet_afpn.py``: res3..res5 -> p3..p5, p6 / p7 from res5
(256 channels here), detectron2's head at the pyramid's width (4 convs of 64 channels a branch) with GroupNorm
(from scratch, as the bottom-up; FCOS's head has it too: with detectron2's norm-free head the sum model reached
box AP 1.0 at 1300 iterations, with GroupNorm 2.1, seed 0), anchors halved as the R-CNN rows halve theirs
(16..256 px, 3 scales x 3 ratios a location), boxes only.
The MSSA / MSCA rows import this file and change the operator.
"""
from detectron2.layers import ShapeSpec

from ..common.models.retinanet_afpn import model
from .mask_rcnn_R_18_sum import dataloader, lr_multiplier, optimizer, train
from .mask_rcnn_R_18_sum import model as _mask_rcnn

model.backbone.bottom_up = _mask_rcnn.backbone.bottom_up
model.backbone.bottom_up.out_features = ["res3", "res4", "res5"]
model.backbone.out_channels = 64
model.backbone.aggregation = "sum"
model.backbone.top_block.in_channels = 256  # res5 of the half-width ResNet-18
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64, 64, 64]
model.head.norm = "GN"
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]]
model.num_classes = 13  # 10 shapes + 3 context markers

dataloader.train.mapper.use_instance_mask = False
dataloader.evaluator.tasks = ("bbox",)

train.output_dir = "./output/shapes/retinanet_R_18_sum"
