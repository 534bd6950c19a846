"""The operator study: every arm trained with several seeds under one recipe, paired by seed, with
confidence intervals (``tools/study.py``; docs/DESIGN.md, "The operator study").

- :mod:`.design`: arms, the recipe, the presets for the paper's tables;
- :mod:`.runs`: one run's config, fingerprint, folder and worker;
- :mod:`.runner`: the resumable loop and ``study.json``;
- :mod:`.stats`: intervals and paired tests (scipy.stats);
- :mod:`.report`, :mod:`.publish`: the table, the sentences, the figure, and where they are committed;
- :mod:`.cli`: the command line.
"""
from .design import PRESETS, Arm, Recipe, StudyDesign, StudyDesignError, custom_study, preset
from .runner import load_study, run_study
from .runs import StudyRunError
from .stats import paired, study_statistics, summarize

__all__ = ["PRESETS", "Arm", "Recipe", "StudyDesign", "StudyDesignError", "StudyRunError", "custom_study",
           "load_study", "paired", "preset", "run_study", "study_statistics", "summarize"]
