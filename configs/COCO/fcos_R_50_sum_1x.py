"""FCOS R-50, COCO 2017, 12 epochs, sum: the base of the FCOS R-50 rows.

Not in the paper (docs/DESIGN.md, "Beyond the paper's two detectors"). The paper's recipe (AdamW lr 1e-4, betas
(0.9, 0.99), weight decay 0.05, total batch 8, 12 epochs with lr x 0.1 at epochs 8 and 11, shortest edge 800)
with FCOS's own settings otherwise: detectron2's FCOS head (GN), centerness, score threshold 0.2, NMS 0.6,
stem and res2 frozen, no masks read. The pyramid: p3..p5 with the operator, p6 / p7 from p5.

detectron2 ships ``COCO-Detection/fcos_R_50_FPN_1x.py`` (SGD lr 0.01, batch 16) without a published AP.
The MSSA / MSCA rows import this recipe and change the operator.
"""
from ..common.data.coco import dataloader
from ..common.models.fcos_afpn import model
from ..common.optim import AdamW as optimizer
from ..common.schedule_1x import lr_multiplier, train

dataloader.train.mapper.use_instance_mask = False  # boxes only
model.backbone.bottom_up.freeze_at = 2  # the stem and res2 frozen, as detectron2's FCOS
model.backbone.aggregation = "sum"

train.images_per_epoch = 117266
train.output_dir = "./output/COCO/fcos_R_50_sum_1x"
