"""Panoptic FPN R-50, COCO 2017, 12 epochs, sum: the base of the Panoptic FPN R-50 rows.

Not in the paper (docs/DESIGN.md, "Beyond the paper's two detectors"). The paper's recipe (AdamW lr 1e-4, betas
(0.9, 0.99), weight decay 0.05, total batch 8, 12 epochs with lr x 0.1 at epochs 8 and 11, shortest edge 800)
with Panoptic FPN's own settings otherwise: detectron2's instance heads (Mask R-CNN) and semantic FPN head on
p2..p5 (54 classes, loss weight 0.5), images without instances kept, stem and res2 frozen. The pyramid: p2..p5
with the operator, p6 a max-pool of p5.

detectron2's Panoptic FPN R-50 1x (its recipe: SGD lr 0.02, batch 16, shortest edge 640..800): 37.6 box AP,
34.7 mask AP, 39.4 PQ (detectron2's numbers, its MODEL_ZOO.md).
The MSSA / MSCA rows import this recipe and change the operator.
"""
from ..common.data.coco_panoptic import dataloader
from ..common.models.panoptic_fpn_afpn import model
from ..common.optim import AdamW as optimizer
from ..common.schedule_1x import lr_multiplier, train

model.backbone.bottom_up.freeze_at = 2  # the stem and res2 frozen, as detectron2's Panoptic FPN
model.backbone.aggregation = "sum"

train.images_per_epoch = None  # all of coco_2017_train (118,287 images: stuff is labelled everywhere), counted at start-up
train.output_dir = "./output/COCO/panoptic_fpn_R_50_sum_1x"
