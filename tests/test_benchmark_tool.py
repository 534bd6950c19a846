"""afa_d2.benchmark: the attention FLOPs handle, and one tiny side-by-side run."""
import json

import pytest

import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import torch
import torch.nn.functional as F

from afa_d2.modeling import MSAttention
from afa_d2.modeling.aggregation import use_checkpoint_mlp
from afa_d2 import benchmark


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


def _main_with_json(tmp_path, capsys, argv):
    """``benchmark.main(argv + --json)``: (its return value, what it printed, the results it saved)."""
    out = tmp_path / "benchmark.json"
    results = benchmark.main(list(argv) + ["--json", str(out)])
    return results, capsys.readouterr().out, json.loads(out.read_text())["results"]


def test_tiny_side_by_side_run(tmp_path, capsys):
    results, table, saved = _main_with_json(tmp_path, capsys, [
        "--ops", "sum", "mssa", "--height", "128", "--width", "160", "--iters", "1", "--warmup", "0",
        "--threads", "2", "--detections-per-image", "5", "--proposals", "50",
    ])
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
    # the host's 3x3-conv rate is timed once among the necks, and each neck's share of it is its GFLOP/s over it
    assert s["reference_conv_gmacs_per_s"] == m["reference_conv_gmacs_per_s"] > 0
    for r in (s, m):
        assert r["neck_of_reference_conv"] == pytest.approx(r["neck_gflops_per_s"] / r["reference_conv_gmacs_per_s"])
    assert "of 3x3 conv" in table and "GMAC/s" in table
    # the floor of goal 1: sum's time plus the neck's extra multiply-adds at the best rates timed in this run
    assert "model_floor_ratio" not in s and m["attention_gmacs_per_s"] > 0
    extra = ((m["neck_flops"] - m["neck_sdpa_flops"] - s["neck_flops"]) / s["reference_conv_gmacs_per_s"]
             + m["neck_sdpa_flops"] / m["attention_gmacs_per_s"]) / 1e9
    assert m["model_floor_ratio"] == pytest.approx(1 + extra / s["model_latency_s"]) and m["model_floor_ratio"] > 1
    assert "floor" in table and "x{:.2f}".format(m["model_floor_ratio"]) in table and "the faster of SDPA" in table
    assert not any(name.startswith("floor:") for name in saved)  # its kernels are timed, not reported as variants


def test_floor_counts_attention_and_the_other_extra_work_at_their_rates():
    results = {"sum": {"neck_flops": 60e9, "neck_sdpa_flops": 0, "model_latency_s": 3.0},
               "mssa": {"neck_flops": 112e9, "neck_sdpa_flops": 16e9, "model_latency_s": 3.8},
               "concat": {"neck_flops": 72e9, "neck_sdpa_flops": 0, "model_latency_s": 3.1},
               "sum@bf16": {"neck_flops": 60e9, "neck_sdpa_flops": 0, "model_latency_s": 2.0, "precision": "bf16"},
               "mssa@bf16": {"neck_flops": 112e9, "neck_sdpa_flops": 16e9, "model_latency_s": 2.9, "precision": "bf16"}}
    benchmark.add_floor(results, conv_rate={"fp32": 100.0, "bf16": 200.0}, attention_rate={"fp32": 80.0, "bf16": 160.0})
    # 16 G of attention at 80 GMAC/s (0.2 s) + 36 G at 100 GMAC/s (0.36 s) on sum's 3.0 s
    assert results["mssa"]["model_floor_ratio"] == pytest.approx((3.0 + 0.2 + 0.36) / 3.0)
    # each precision from its own rates and its own sum-up model: 0.1 s + 0.18 s on 2.0 s
    assert results["mssa@bf16"]["model_floor_ratio"] == pytest.approx((2.0 + 0.1 + 0.18) / 2.0)
    assert results["mssa@bf16"]["attention_gmacs_per_s"] == 160.0
    assert "model_floor_ratio" not in results["sum"] and "model_floor_ratio" not in results["concat"]
    # a precision whose attention was not timed gets no floor
    del results["mssa@bf16"]["model_floor_ratio"]
    benchmark.add_floor(results, conv_rate={"fp32": 100.0, "bf16": 200.0}, attention_rate={"fp32": 80.0})
    assert "model_floor_ratio" not in results["mssa@bf16"]


