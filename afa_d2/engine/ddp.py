"""DistributedDataParallel for GPU and CPU (gloo) models."""
from __future__ import annotations

import torch
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["create_ddp_model"]


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    """``DistributedDataParallel(model)`` when there are several processes, else ``model``.

    Like detectron2's, but a CPU model gets ``device_ids=None`` (DDP refuses device ids for
    CPU modules; this is the gloo case).
    """
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs:
        on_cuda = any(p.is_cuda for p in model.parameters())
        kwargs["device_ids"] = [comm.get_local_rank()] if on_cuda else None
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


