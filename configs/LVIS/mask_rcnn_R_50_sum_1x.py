"""Table 3, row "Sum-up, LVIS": Mask R-CNN, ResNet-50, LVIS v1, 12 epochs.

Paper: 22.5 box AP / 21.7 mask AP at 14.0 FPS. The other Table 3 LVIS rows import this recipe.
"""
from ..common.data.lvis import dataloader
from ..common.models.mask_rcnn_afpn import model
from ..common.optim import AdamW as optimizer
from ..common.schedule_1x import lr_multiplier, train

model.backbone.aggregation = "sum"

# LVIS v1: 1203 categories; its evaluation protocol keeps up to 300 detections per image
# down to score 1e-4 (the LVIS API's max_dets=300), unlike COCO's 100.
model.roi_heads.num_classes = 1203
model.roi_heads.box_predictor.test_score_thresh = 0.0001
model.roi_heads.box_predictor.test_topk_per_image = 300

# 12 ep = 149088 iters * 8 images/iter / 99388 images/ep (resolved at start-up)
train.images_per_epoch = 99388  # LVIS v1 train images with annotations
train.output_dir = "./output/LVIS/mask_rcnn_R_50_sum_1x"
