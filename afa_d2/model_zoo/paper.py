"""The paper's numbers, one entry per config of its tables (COCO val 2017 unless said, 12 epochs).

Box AP, mask AP and FPS (the authors' A100s) as printed in *Attention-based Feature Aggregation*;
the values the PDF's text garbles are recovered from the printed gains (see configs/README.md).
Used to put the paper's number beside ours (``MODEL_ZOO.md``, ``tools/make_tables.py``); never a measurement
of this project.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = ["PAPER_RESULTS", "PAPER_TABLE_VALUES", "paper_table_values"]

# config name -> (table, box AP, mask AP, FPS or None)
_ROWS = {
    "COCO/cascade_mask_rcnn_R_50_sum_1x.py": ("1", 41.2, 35.9, 13.0),
    "COCO/cascade_mask_rcnn_R_50_concat_1x.py": ("1", 40.9, 35.8, 12.8),
    "COCO/cascade_mask_rcnn_R_50_mssa_1x.py": ("1", 43.3, 38.3, 11.9),
    "COCO/cascade_mask_rcnn_R_50_msca_1x.py": ("1", 43.4, 38.6, 11.9),
    "COCO/cascade_mask_rcnn_R_101_sum_1x.py": ("1", 42.9, 37.3, 10.9),
    "COCO/cascade_mask_rcnn_R_101_concat_1x.py": ("1", 42.4, 37.0, 10.0),
    "COCO/cascade_mask_rcnn_R_101_mssa_1x.py": ("1", 44.4, 39.2, 9.6),
    "COCO/cascade_mask_rcnn_R_101_msca_1x.py": ("1", 44.3, 39.0, 9.6),
    "COCO/cascade_mask_rcnn_R_50_mssa_1x_test_dev.py": ("2", 43.5, None, None),
    "COCO/cascade_mask_rcnn_R_50_msca_1x_test_dev.py": ("2", 43.5, None, None),
    "COCO/mask_rcnn_R_50_sum_1x.py": ("3", 38.0, 34.4, 16.1),
    "COCO/mask_rcnn_R_50_mssa_1x.py": ("3", 38.7, 35.5, 14.8),
    "COCO/mask_rcnn_R_50_msca_1x.py": ("3", 38.5, 35.3, 14.8),
    "LVIS/mask_rcnn_R_50_sum_1x.py": ("3", 22.5, 21.7, 14.0),
    "LVIS/mask_rcnn_R_50_mssa_1x.py": ("3", 24.1, 24.1, 12.3),
    "LVIS/mask_rcnn_R_50_msca_1x.py": ("3", 24.4, 24.4, 12.3),
    "COCO/cascade_mask_rcnn_R_50_mssa_p5_1x.py": ("4", 42.5, 37.8, None),
    "COCO/cascade_mask_rcnn_R_50_mssa_p4p5_1x.py": ("4", 42.7, 38.0, None),
    "COCO/cascade_mask_rcnn_R_50_mssa_p3p4p5_1x.py": ("4", 43.1, 38.3, None),
    "COCO/cascade_mask_rcnn_R_50_mssa_single_scale_1x.py": ("5", 43.2, 38.1, 13.0),
    "COCO/cascade_mask_rcnn_R_50_mssa_adaptive_1x.py": ("5", 43.1, 38.2, 14.1),
    "COCO/cascade_mask_rcnn_swin_T_sum_1x.py": ("6", 48.0, 41.5, None),
    "COCO/cascade_mask_rcnn_swin_T_mssa_1x.py": ("6", 48.8, 42.3, 9.8),
}

PAPER_RESULTS: Dict[str, Dict[str, Optional[float]]] = {
    name: {"table": table, "box_AP": box, "mask_AP": mask, "fps": fps}
    for name, (table, box, mask, fps) in _ROWS.items()
}


#: Where a table prints other numbers for a config than its PAPER_RESULTS row (its Table 1 / 3 row):
#: (table number, config) -> (box AP, mask AP, FPS). The paper's Table 4 all-four row and Table 5
#: multi-scale row print 43.4 / 38.6 for Cascade R-50 MSSA, its Table 1 43.3 / 38.3.
PAPER_TABLE_VALUES: Dict[Tuple[str, str], Tuple[Optional[float], Optional[float], Optional[float]]] = {
    ("4", "COCO/cascade_mask_rcnn_R_50_mssa_1x.py"): (43.4, 38.6, None),
    ("5", "COCO/cascade_mask_rcnn_R_50_mssa_1x.py"): (43.4, 38.6, 11.9),
}


def paper_table_values(table: str, config: str) -> Dict[str, Optional[float]]:
    """The paper's box AP, mask AP and FPS for ``config`` as its table ``table`` prints them
    (None where the paper has no number)."""
    if (table, config) in PAPER_TABLE_VALUES:
        box, mask, fps = PAPER_TABLE_VALUES[(table, config)]
        return {"box_AP": box, "mask_AP": mask, "fps": fps}
    row = PAPER_RESULTS.get(config)
    if row is None:
        return {"box_AP": None, "mask_AP": None, "fps": None}
    return {"box_AP": row["box_AP"], "mask_AP": row["mask_AP"], "fps": row["fps"]}
