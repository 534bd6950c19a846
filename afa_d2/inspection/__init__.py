"""Looking inside models: the inspection tools, one mode a file.

* :mod:`.predictions`: ground truth and each checkpoint's predictions side by side (the paper's Fig. 3);
* :mod:`.attention`: every MS-Att block's attention over its pooled key/value tokens for query points,
  drawn by :mod:`.drawing`;
* :mod:`.energy`: the energy of each pyramid level per checkpoint;
* :mod:`.analysis`: FLOPs (attention counted; per module and per pyramid level), activations, parameters;
* :mod:`.tables`: the paper's tables from runs' output folders;
* :mod:`.models` (models by spec, images), :mod:`.pyramid` (the pyramid in a detector), :mod:`.errors`;
* :mod:`.cli`: the commands ``tools/visualize.py``, ``tools/analyze_model.py``, ``tools/make_tables.py``.
"""
from .analysis import ModelAnalysis, analyze_model
from .attention import attention_maps
from .cli import analyze_main, make_tables_main, visualize_main
from .drawing import draw_attention, draw_attention_overview
from .energy import draw_energy, pyramid_energy
from .errors import AnalysisInputError, VisualizeInputError
from .models import load_model
from .predictions import draw_predictions
from .tables import make_tables

__all__ = [
    "AnalysisInputError",
    "ModelAnalysis",
    "VisualizeInputError",
    "analyze_main",
    "analyze_model",
    "attention_maps",
    "draw_attention",
    "draw_attention_overview",
    "draw_energy",
    "draw_predictions",
    "load_model",
    "make_tables",
    "make_tables_main",
    "pyramid_energy",
    "visualize_main",
]
