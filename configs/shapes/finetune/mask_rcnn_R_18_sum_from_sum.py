"""Fine-tuning at shapes scale from a trained sum-up (FPN) shapes model: the sum-up control.

The path the README recommends to a user with an FPN model (configs/COCO/finetune/ on COCO), in
miniature: the study's ``finetune`` preset trains ``shapes/mask_rcnn_R_18_sum.py`` per seed, then
continues it with every operator for the same iterations. This file is the control (no new block,
the same extra training), so that a gain below is the operator's and not the extra steps'. The
recipe, shared by the four files:

* start: the trained sum-up model of the same seed (``train.init_checkpoint``, set by the study);
* the new blocks (``backbone.fpn_aggregation*``) at the shapes lr (1e-3), every loaded weight at a
  tenth of it (``afa_d2.solver.finetune_param_groups``, ``pretrained_lr_factor=0.1``), as the COCO
  fine-tuning configs; no weight decay on norms and biases;
* lr x 0.1 after two thirds of training (the COCO fine-tuning configs' 2 of 3 epochs), a short warm-up
  (the new blocks start at random or as FPN). The study sets the length (half of the base's
  iterations) with ``afa_d2.engine.fit_schedule_to_iters``, which keeps these fractions.
"""
from ...common.optim import finetune_params as _finetune_params  # "_": not a key of this config
from ..mask_rcnn_R_18_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "sum"

optimizer.params = _finetune_params
train.init_checkpoint = ""  # the trained sum-up model: the study sets it per seed
train.epochs = 3
train.eval_period_epochs = 3
lr_multiplier.decay_epochs = [2]
lr_multiplier.warmup_iters = 50
train.output_dir = "./output/shapes/finetune/mask_rcnn_R_18_sum_from_sum"
