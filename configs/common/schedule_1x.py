"""The paper's 1x schedule, in epochs (docs/DESIGN.md, "The recipe"): 12 epochs, lr x 0.1 at epochs 8 and 11,
linear warm-up over the first 1000 iterations; plus the ``train`` options of afa_d2.engine.

Epochs become iterations at start-up (``afa_d2.engine.schedule.resolve_epoch_schedule``) from
``train.images_per_epoch`` and the total batch (``dataloader.train.total_batch_size``), so the
schedule holds on any number of GPUs::

    iters/epoch = ceil(images_per_epoch / total_batch)
    COCO 2017 train: ceil(117266 / 8) = 14659 iters/epoch -> max_iter = 12 * 14659 = 175908,
                     lr x 0.1 at 8 * 14659 = 117272 and 11 * 14659 = 161249
    LVIS v1 train:   ceil(99388 / 8)  = 12424 iters/epoch -> max_iter = 12 * 12424 = 149088,
                     lr x 0.1 at 8 * 12424 = 99392 and 11 * 12424 = 136664

``train.max_iter`` and ``lr_multiplier.iters_per_epoch`` are left ``None`` here: they are
filled by ``resolve_epoch_schedule``. Change the length with ``train.epochs`` (the decay epochs
in ``lr_multiplier.decay_epochs``), never with ``train.max_iter``.
"""
from afa_d2.engine.schedule import epoch_lr_multiplier
from detectron2.config import LazyCall as L

lr_multiplier = L(epoch_lr_multiplier)(
    epochs="${train.epochs}",
    decay_epochs=[8, 11],
    gamma=0.1,
    warmup_iters=1000,
    warmup_factor=0.001,
    iters_per_epoch=None,  # filled by resolve_epoch_schedule
)

train = dict(
    output_dir="./output",
    # The paper's init: ImageNet ResNet-50 (MSRA weights, detectron2's format for FrozenBN).
    init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    device="cuda",
    seed=-1,
    epochs=12,
    images_per_epoch=117266,  # COCO 2017 train images with annotations; None: counted at start-up
    max_iter=None,  # filled by resolve_epoch_schedule: epochs * ceil(images / total batch)
    amp=dict(enabled=False),
    clip_gradients=dict(enabled=False, clip_type="full_model", clip_value=1.0, norm_type=2.0),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period_epochs=1, max_to_keep=3),
    eval_period_epochs=12,
    log_period=20,
)