def test_reference_variants_and_interleaved_timing():
    assert benchmark.variant_names(["sum", "mssa", "concat", "msca"], True) == [
        "sum", "mssa", "mssa:ref", "concat", "msca", "msca:ref"]
    assert benchmark.variant_names(["sum", "mssa"], False) == ["sum", "mssa"]
    assert benchmark.variant_names(["sum", "msca"], True, True) == ["sum", "msca", "msca:ref", "msca:ckpt"]
    assert benchmark.split_variant("msca:ckpt") == ("msca", False)
    model = torch.nn.Sequential(MSAttention(16, 4), MSAttention(16, 4))
    assert use_checkpoint_mlp(model, True) is model
    assert [m.checkpoint_mlp for m in model] == [True, True]
    use_checkpoint_mlp(model, False)
    assert [m.checkpoint_mlp for m in model] == [False, False]
    assert benchmark.split_variant("msca:ref") == ("msca", True)
    assert benchmark.split_variant("msca") == ("msca", False)
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = benchmark.time_interleaved(fns, iters=3, warmup=1, device=torch.device("cpu"))
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order == list("abc") + list("abc") + list("bca") + list("cab")  # warmup, then rotated
    args = benchmark.parse_args(["--reference", "--train-rounds", "3"])
    assert args.reference and args.train_rounds == 3


def test_table_shows_a_trained_only_variant_beside_the_timed_ones():
    """--train --checkpoint-mlp: "<op>:ckpt" is trained, never timed at inference; its inference cells read "-"."""
    timed = {"op": "sum", "neck_flops": 1e9, "neck_latency_s": 0.01, "neck_of_reference_conv": 0.5,
             "model_latency_s": 1.0, "proposals": 50, "detections": 5, "train_step_s": 2.0}
    table = benchmark.format_table({"sum": timed, "msca:ckpt": {"op": "msca:ckpt", "train_step_s": 3.0}})
    row = table.splitlines()[-1].split()
    assert row == ["msca:ckpt", "-", "-", "-", "-", "-/-", "3000.0"], table


def _ms_att_params(c):
    """One MS-Att block at C = c, mlp_ratio 2: LayerNorms 3 x 2C, q C^2 + C, kv 2C^2 + 2C, proj C^2 + C,
    DW-MLP fc1 2C^2 + 2C, dwconv 9 x 2C + 2C, fc2 2C^2 + C."""
    return 3 * 2 * c + (c * c + c) + (2 * c * c + 2 * c) + (c * c + c) + (2 * c * c + 2 * c) + (
        9 * 2 * c + 2 * c) + (2 * c * c + c)


_MS_ATT_PARAMS_64 = _ms_att_params(64)

_TINY_SHAPES_CONFIG = '''
"""The shapes recipe on a tiny shapes split (test of the benchmark's --train-config)."""
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog

from afa_d2.data import register_shapes

if "shapes_bench_train" not in DatasetCatalog.list():
    register_shapes({root!r}, prefix="shapes_bench", num_train=4, num_val=1, min_size=96, max_size=128)
_base = LazyConfig.load({base!r})
model, optimizer, train, lr_multiplier, dataloader = (
    _base.model, _base.optimizer, _base.train, _base.lr_multiplier, _base.dataloader)
dataloader.train.dataset.names = "shapes_bench_train"
dataloader.train.mapper.augmentations[0].short_edge_length = 96
dataloader.train.mapper.augmentations[0].max_size = 128
'''


