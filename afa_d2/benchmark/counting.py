"""Parameters and FLOPs of a neck and of its whole detector (docs/DESIGN.md, "What is measured").

FLOPs are counted by fvcore (one multiply-add = one flop, detectron2's convention), with a handle for
``aten::scaled_dot_product_attention`` (fvcore has none and would skip attention): it counts the two
matmuls, ``Q K^T`` and ``softmax(.) V``. The model analysis (``tools/analyze_model.py``) counts with
:func:`flop_analysis` too.
"""
from typing import Any, Dict, List

import torch
from torch import nn

from afa_d2.modeling.inference import TraceableInference


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: ``Q K^T`` plus ``A V`` MACs.

    q: (..., N_q, d), k: (..., N_k, d), v: (..., N_k, d_v) -> (prod(...) * N_q * N_k * (d + d_v)).
    """
    import math

    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(max(a, b) for a, b in zip(q[:-2], k[:-2]))
    return int(batch * q[-2] * k[-2] * (q[-1] + v[-1]))


def flop_analysis(module: nn.Module, inputs: tuple):
    """fvcore ``FlopCountAnalysis`` with the attention handle, warnings off."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


class NeckOnly(nn.Module):
    """AttentionFPN.aggregate with tensor inputs, for tracing."""

    def __init__(self, neck: nn.Module):
        super().__init__()
        self.neck = neck

    def forward(self, *features: torch.Tensor):
        out = self.neck.aggregate(dict(zip(self.neck.in_features, features)))
        return tuple(out.values())


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_costs(model: nn.Module, feats: Dict[str, torch.Tensor], image: torch.Tensor,
                skip_model_flops: bool = False) -> Dict[str, int]:
    """The parameters of ``model``'s neck (its backbone without the bottom-up) and of the whole model, the
    FLOPs of the neck on the bottom-up features ``feats`` and (unless ``skip_model_flops``) of the whole
    model's inference on ``image``, each with the part of them that is attention ("*_sdpa_flops")."""
    neck = model.backbone
    res = {"neck_params": count_params(neck) - count_params(neck.bottom_up), "model_params": count_params(model)}
    feat_list = tuple(feats[f].float() for f in neck.in_features)
    neck_flops = flop_analysis(NeckOnly(neck).eval(), feat_list)
    res["neck_flops"] = int(neck_flops.total())
    res["neck_sdpa_flops"] = int(neck_flops.by_operator().get("scaled_dot_product_attention", 0))
    if not skip_model_flops:
        model_flops = flop_analysis(TraceableInference(model).eval(), (image,))
        res["model_flops"] = int(model_flops.total())
        res["model_sdpa_flops"] = int(model_flops.by_operator().get("scaled_dot_product_attention", 0))
    return res
