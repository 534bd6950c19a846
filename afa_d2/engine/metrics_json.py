"""The one reader of a run's ``metrics.json`` (detectron2's ``JSONWriter`` log).

:func:`read_metrics` serves ``tools/make_tables.py``, ``tools/publish_model.py`` and the study.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List

__all__ = ["read_metrics"]

logger = logging.getLogger(__name__)


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """The rows of a run's ``metrics.json`` (detectron2's ``JSONWriter``: one JSON object per line, appended
    as the run goes), in order.

    A last line cut short (the run was killed while writing it) is left out with a warning: every row
    before it is whole. A bad line anywhere else means the file is not such a log, or was damaged.

    Raises:
        ValueError: naming the file, the line and what was expected.
    """
    with open(path) as f:
        lines = f.read().split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines[:last + 1]):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            if i == last and not lines[i + 1:]:  # no newline after it: the write was cut short
                logger.warning("%s: the last line (%d) is cut short (%s); read the %d rows before it", path,
                               i + 1, e, len(rows))
                break
            raise ValueError("{} line {} is not JSON ({}): expected one JSON object per line, as detectron2's "
                             "JSONWriter writes metrics.json".format(path, i + 1, e)) from None
        if not isinstance(row, dict):
            raise ValueError("{} line {} is a JSON {}, expected one JSON object per line, as detectron2's "
                             "JSONWriter writes metrics.json".format(path, i + 1, type(row).__name__))
        rows.append(row)
    return rows
