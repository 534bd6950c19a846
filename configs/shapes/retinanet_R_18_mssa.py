"""Small-scale RetinaNet on ``shapes`` with MSSA on p3..p5 (the recipe of retinanet_R_18_sum.py)."""
from .retinanet_R_18_sum import dataloader, lr_multiplier, model, optimizer, train

model.backbone.aggregation = "mssa"

train.output_dir = "./output/shapes/retinanet_R_18_mssa"