def test_training_cost_on_a_config(tmp_path, repo_root, capsys):
    """--train-only --train-config: the config's model trains in fresh processes, one per variant and
    measure; the attention neck's extra parameters, gradients, AdamW state and activations show in
    the peak memory."""
    config = tmp_path / "tiny_shapes.py"
    config.write_text(_TINY_SHAPES_CONFIG.format(
        root=str(tmp_path / "shapes"), base=str(tmp_path.joinpath(repo_root, "configs/shapes/mask_rcnn_R_18_sum.py"))))
    results = benchmark.main([
        "--ops", "sum", "mssa", "--train-only", "--train-config", str(config), "--iters", "1", "--warmup", "1",
        "--threads", "1",
    ])
    out = capsys.readouterr().out
    s, m = results["sum"], results["mssa"]
    assert s["train_step_s"] > 0 and m["train_step_s"] > 0
    assert m["train_step_s_ratio"] == m["train_step_s"] / s["train_step_s"]
    # Each variant's peak holds at least its weights, their gradients and AdamW's two moments
    # (4x the parameters' bytes; activations come on top). That bound is per process and exact
    # by construction, where a comparison of two processes' RSS would ride on allocator noise.
    # The attention neck's extra parameters raise MSSA's bound: its peak must clear it.
    for r in (s, m):
        assert 4 * r["train_param_bytes"] <= r["train_peak_mem_bytes"] < 2 ** 30, r
    extra_params = m["train_param_bytes"] - s["train_param_bytes"]
    assert extra_params == 4 * 4 * _MS_ATT_PARAMS_64, extra_params  # 4 levels, float32
    assert "glibc" in s["train_mem_measure"]
    assert "train step ms" in out and "train peak MiB" in out and "neck GFLOPs" not in out


def test_memory_worker_environment_returns_freed_blocks():
    """The premise of the CPU peak-memory measure: under _MEMORY_WORKER_ENV, freed tensor-sized
    blocks leave the process, so RSS follows the live tensors."""
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from afa_d2.benchmark import _rss_bytes\n"
        "b = _rss_bytes(); xs = [torch.ones(64, 256) for _ in range(3000)]\n"  # 3000 x 64 KiB
        "up = _rss_bytes() - b; del xs; print(up, _rss_bytes() - b)\n"
    )

    def run(env):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return [int(v) for v in out.stdout.split()]

    up, left = run(dict(os.environ, **benchmark._MEMORY_WORKER_ENV))
    assert up > 150 * 2 ** 20 and left < 0.2 * up


