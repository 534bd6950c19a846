"""afa_d2: attention-based feature aggregation (MSSA / MSCA) for detectron2."""
from . import compat as _compat

_compat.apply()

__version__ = "0.1.0"
