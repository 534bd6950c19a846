"""Keypoint R-CNN R-50, COCO 2017, 12 epochs, sum: the base of the Keypoint R-CNN R-50 rows.

Not in the paper (docs/DESIGN.md, "Beyond the paper's two detectors"). The paper's recipe (AdamW lr 1e-4, betas
(0.9, 0.99), weight decay 0.05, total batch 8, 12 epochs with lr x 0.1 at epochs 8 and 11, shortest edge 800)
with Keypoint R-CNN's own settings otherwise: detectron2's keypoint head (17 keypoints, 8 convs), one class,
1500 / 1000 RPN proposals, images with no visible keypoint left out, stem and res2 frozen. The pyramid: p2..p5
with the operator, p6 a max-pool of p5.

detectron2's Keypoint R-CNN R-50 FPN 1x (its recipe: SGD lr 0.02, batch 16, shortest edge 640..800): 53.6 box
AP, 64.0 keypoint AP (detectron2's numbers, its MODEL_ZOO.md).
The MSSA / MSCA rows import this recipe and change the operator.
"""
from ..common.data.coco_keypoint import dataloader
from ..common.models.keypoint_rcnn_afpn import model
from ..common.optim import AdamW as optimizer
from ..common.schedule_1x import lr_multiplier, train

model.backbone.bottom_up.freeze_at = 2  # the stem and res2 frozen, as detectron2's Keypoint R-CNN
model.backbone.aggregation = "sum"

train.images_per_epoch = None  # person images with a visible keypoint, counted at start-up
train.output_dir = "./output/COCO/keypoint_rcnn_R_50_sum_1x"
