"""The CPU execution layer: how a built model runs fast on this host, kept out of the model code.

* :mod:`.kernels`: the per-host measured choice between two kernels for MS-Att's large products (and the
  RoI heads' FC layers and 3x3 convolutions), with its probe and disk cache;
* :mod:`.runtime`: the process set-up (allocator, threads) and :func:`~.runtime.prepare_for_cpu_inference`,
  which puts the RoI heads on threaded RoIAlign / NMS and the measured kernels.

:func:`install` makes every MS-Att block of the process use the measured kernels; ``import afa_d2`` calls it
(docs/DESIGN.md, "Layers"). ``modeling`` never imports this package.
"""
from afa_d2.modeling.tokens import TokenKernels, use_kernels

from . import kernels

__all__ = ["install"]


def install() -> TokenKernels:
    """MS-Att's token linears and attention on the host's measured kernels (:mod:`.kernels`, which falls back to
    the plain ops wherever its kernels do not apply); returns the kernels that were in use."""
    return use_kernels(TokenKernels(token_linear=kernels.token_linear, attend=kernels.attend))
