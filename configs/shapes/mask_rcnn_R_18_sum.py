"""Small-scale Mask R-CNN on the built-in ``shapes`` dataset, sum-up (FPN) aggregation.

The recipe of every ``configs/shapes`` file (the others import it and change a few names):
CPU-sized, trained from scratch, so it departs from the paper's recipe on purpose (docs/DESIGN.md, "The recipe"):

- bottom-up: a ResNet-18 at half width (32-64-128-256 channels) with GroupNorm, trainable
  (FrozenBN at random init explodes, and ImageNet weights cannot be downloaded here);
- pyramid and heads at 64 channels (the paper's 256 on COCO), lighter RoI heads
  (box head 2 x 256 fc, mask head one conv of 64 channels, 64 RoIs an image, RoIAlign
  with one sample a bin), half of detectron2's RPN proposals in training;
- images resized to shortest edge 192 (see common/data/shapes.py), RPN anchors halved
  (16..256 px instead of 32..512);
- total batch 2, AdamW at lr 1e-3 (the paper's 1e-4 is too slow from scratch in a CPU
  budget), the paper's other optimizer settings; 4 epochs with the lr decays at 0.85 and 0.95
  of training (the paper's 8/12 and 11/12 end the high lr too early for a model trained from
  scratch for about a thousand steps; see docs/shapes_recipe.md).

Iterations: shapes_train has 2000 images; 4 ep = 4 * ceil(2000 / 2) = 4000 iters at batch 2,
lr x 0.1 at iterations 3400 and 3800 (about 1 hour on 2 CPU cores; the demo sizes a shorter
schedule to its time budget, keeping these fractions).
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

from ..common.data.shapes import dataloader
from ..common.models.mask_rcnn_afpn import model
from ..common.optim import AdamW as optimizer
from ..common.schedule_1x import lr_multiplier, train

# ResNet-18 layout (2 BasicBlocks per stage) at half width, GroupNorm(32 groups).
model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=32, norm="GN"),
    stages=[
        L(ResNet.make_stage)(
            block_class=BasicBlock,
            num_blocks=2,
            stride_per_block=[stride, 1],
            in_channels=in_channels,
            out_channels=out_channels,
            norm="GN",
        )
        for stride, in_channels, out_channels in [(1, 32, 32), (2, 32, 64), (2, 64, 128), (2, 128, 256)]
    ],
    out_features=["res2", "res3", "res4", "res5"],
)
model.backbone.aggregation = "sum"
model.backbone.out_channels = 64

# Heads read the pyramid's channels (absolute references: the cascade config moves the box head
# into a list, one level deeper).
model.proposal_generator.head.in_channels = "${...backbone.out_channels}"
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
# (train, test): half of detectron2's for training. With RoIAlign's single sample a bin (below), a
# step takes 0.79x the time (measured side by side on 2 cores: 0.331 s against 0.419 s).
model.proposal_generator.pre_nms_topk = (500, 500)
model.proposal_generator.post_nms_topk = (250, 300)
model.roi_heads.num_classes = 13  # 10 shapes + 3 context markers
# 64 RoIs an image (a quarter positive at most) and RoIAlign with one sample a bin (the Mask R-CNN
# paper found the count of sampling points of little effect; detectron2's default adapts it to
# the box size, 2x2 and more): torchvision's CPU RoIAlign backward, single-threaded, was 18% of a
# step at 2x2 samples. With 64 RoIs and 2x2 samples a step took 0.39 s instead of 0.51 s.
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_pooler.sampling_ratio = 1
model.roi_heads.mask_pooler.sampling_ratio = 1
model.roi_heads.box_head.input_shape = L(ShapeSpec)(
    channels="${model.backbone.out_channels}", height=7, width=7
)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.input_shape = L(ShapeSpec)(
    channels="${model.backbone.out_channels}", height=14, width=14
)
model.roi_heads.mask_head.conv_dims = [64, 64]  # one 3x3 conv, then the 2x deconv

optimizer.lr = 1e-3
# Two images a step: on a CPU budget, more updates beat bigger batches (GroupNorm does not
# care about the batch size).
dataloader.train.total_batch_size = 2

train.init_checkpoint = ""  # from scratch
train.device = "cpu"
train.seed = 0
train.images_per_epoch = None  # counted from shapes_train at start-up (2000)
# A few epochs and a short warm-up. The decays come later than the paper's 8/12 and 11/12: at the
# demo's length (1130 iterations, `--max-iter 1130 --threads 1`), 0.85 / 0.95 gave box AP50 28.2,
# 27.8 and 26.9 against 24.8, 26.3 and 24.9 (seeds 0, 1 and 2).
train.epochs = 4
lr_multiplier.decay_epochs = [4 * 0.85, 4 * 0.95]
lr_multiplier.warmup_iters = 100
train.checkpointer.period_epochs = 1
train.eval_period_epochs = 4
train.output_dir = "./output/shapes/mask_rcnn_R_18_sum"
