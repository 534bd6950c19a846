"""afa_d2.tools.benchmark: the attention FLOPs handle, and one tiny side-by-side run."""
import json

import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import torch
import torch.nn.functional as F

from afa_d2.modeling import MSAttention
from afa_d2.tools import benchmark


class _SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_handle_counts_both_matmuls():
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    from fvcore.nn import FlopCountAnalysis

    plain = FlopCountAnalysis(_SDPA(), (q, k, v))
    plain.unsupported_ops_warnings(False)
    assert plain.total() == 0  # fvcore alone skips attention: the handle is needed
    counted = benchmark.flop_analysis(_SDPA(), (q, k, v))
    assert counted.by_operator()["scaled_dot_product_attention"] == 2 * 4 * 10 * 6 * (8 + 8)
    assert counted.total() == 2 * 4 * 10 * 6 * 16


def test_ms_attention_flops_include_attention():
    attn = MSAttention(16, 4, pool_stride=2).eval()
    x = torch.randn(1, 16, 8, 8)
    flops = benchmark.flop_analysis(attn, (x,))
    n_q, n_kv = 64, 4 * 4 + 2 * 2
    assert flops.by_operator()["scaled_dot_product_attention"] == n_q * n_kv * 16 * 2
    assert flops.total() > flops.by_operator()["scaled_dot_product_attention"]


def test_tiny_side_by_side_run(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = benchmark.main([
        "--ops", "sum", "mssa", "--height", "128", "--width", "160", "--iters", "1", "--warmup", "0",
        "--threads", "2", "--detections-per-image", "5", "--proposals", "50", "--json", str(out),
    ])
    table = capsys.readouterr().out
    saved = json.loads(out.read_text())["results"]
    assert set(saved) == {"sum", "mssa"} and saved["mssa"]["neck_params"] == results["mssa"]["neck_params"]
    s, m = saved["sum"], saved["mssa"]
    assert s["neck_params"] == 3344384 and m["neck_params"] == 3344384 + 4 * 532736
    assert m["model_params"] - s["model_params"] == 4 * 532736
    assert s["neck_sdpa_flops"] == 0 and m["neck_sdpa_flops"] > 0
    assert m["model_sdpa_flops"] == m["neck_sdpa_flops"]
    assert m["neck_flops"] > s["neck_flops"] and m["model_flops"] > s["model_flops"]
    assert m["neck_flops_ratio"] == m["neck_flops"] / s["neck_flops"] and s["neck_flops_ratio"] == 1.0
    assert s["detections"] == m["detections"] == 5
    assert s["neck_latency_s"] > 0 and m["model_latency_s"] > 0
    assert "mssa" in table and "(x1.00)" in table and "neck GFLOPs" in table


def test_reference_variants_and_interleaved_timing():
    assert benchmark.variant_names(["sum", "mssa", "concat", "msca"], True) == [
        "sum", "mssa", "mssa:ref", "concat", "msca", "msca:ref"]
    assert benchmark.variant_names(["sum", "mssa"], False) == ["sum", "mssa"]
    assert benchmark.split_variant("msca:ref") == ("msca", True)
    assert benchmark.split_variant("msca") == ("msca", False)
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = benchmark.time_interleaved(fns, iters=3, warmup=1, device=torch.device("cpu"))
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warmup, then rotated
    args = benchmark.parse_args(["--reference", "--train-rounds", "3"])
    assert args.reference and args.train_rounds == 3