def test_gpu_check_script_runs_on_the_cpu_in_smoke_mode(tmp_path, repo_root):
    """tools/gpu_check.py, prepared for when a GPU is lent: its code runs end to end (CPU, tiny)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "tools", "gpu_check.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["attention"]["ok"] and report["attention"]["self_max_abs_diff"] <= 1e-4
    assert set(report["inference"]) == {"sum", "mssa", "msca"}
    assert report["inference"]["sum"]["latency_ratio_to_sum"] == 1.0 and report["inference"]["msca"]["fps"] > 0
    assert {"fps_ratio_mssa", "fps_ratio_msca"} <= set(report["goals"])  # no AMP on the CPU
    assert not any(k.startswith("amp_") for k in report["goals"])
    from afa_d2.engine.precision import cpu_bf16_support

    if cpu_bf16_support()[0]:  # bf16 inference: timed against sum in bf16, detections against fp32's
        low = report["low_precision"]
        assert set(low) == {"sum@bf16", "mssa@bf16", "msca@bf16"}
        assert low["sum@bf16"]["latency_ratio_to_sum"] == 1.0 and low["msca@bf16"]["speedup_over_fp32"] > 0
        for r in low.values():
            assert r["detections"] >= 0 and 0.0 <= r["matched_at_iou_0.5"] <= 1.0


def test_profile_names_the_ops_and_libraries_that_take_the_time(tmp_path, capsys):
    results, printed, saved = _main_with_json(tmp_path, capsys, [
        "--ops", "sum", "mssa", "--height", "128", "--width", "160", "--threads", "2", "--warmup", "1",
        "--detections-per-image", "5", "--proposals", "50", "--profile", "200",
    ])
    assert "CPU capability" in printed and "oneDNN convolution" in printed
    for name in ("sum", "mssa"):
        rows = saved[name]["profile"]
        times = [r["self_s"] for r in rows]
        assert times == sorted(times, reverse=True) and times[-1] > 0
        assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-6  # every op listed: the shares add up
        assert abs(sum(times) - saved[name]["profile_total_s"]) < 1e-6
        assert "aten::mkldnn_convolution" in {r["name"] for r in rows}
    # attention runs only in the MS-Att model
    attention = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"}
    assert attention & {r["name"] for r in results["mssa"]["profile"]}
    assert not attention & {r["name"] for r in results["sum"]["profile"]}


def test_profile_refuses_a_gpu_device_or_a_negative_count():
    for argv in (["--profile", "-1"], ["--profile", "5", "--device", "cuda"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args(argv)


def test_kernels_mode_times_each_product_every_way_after_checking_they_agree(tmp_path, capsys, monkeypatch):
    results, printed, saved = _main_with_json(tmp_path, capsys, [
        "--kernels", "--height", "128", "--width", "160", "--threads", "2", "--iters", "1", "--warmup", "0"])
    assert set(saved) == set(results) and "| kernel | ms | GMAC/s | of 3x3 conv |" in printed
    by_product = {}
    for r in saved.values():
        by_product.setdefault(r["product"], []).append(r)
        assert r["tokens"] == 32 * 40 and r["keys"] == 2 * 3 + 1 * 2  # p2 32x40; pools of 16: 2x3, of 32: 1x2
        if r["macs"]:
            assert r["gmacs_per_s"] == pytest.approx(r["macs"] / 1e9 / r["latency_s"])
    import afa_d2.execution.kernels as K

    assert {k: len(v) for k, v in by_product.items()} == {
        "conv3x3": 1, "linear": 2, "attention": 3, "softmax": 1, "box fc1": 2, "mask 3x3": 1 + K.nnpack_available()}
    fc1 = by_product["box fc1"][0]
    assert fc1["input"] == [1000, 12544] and fc1["macs"] == 1000 * 12544 * 1024
    assert by_product["mask 3x3"][0]["input"] == [100, 256, 14, 14]
    assert by_product["conv3x3"][0]["of_conv3x3"] == 1.0
    assert by_product["attention"][0]["macs"] == 2 * 1280 * 8 * 256
    # a kernel that computes something else is refused before anything is timed
    monkeypatch.setattr(K, "_attend_conv", lambda q, k, v, size: torch.zeros_like(q))
    with pytest.raises(AssertionError, match="attention, grouped 1x1 convs: differs from the first attention"):
        benchmark.main(["--kernels", "--height", "128", "--width", "160", "--iters", "1", "--warmup", "0"])
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--kernels", "--device", "cuda"])


@pytest.mark.skipif(not __import__("afa_d2.engine.precision", fromlist=["x"]).cpu_bf16_support()[0],
                    reason="this CPU has no native bf16")
def test_precisions_side_by_side(tmp_path, capsys):
    """--precision fp32 bf16: the same models again under bf16 autocast, each against the sum-up model of
    its own precision; the counts are the fp32 model's (the same model)."""
    results, table, saved = _main_with_json(tmp_path, capsys, [
        "--ops", "sum", "msca", "--precision", "fp32", "bf16", "--height", "128", "--width", "160", "--iters", "1",
        "--warmup", "0", "--threads", "2", "--detections-per-image", "5", "--proposals", "50",
        "--skip-model-flops",
    ])
    assert list(saved) == ["sum", "msca", "sum@bf16", "msca@bf16"]
    assert saved["msca@bf16"]["ratio_to"] == "sum@bf16" and saved["msca"]["ratio_to"] == "sum"
    assert saved["msca@bf16"]["neck_flops"] == saved["msca"]["neck_flops"] > saved["sum"]["neck_flops"]
    r = saved["msca@bf16"]
    assert r["model_latency_s_ratio"] == pytest.approx(r["model_latency_s"] / saved["sum@bf16"]["model_latency_s"])
    assert saved["sum@bf16"]["precision"] == "bf16" and saved["sum@bf16"]["detections"] >= 1
    assert "msca@bf16" in table and "precisions: fp32, bf16" in table
    assert r["model_floor_ratio"] > 1 and r["attention_gmacs_per_s"] > 0  # the floor in bf16, from bf16's rates
    assert saved["sum@bf16"]["reference_conv_gmacs_per_s"] != saved["sum"]["reference_conv_gmacs_per_s"]
    assert "(bf16)" in table


