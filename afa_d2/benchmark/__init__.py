"""Side-by-side cost of the aggregation operators (docs/DESIGN.md, "What is measured"): ``python tools/benchmark.py``.

For each operator of the registry (:data:`~afa_d2.modeling.aggregation.AGGREGATION_OPS`, all by default),
on the same input, in one run, one module a mode:

* :mod:`.counting`: parameters of the neck (AttentionFPN without its bottom-up) and of the whole model, and
  FLOPs counted by fvcore with a handle for ``aten::scaled_dot_product_attention`` (the model analysis
  counts with it too);
* :mod:`.inference`: inference latency of the neck alone (on precomputed bottom-up features) and of the
  whole detector (``--model``, :mod:`.models`), batch 1; each also as a ratio to the baseline operator, and
  the neck's achieved GFLOP/s, as a share of this host's 3x3 convolution rate, and each attention model's
  floor (:mod:`.kernels`);
* :mod:`.training` (``--train``): the training step's time and peak memory, each variant in fresh
  subprocesses so the peaks do not mix; ``--train-config <LazyConfig>`` measures on that config's model,
  optimizer and data; ``--train-only`` skips inference;
* with ``--reference``: "<op>:ref" beside each attention operator, the same model (same weights) run on the
  straightforward path (:func:`~afa_d2.modeling.aggregation.use_reference_path`), the before/after of the
  fast path; with ``--checkpoint-mlp`` (and ``--train``): "<op>:ckpt", trained with each MS-Att's DW-MLP
  recomputed in backward (``checkpoint_mlp=True``), memory traded for time (:mod:`.variants`).

Other modes: ``--kernels`` (:mod:`.kernels`: the kernels behind the neck figures, each product every way
afa_d2 computes it, on the R-CNNs' shapes: p2 and the RoI heads; refused for RetinaNet and FCOS),
``--profile N`` (:mod:`.profiling`: where one inference spends its time, op by op, with the library behind
each) and ``--vs-stock`` (:mod:`.stock`: stock detectron2 eager against afa_d2's CPU settings, two worker
processes side by side); every mode but ``--kernels`` takes any ``--model``. Timing is interleaved
(:mod:`.timing`); :mod:`.report` prints and saves, :mod:`.cli` parses the flags and runs the mode.
"""
from .cli import main, parse_args
from .counting import NeckOnly, count_params, flop_analysis, sdpa_flop_jit
from .inference import measure_inference
from .kernels import _finest_attention, add_floor, format_kernels, measure_kernels
from .models import MODELS, ONE_STAGE, _build, _image, _stock_fpn_model, build_model, shared_state_dict
from .profiling import KERNEL_LIBRARY, format_profile, profile_inference
from .report import add_ratios, build_info, format_build_info, format_table
from .stock import SETTINGS, format_vs_stock, measure_vs_stock, serve
from .timing import time_interleaved
from .training import _MEMORY_WORKER_ENV, _rss_bytes, measure_train_step, measure_training
from .variants import (
    ATTENTION_OPS, BASE, CKPT_SUFFIX, OPS, PRECISION_SEP, REF_SUFFIX, split_variant, variant_names, variant_precision,
)

__all__ = [
    "ATTENTION_OPS", "BASE", "CKPT_SUFFIX", "KERNEL_LIBRARY", "MODELS", "NeckOnly", "ONE_STAGE", "OPS", "PRECISION_SEP",
    "REF_SUFFIX", "SETTINGS", "add_floor", "add_ratios", "build_info", "build_model", "count_params", "flop_analysis",
    "format_build_info", "format_kernels", "format_profile", "format_table", "format_vs_stock", "main",
    "measure_inference", "measure_kernels", "measure_train_step", "measure_training", "measure_vs_stock",
    "parse_args", "profile_inference", "sdpa_flop_jit", "serve", "shared_state_dict", "split_variant",
    "time_interleaved", "variant_names", "variant_precision",
    # used by the tests, and by the workers' own check of the memory measure
    "_MEMORY_WORKER_ENV", "_build", "_finest_attention", "_image", "_rss_bytes", "_stock_fpn_model",
]
