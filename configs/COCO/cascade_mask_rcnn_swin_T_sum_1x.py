"""Table 6, row "Sum-up, Swin-T": Cascade Mask R-CNN with a timm Swin-T bottom-up, COCO, 12 epochs.

Paper: 48.0 box AP / 41.5 mask AP. The MSSA row imports this recipe.

ImageNet weights: SwinBottomUp never downloads; set ``train.init_checkpoint`` to a checkpoint
whose keys are ``backbone.bottom_up.model.*`` (timm's Swin-T ``features_only`` state dict with
that prefix). From scratch, leave it empty (LayerNorm is trainable, nothing to switch).
"""
from ..common.models.swin_t import bottom_up, pixel_mean, pixel_std
from .cascade_mask_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up = bottom_up  # in_features = "${.bottom_up.out_features}" = res2..res5
model.pixel_mean = pixel_mean
model.pixel_std = pixel_std
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"  # the test mapper refers to it

# No weight decay on Swin's relative position bias tables (its recipe), nor on norms and biases.
optimizer.params.overrides = {"relative_position_bias_table": {"weight_decay": 0.0}}

train.init_checkpoint = ""
train.output_dir = "./output/COCO/cascade_mask_rcnn_swin_T_sum_1x"
