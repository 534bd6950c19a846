"""afa_d2: attention-based feature aggregation (MSSA / MSCA) for detectron2.

``import afa_d2`` is all a user needs: it applies the workarounds the installed detectron2
needs (:mod:`afa_d2.compat`, first, before any detectron2 module loads), then registers the
backbones (``BACKBONE_REGISTRY``) and the built-in datasets (``DatasetCatalog``), and puts MS-Att on
the host's measured CPU kernels (:func:`afa_d2.execution.install`).
"""
from . import compat as _compat

_compat.apply()

from . import data as _data  # noqa: E402,F401  (only registration)
from . import evaluation  # noqa: E402,F401
from . import modeling  # noqa: E402,F401  (registers the backbones)
from .config import add_afa_config  # noqa: E402,F401
from .execution import install as _install_kernels  # noqa: E402

_install_kernels()

__version__ = "0.1.0"
