"""Table 1, row "R-101 concat": Cascade Mask R-CNN, ResNet-101, COCO 2017, 12 epochs.

Paper: 42.4 box AP / 37.0 mask AP at 10.0 FPS.
The R-50 row with a ResNet-101 bottom-up and its ImageNet weights.
"""
from .cascade_mask_rcnn_R_50_concat_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "./output/COCO/cascade_mask_rcnn_R_101_concat_1x"
