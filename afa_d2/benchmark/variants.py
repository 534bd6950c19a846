"""What a benchmark run measures, by name: the operators of the registry and their variants.

A variant is an operator of :data:`~afa_d2.modeling.aggregation.AGGREGATION_OPS` ("<op>"), the same model on
its straightforward path ("<op>:ref"), trained with its DW-MLP recomputed in backward ("<op>:ckpt"), or run
under autocast in another precision ("<op>@bf16", :mod:`afa_d2.engine.precision`).
"""
from typing import List, Sequence

from afa_d2.modeling.aggregation import AGGREGATION_OPS, attention_operators, baseline_operator

OPS = tuple(AGGREGATION_OPS)  # the registry's order: the baseline first
ATTENTION_OPS = tuple(attention_operators())
BASE = baseline_operator()
REF_SUFFIX = ":ref"
CKPT_SUFFIX = ":ckpt"  # MSAttention(checkpoint_mlp=True): a training-memory option, same operator
PRECISION_SEP = "@"  # "<op>@bf16": the same model run under autocast in bf16 (afa_d2.engine.precision)


def variant_names(ops: Sequence[str], reference: bool, checkpoint_mlp: bool = False,
                  precisions: Sequence[str] = ("fp32",)) -> List[str]:
    """The variants measured: ``ops``, plus after each attention op "<op>:ref" with ``reference``
    and "<op>:ckpt" (training only) with ``checkpoint_mlp``; then ``ops`` again for each precision but
    fp32, as "<op>@<precision>" (inference only)."""
    names: List[str] = []
    for op in ops:
        names.append(op)
        if reference and op in ATTENTION_OPS:
            names.append(op + REF_SUFFIX)
        if checkpoint_mlp and op in ATTENTION_OPS:
            names.append(op + CKPT_SUFFIX)
    for precision in precisions:
        if precision != "fp32":
            names += [op + PRECISION_SEP + precision for op in ops]
    return names


def variant_precision(name: str) -> str:
    """"<op>@bf16" -> "bf16"; any other variant -> "fp32"."""
    return name.split(PRECISION_SEP, 1)[1] if PRECISION_SEP in name else "fp32"


def split_variant(name: str):
    """"<op>:ref" -> (op, True); "<op>", "<op>:ckpt" or "<op>@bf16" -> (op, False)."""
    name = name.split(PRECISION_SEP, 1)[0]
    if name.endswith(CKPT_SUFFIX):
        name = name[: -len(CKPT_SUFFIX)]
    if name.endswith(REF_SUFFIX):
        return name[: -len(REF_SUFFIX)], True
    return name, False


def in_precision(name: str, precision: str) -> str:
    """A variant's or yardstick's name in ``precision`` ("reference: 3x3 conv@bf16"; fp32's keeps its plain
    name)."""
    return name if precision == "fp32" else name + PRECISION_SEP + precision
