"""Fine-tuning from detectron2's Mask R-CNN R-50 FPN 1x (COCO): the sum-up control.

Not a paper row: the realistic start for a user without 8 GPUs for a day. detectron2's checkpoint
(``model_final_a54504.pkl``, 38.6 box AP / 35.2 mask AP in its MODEL_ZOO.md) loads into every
operator's model: ``AttentionFPN`` keeps FPN's module names, so every shared weight loads and only
an operator's own blocks are new (``afa_d2.model_zoo.convert``). This file is the control: the
same short schedule with no new block, so that a gain of MSSA / MSCA / concat below is theirs and
not the extra training's. The recipe, shared by the four files:

* 3 epochs at total batch 8, lr x 0.1 after epoch 2 (two thirds of training, as the 1x schedule's
  first decay at 8 of 12 epochs), 500 warm-up iterations (the new blocks start at random or as FPN);
* AdamW; the new blocks (``backbone.fpn_aggregation*``) at lr 1e-4, everything loaded from the
  checkpoint at 1e-5 (``afa_d2.solver.finetune_param_groups``, ``pretrained_lr_factor=0.1``); no
  weight decay on norms and biases; the stem and res2 stay frozen and the bottom-up keeps its
  FrozenBN, as in the checkpoint's training (detectron2's ``freeze_at=2``);
* the model is detectron2's Mask R-CNN R-50 FPN config with FPN replaced (MSRA R-50: BGR, pixel
  std 1, ``stride_in_1x1=True``), so the checkpoint fits it.

    3 ep = 43977 iters * 8 images/iter / 117266 images/ep (3 * ceil(117266 / 8), resolved at start-up)
    lr x 0.1 at 2 * 14659 = 29318 iters
"""
from ...common.optim import finetune_params as _finetune_params  # "_": not a key of this config
from ..mask_rcnn_R_50_sum_1x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "sum"

optimizer.params = _finetune_params
train.init_checkpoint = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x/137260431/model_final_a54504.pkl"
train.epochs = 3
train.eval_period_epochs = 3
lr_multiplier.decay_epochs = [2]
lr_multiplier.warmup_iters = 500
train.output_dir = "./output/COCO/finetune/mask_rcnn_R_50_sum_from_fpn"
