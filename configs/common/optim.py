"""AdamW as in the paper (docs/DESIGN.md, "The recipe"): lr 1e-4, betas (0.9, 0.99), no weight decay on norms and biases.

Weight decay: the paper prints 0.5, which we read as a typo for 0.05 (the usual AdamW
detection recipe, e.g. Swin / PVTv2 detectors); 0.05 is the default here. To follow the paper
literally, override ``optimizer.weight_decay=0.5``.
"""
import torch

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from afa_d2.solver import finetune_param_groups

AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        # params.model is set to the model object by afa_d2.engine before instantiating.
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.99),
    weight_decay=0.05,  # the paper's "0.5" read as 0.05, see above
)

# Fine-tuning from a checkpoint that lacks the operator's blocks (configs/COCO/finetune/, configs/shapes/finetune/):
# those blocks at the optimizer's lr, every loaded weight at a tenth of it; no decay on norms and biases.
# Import it under a leading "_" (LazyConfig keeps every other dict a config file holds as a key of the config),
# then ``optimizer.params = _finetune_params``.
finetune_params = L(finetune_param_groups)(
    base_lr="${..lr}",
    new_prefixes=["backbone.fpn_aggregation"],
    pretrained_lr_factor=0.1,
    weight_decay="${..weight_decay}",
    weight_decay_norm=0.0,
    weight_decay_bias=0.0,
)
