"""Table 2, row "CasMRCN-MSSA": Cascade Mask R-CNN R-50 MSSA on COCO test-dev (box AP 43.5 in the paper).

test-dev has no public annotations: evaluation writes ``coco_instances_results.json`` into
``train.output_dir`` for the COCO server (zip it and upload it). Evaluate the weights trained by
the Table 1 row::

    python train_net.py --config-file configs/COCO/cascade_mask_rcnn_R_50_mssa_1x_test_dev.py --eval-only
"""
from .cascade_mask_rcnn_R_50_mssa_1x import dataloader, lr_multiplier, model, optimizer, train

# The final weights of the Table 1 row (same recipe, trained on coco_2017_train).
train.init_checkpoint = train.output_dir + "/model_final.pth"
train.output_dir = "./output/COCO/cascade_mask_rcnn_R_50_mssa_1x_test_dev"

dataloader.test.dataset.names = "coco_2017_test-dev"
dataloader.evaluator.output_dir = "${...train.output_dir}"  # where the results file is written