def test_precision_refusals_are_parse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.parse_args(["--device", "cpu", "--precision", "fp32", "fp16"])
    assert e.value.code == 2 and "precision=fp16 needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--device", "cpu", "--precision", "bf16", "--train-only"])
    assert "measures inference" in capsys.readouterr().err


# ------------------------------------------------------------------ RetinaNet and FCOS (p3..p7, no RoI heads)
def _conv_params(c_in, k, c_out=256):
    return k * k * c_in * c_out + c_out  # with bias, as FPN's convs and LastLevelP6P7's


def _one_stage_attention_macs(h, w, c=256):
    """MS-Att's Q K^T and P V on p3..p5 of an h x w input (divisible by 32): N_q * N_kv * 2C a level, the
    keys pooled at strides r and 2r (clamped to the map), r = 64 / stride = 8, 4, 2."""
    total = 0
    for stride in (8, 16, 32):
        lh, lw, r = h // stride, w // stride, 64 // stride
        keys = sum(-(-lh // min(s, lh)) * -(-lw // min(s, lw)) for s in (r, 2 * r))
        total += lh * lw * keys * 2 * c
    return total


_BF16 = __import__("afa_d2.engine.precision", fromlist=["x"]).cpu_bf16_support()[0]


@pytest.mark.parametrize("model, top_in_channels, precisions", [
    ("retinanet", 2048, ["fp32"]),  # p6 from res5
    ("fcos", 256, ["fp32", "bf16"] if _BF16 else ["fp32"]),  # p6 from p5
])
def test_one_stage_side_by_side_run(tmp_path, capsys, model, top_in_channels, precisions):
    """--model retinanet / fcos: the neck is p3..p5 (three operators) and LastLevelP6P7; no proposals: the
    candidates entering the final NMS are counted instead, each level's top --proposals (score threshold 0)."""
    results, table, saved = _main_with_json(tmp_path, capsys, [
        "--model", model, "--ops", "sum", "msca", "--precision", *precisions, "--height", "128", "--width", "160",
        "--iters", "1", "--warmup", "0", "--threads", "2", "--detections-per-image", "5", "--proposals", "50",
    ])
    variants = ["sum", "msca"] + ["sum@bf16", "msca@bf16"] * (precisions != ["fp32"])
    assert list(saved) == variants and saved["msca"]["neck_params"] == results["msca"]["neck_params"]
    s, m = saved["sum"], saved["msca"]
    laterals = sum(_conv_params(c, 1) for c in (512, 1024, 2048))  # res3..res5 -> 256
    outputs = 3 * _conv_params(256, 3)
    top = _conv_params(top_in_channels, 3) + _conv_params(256, 3)  # p6, p7
    assert s["neck_params"] == laterals + outputs + top
    assert m["neck_params"] - s["neck_params"] == m["model_params"] - s["model_params"] == 3 * _ms_att_params(256)
    assert s["neck_sdpa_flops"] == s["model_sdpa_flops"] == 0
    assert m["neck_sdpa_flops"] == m["model_sdpa_flops"] == _one_stage_attention_macs(128, 160)
    assert m["neck_flops"] > s["neck_flops"] and m["model_flops"] > s["model_flops"]
    assert m["neck_flops_ratio"] == m["neck_flops"] / s["neck_flops"] and s["model_flops_ratio"] == 1.0
    for r in saved.values():
        # 5 levels, each with at least 50 scores (p7 of 128x160 is 1x2 locations x anchors x 80 classes)
        assert r["candidates"] == 5 * 50 and "proposals" not in r, r["op"]
        assert 1 <= r["detections"] <= 5 and r["model_latency_s"] > 0 and r["neck_latency_s"] > 0
    assert m["attention_rate_level"] == "p3" and m["model_floor_ratio"] > 1  # the floor's attention timed on p3
    assert "cands/dets" in table and "250/" in table and "props/dets" not in table
    assert "{}: no proposals, no RoI heads".format(model) in table
    if precisions != ["fp32"]:
        assert saved["msca@bf16"]["ratio_to"] == "sum@bf16" and saved["msca@bf16"]["neck_flops"] == m["neck_flops"]


@pytest.mark.parametrize("model, top_in", [("retinanet", "res5"), ("fcos", "p5")])
def test_one_stage_model_is_the_shipped_config_with_the_test_budget(model, top_in):
    """The benchmark's RetinaNet / FCOS neck is configs/common/models/<model>_afpn.py's, parameter for
    parameter; --proposals and --detections-per-image set their test-time counterparts, the threshold 0."""
    from detectron2.config import instantiate

    from afa_d2.model_zoo.build import load_any_config

    built = benchmark.build_model("msca", model, detections_per_image=7, proposals=11)
    assert (built.test_score_thresh, built.test_topk_candidates, built.max_detections_per_image) == (0.0, 11, 7)
    neck = built.backbone
    assert neck.in_features == ("res3", "res4", "res5") and neck.top_block.in_feature == top_in
    assert list(neck.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    shipped = instantiate(load_any_config("COCO/{}_R_50_msca_1x.py".format(model)).model).backbone

    def neck_shapes(n):
        return {k: tuple(v.shape) for k, v in n.state_dict().items() if not k.startswith("bottom_up.")}

    assert neck_shapes(neck) == neck_shapes(shipped)
    assert neck.level_ops == shipped.level_ops == {"p3": "msca", "p4": "msca", "p5": "msca"}
    assert [benchmark._finest_attention(n) for n in (neck, shipped)] == [("p3", {
        "stride": 8, "pooling": "multi_scale", "pool_strides": (8, 16), "adaptive_pool_size": 7, "channels": 256,
        "heads": 4})] * 2


def test_vs_stock_loads_the_sum_weights_into_detectron2s_own_fcos():
    """--vs-stock's premise for the one-stage detectors: detectron2's FCOS with its FPN takes every weight of
    the benchmark's sum-up model and gives its detections."""
    args = benchmark.parse_args(["--model", "fcos", "--detections-per-image", "5", "--proposals", "20"])
    ours = benchmark._build("sum", args).eval()
    stock = benchmark._stock_fpn_model(args, ours.state_dict()).eval()
    assert type(stock.backbone).__name__ == "FPN" and stock.test_topk_candidates == 20
    inputs = [{"image": benchmark._image(96, 128, torch.device("cpu"))}]
    with torch.no_grad():
        a, b = (m(inputs)[0]["instances"] for m in (ours, stock))
    assert len(a) == len(b) > 0
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4)


def test_one_stage_training_step():
    """--train with --model retinanet: the synthetic image's boxes train the one-stage detector (its worker
    runs measure_train_step; in this process here)."""
    args = benchmark.parse_args(["--model", "retinanet", "--height", "96", "--width", "128", "--iters", "1",
                                 "--warmup", "1", "--threads", "2"])
    assert benchmark.measure_train_step("msca", args)["train_step_s"] > 0


def test_one_stage_refusals_are_one_line_parse_errors(capsys):
    for argv, words in (
        (["--model", "fcos", "--kernels"], ("--kernels", "--model fcos", "mask_rcnn")),
        (["--model", "retinanet", "--proposals", "0"], ("--proposals must be >= 1, got 0",)),
        (["--model", "yolo"], ("'yolo'", "retinanet", "fcos")),
    ):
        with pytest.raises(SystemExit) as e:
            benchmark.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and all(w in err for w in words), err
