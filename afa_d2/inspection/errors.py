"""Bad input to the inspection tools: the message says what and how to fix it, and the commands print it as one
line (:func:`afa_d2.cli.one_line`)."""

__all__ = ["AnalysisInputError", "RunError", "VisualizeInputError"]


class AnalysisInputError(ValueError):
    """A bad input to the analysis or visualization tools; the message says what and how to fix it."""


class VisualizeInputError(AnalysisInputError):
    """A bad input to the visualization tool (one line: what, and how to fix it)."""


class RunError(ValueError):
    """A run folder that cannot be read or placed, or a markdown file whose generated blocks are broken (one line:
    which, why, and how to fix it)."""
