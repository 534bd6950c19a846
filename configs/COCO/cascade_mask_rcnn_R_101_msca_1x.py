"""Table 1, row "R-101 msca": Cascade Mask R-CNN, ResNet-101, COCO 2017, 12 epochs.

Paper: 44.3 box AP / 39.0 mask AP at 9.6 FPS.
The R-50 row with a ResNet-101 bottom-up and its ImageNet weights.
"""
from .cascade_mask_rcnn_R_50_msca_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "./output/COCO/cascade_mask_rcnn_R_101_msca_1x"
