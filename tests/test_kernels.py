"""afa_d2.execution.kernels and afa_d2.execution.runtime: the CPU fast paths equal the reference path, fall back
where they do not apply, are chosen by a cached probe; the allocator setting is explicit and does
what it says."""
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import afa_d2  # noqa: F401
import afa_d2.execution.kernels as K
from afa_d2.modeling import AttentionFPN, MSAttention
from afa_d2.modeling.aggregation import use_reference_path
from afa_d2.execution.kernels import kernel_policy


def _count_convs(monkeypatch):
    """Record the weight shapes of every F.conv2d call made by the kernels module."""
    calls = []
    real = K.F.conv2d

    def conv2d(x, weight, *args, **kwargs):
        calls.append(tuple(weight.shape))
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(K.F, "conv2d", conv2d)
    return calls


def _attention(dim=32, heads=4, stride=4):
    torch.manual_seed(0)
    m = MSAttention(dim, heads, pool_stride=stride)
    with torch.no_grad():  # weights large enough that every branch matters (not PVTv2's 0.02)
        for p in m.parameters():
            p.normal_(0.0, 0.2)
    return m


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_conv_kernels_equal_the_reference_path_values_and_gradients(cross, monkeypatch):
    m = _attention()
    x = torch.randn(2, 32, 23, 37, requires_grad=True)
    kv = torch.randn(2, 32, 12, 19, requires_grad=True) if cross else None
    inputs = [x] + ([kv] if cross else [])
    ref = m.forward_reference(x, kv)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g).sum(), inputs + list(m.parameters()))
    calls = _count_convs(monkeypatch)
    with kernel_policy("conv"):
        out = m(x, kv)
        grads = torch.autograd.grad((out * g).sum(), inputs + list(m.parameters()))
        with torch.no_grad():
            out_no_grad = m(x, kv)
    # with autograd: the five token linears as 1x1 convolutions, attention by SDPA (no score map kept)
    assert calls[:5] == [(32, 32, 1, 1), (32, 32, 1, 1), (64, 32, 1, 1), (64, 1, 3, 3), (32, 64, 1, 1)], calls
    # without: attention by two grouped 1x1 convolutions per image (keys, then values, as weights)
    heads, m_keys = 4, (3 * 5 + 2 * 3) if cross else (6 * 10 + 3 * 5)
    assert (heads * m_keys, 8, 1, 1) in calls and (32, m_keys, 1, 1) in calls, calls
    assert (out - ref).abs().max().item() <= 1e-4
    assert (out_no_grad - ref).abs().max().item() <= 1e-4
    names = ["x", "kv"][: len(inputs)] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, ref_grads, grads):
        scale = max(1.0, a.abs().max().item())
        assert (a - b).abs().max().item() <= 1e-4 * scale, "gradient of {} differs".format(name)


@pytest.mark.parametrize("op", ["mssa", "msca"])
def test_conv_kernels_in_the_neck_on_an_odd_size(op):
    from _engine_fixtures import tiny_resnet_stages
    from detectron2.modeling.backbone import BasicStem, ResNet

    torch.manual_seed(0)
    bottom_up = ResNet(BasicStem(3, 8, norm="BN"), tiny_resnet_stages(), out_features=["res2", "res3", "res4", "res5"])
    neck = AttentionFPN(bottom_up, ["res2", "res3", "res4", "res5"], 16, aggregation=op).eval()
    image = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        ref = use_reference_path(neck, True)(image)
        use_reference_path(neck, False)
        with kernel_policy("conv"):
            fast = neck(image)
    for level in ref:
        assert (fast[level] - ref[level]).abs().max().item() <= 1e-4, level


def test_plain_kernels_where_the_convolutions_do_not_apply(monkeypatch):
    m = _attention()
    x = torch.randn(1, 32, 23, 37)
    calls = _count_convs(monkeypatch)
    with kernel_policy("conv"):
        m(x)
        assert [c for c in calls if c[2:] == (1, 1)], "the check below would pass vacuously"
        calls.clear()
        with torch.autocast("cpu", dtype=torch.float16):  # fp16 autocast: no measured kernel, autocast's rules
            m(x)
        torch.jit.trace(m, (x,), check_trace=False)  # tracing (export): plain ops
    assert [c for c in calls if c[2:] == (1, 1)] == [], calls  # only the depth-wise conv ran
    monkeypatch.setattr(K, "choose", lambda *a: pytest.fail("probed a product below the size limits"))
    with kernel_policy("probe"), torch.no_grad():  # small maps and few rows: never probed, plain
        K.token_linear(torch.nn.Linear(32, 32), torch.randn(1, K.MIN_TOKENS - 1, 32), (K.MIN_TOKENS - 1, 1))
        K.rows_linear(torch.nn.Linear(256, 256), torch.randn(K.MIN_ROWS_MACS // 256 ** 2 - 1, 256))
    assert [c for c in calls if c[2:] == (1, 1)] == [], calls


def test_import_afa_d2_installs_the_measured_kernels_and_modeling_alone_has_the_plain_ops(monkeypatch):
    """modeling computes MS-Att with nn.Linear and SDPA; the execution layer's kernels reach it only through
    use_kernels, which ``import afa_d2`` calls (docs/DESIGN.md, "Layers")."""
    from afa_d2 import execution
    from afa_d2.modeling import tokens

    installed = tokens.token_kernels()
    assert installed.token_linear is K.token_linear and installed.attend is K.attend
    m = _attention()
    x = torch.randn(1, 32, 23, 37)
    calls = _count_convs(monkeypatch)
    with kernel_policy("conv"), torch.no_grad():
        fast = m(x)
        assert [c for c in calls if c[2:] == (1, 1)], "the measured kernels ran (forced)"
        calls.clear()
        previous = tokens.use_kernels(tokens.TokenKernels())
        try:
            plain = m(x)
        finally:
            assert tokens.use_kernels(previous) == tokens.TokenKernels()
    assert [c for c in calls if c[2:] == (1, 1)] == [], "modeling's own kernels are the plain ops"
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert tokens.token_kernels() is previous
    assert execution.install() == previous  # installing again changes nothing
    with pytest.raises(TypeError, match="TokenKernels"):
        tokens.use_kernels(K.attend)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_bf16_autocast_takes_the_measured_kernels_in_bf16(cross, monkeypatch):
    """Under CPU bf16 autocast the 1x1 convolutions and the grouped attention convolutions run in bf16 (the
    same precision as autocast's GEMM and SDPA): MS-Att's output is within a bf16 bound of the fp32 reference
    and of the plain bf16 path, and the bf16 choices are probed and kept apart from the fp32 ones."""
    m = _attention()
    x_q = torch.randn(2, 32, 23, 37)
    x_kv = torch.randn(2, 32, 12, 19) if cross else None
    with torch.no_grad():
        ref = m.forward_reference(x_q, x_kv)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with kernel_policy("plain"):
                plain = m(x_q, x_kv).float()
            calls = _count_convs(monkeypatch)
            with kernel_policy("conv"):
                conv = m(x_q, x_kv).float()
    pointwise = [c for c in calls if c[2:] == (1, 1)]
    assert (32, 32, 1, 1) in pointwise and (64, 32, 1, 1) in pointwise, calls  # q / proj and fc1 as convolutions
    assert any(c[1] == 32 // 4 for c in pointwise if c[0] != 32 and c[0] != 64), calls  # keys as grouped weights
    scale = ref.abs().max().item()
    assert (conv - ref).abs().max().item() <= 0.03 * scale  # bf16: 8 bits of mantissa, a few products deep
    assert (plain - ref).abs().max().item() <= 0.03 * scale
    assert (conv - plain).abs().max().item() <= 0.03 * scale
    assert (conv - ref).abs().max().item() > 0  # it did compute in bf16


def test_bf16_choices_are_keyed_by_precision(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_D2_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(K, "_choices", {})
    monkeypatch.setattr(K, "_loaded_from", None)
    seen = []

    def probe(cin, cout):  # the probe runs under the caller's autocast: bf16 is measured as bf16
        seen.append(torch.is_autocast_enabled("cpu"))
        return {"plain": 1.0, "conv": 0.5} if seen[-1] else {"plain": 0.5, "conv": 1.0}

    monkeypatch.setattr(K, "_probe_linear", probe)
    threads = torch.get_num_threads()
    with kernel_policy("probe"):
        assert K.choose("linear", (24, 48)) == "plain"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert K.choose("linear", (24, 48)) == "conv"
    assert seen == [False, True]
    assert K.choices() == {"linear:24x48:t{}".format(threads): "plain", "linear:24x48:t{}:bf16".format(threads): "conv"}


def test_rows_linear_equals_the_linear_and_shares_its_parameters(monkeypatch):
    """The box head's FC layers (RowsLinear): the 1x1 convolution of the rows equals F.linear, with
    the layer's own parameters; with autograd, or a 3-D input, it is F.linear."""
    torch.manual_seed(0)
    fc = torch.nn.Linear(96, 40)
    rows = K.RowsLinear.from_linear(fc)
    assert rows.weight is fc.weight and rows.bias is fc.bias
    assert list(rows.state_dict()) == list(fc.state_dict()) == ["weight", "bias"]
    x = torch.randn(300, 96)
    calls = _count_convs(monkeypatch)
    with kernel_policy("conv"):
        with torch.no_grad():
            out = rows(x)
        assert calls == [(40, 96, 1, 1)]  # the convolution ran
        assert out.shape == (300, 40) and (out - fc(x)).abs().max().item() <= 1e-5
        x.requires_grad_(True)
        rows(x).sum().backward()  # with autograd: F.linear, and its gradients reach the shared weight
        assert calls == [(40, 96, 1, 1)] and fc.weight.grad is not None and x.grad is not None
        with torch.no_grad():
            assert torch.equal(rows(x[None]), fc(x[None]))  # not rows: F.linear
    assert calls == [(40, 96, 1, 1)]


def _count_nnpack(monkeypatch):
    calls = []
    real = K._nnpack_conv3x3

    def nnpack(x, weight, bias):
        calls.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(K, "_nnpack_conv3x3", nnpack)
    return calls


@pytest.mark.skipif(not K.nnpack_available(), reason="this PyTorch build has no NNPACK for this CPU")
def test_batched_conv2d_equals_detectron2s_conv_with_its_norm_and_activation(monkeypatch):
    from detectron2.layers import Conv2d, get_norm

    torch.manual_seed(0)
    conv = Conv2d(32, 64, 3, padding=1, norm=get_norm("GN", 64), activation=torch.nn.ReLU())
    with torch.no_grad():
        conv.norm.weight.normal_(1.0, 0.3)
        conv.norm.bias.normal_(0.0, 0.3)  # a ReLU that cuts: the activation's place matters
    assert K.BatchedConv2d.applies_to(conv) and not K.BatchedConv2d.applies_to(Conv2d(32, 64, 3, padding=1, stride=2))
    batched = K.BatchedConv2d.from_conv(conv)
    assert batched.weight is conv.weight and batched.norm is conv.norm and batched.activation is conv.activation
    assert list(batched.state_dict()) == list(conv.state_dict())
    x = torch.randn(K.MIN_BATCH_3X3 + 4, 32, 14, 14)
    calls = _count_nnpack(monkeypatch)
    with torch.no_grad():
        expected = conv(x)
        with kernel_policy("conv"):
            got = batched(x)
            assert calls == [tuple(x.shape)]
            got_cl = batched(x.contiguous(memory_format=torch.channels_last))  # a channels-last input too
            batched(x[: K.MIN_BATCH_3X3 - 1])  # a small batch: oneDNN
        with kernel_policy("plain"):
            batched(x)
    assert len(calls) == 2
    assert 0 < (expected == 0).float().mean() < 1  # the ReLU cut some outputs
    assert (got - expected).abs().max().item() <= 1e-5 and (got_cl - expected).abs().max().item() <= 1e-5
    with kernel_policy("conv"):
        batched(x.requires_grad_(True)).sum().backward()  # with autograd: detectron2's convolution
    assert len(calls) == 2 and conv.weight.grad is not None


def test_nnpack_is_not_chosen_where_it_is_less_accurate_or_missing(monkeypatch):
    """The 3x3 probe times NNPACK only where it is at least as accurate as oneDNN against float64."""
    if K.nnpack_available():
        real = K._nnpack_conv3x3
        times = K._probe_conv3x3(8, 8, 14, 14)
        assert math.isfinite(times["conv"]) and times["plain"] > 0  # on these maps NNPACK is accurate
        monkeypatch.setattr(K, "_nnpack_conv3x3", lambda *a: real(*a) + 1e-4)  # ... unless it errs by 1e-4
        assert K._probe_conv3x3(8, 8, 14, 14)["conv"] == math.inf
    monkeypatch.setattr(K, "nnpack_available", lambda: False)
    assert K._probe_conv3x3(8, 8, 14, 14)["conv"] == math.inf


def test_a_linear_too_large_for_the_token_probe_is_probed_on_rows():
    """fc1 of the box head (12544 -> 1024) on the probe's 8,192 tokens would be 105 G multiply-adds per
    call: it is probed on PROBE_ROWS rows laid out as rows_linear does; MS-Att's linears keep the map."""
    assert K._probe_map(256, 512) == K._probe_map(512, 256) == K.PROBE_HW
    assert K._probe_map(12544, 1024) == (K.PROBE_ROWS, 1) and K.PROBE_ROWS * 8 <= K.PROBE_TOKENS


def test_probe_chooses_caches_on_disk_and_is_reused(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path))
    monkeypatch.delenv("AFA_D2_KERNEL_CACHE", raising=False)  # the default place: $AFA_D2_CACHE/kernels
    monkeypatch.setattr(K, "_choices", {})
    monkeypatch.setattr(K, "_loaded_from", None)
    monkeypatch.setattr(K, "_probe_linear", lambda cin, cout: {"plain": 1.0, "conv": 0.5})  # conv 2x faster
    with kernel_policy("probe"), caplog.at_level(logging.INFO, logger=K.__name__):
        assert K.choose("linear", (24, 48)) == "conv"
    assert "kept in {}, delete it to measure again".format(K._cache_file()) in caplog.text  # the file, by name
    monkeypatch.setattr(K, "_probe_linear", lambda cin, cout: {"plain": 1.0, "conv": 0.97})  # within MARGIN
    with kernel_policy("probe"):
        assert K.choose("linear", (48, 24)) == "plain"
    files = list((tmp_path / "kernels").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())["choices"]
    threads = torch.get_num_threads()
    assert stored == {"linear:24x48:t{}".format(threads): "conv", "linear:48x24:t{}".format(threads): "plain"}
    assert K.describe_choices() == {"linear:24x48:t{}".format(threads): "1x1 conv (oneDNN)",
                                    "linear:48x24:t{}".format(threads): "plain"}
    # a new process reads the choice instead of probing again, and describes only what it used
    monkeypatch.setattr(K, "_choices", {})
    monkeypatch.setattr(K, "_used", set())
    monkeypatch.setattr(K, "_loaded_from", None)
    monkeypatch.setattr(K, "_probe_linear", lambda cin, cout: pytest.fail("probed again"))
    with kernel_policy("probe"):
        assert K.choose("linear", (24, 48)) == "conv"
    assert len(K.choices()) == 2 and K.describe_choices() == {"linear:24x48:t{}".format(threads): "1x1 conv (oneDNN)"}
    # the file deleted (README, Troubleshooting), the next process measures again
    files[0].unlink()
    monkeypatch.setattr(K, "_choices", {})
    monkeypatch.setattr(K, "_loaded_from", None)
    monkeypatch.setattr(K, "_probe_linear", lambda cin, cout: {"plain": 0.5, "conv": 1.0})
    with kernel_policy("probe"):
        assert K.choose("linear", (24, 48)) == "plain"


def test_the_kernel_cache_folder_can_be_moved_and_the_tests_use_their_own(tmp_path, monkeypatch):
    from afa_d2.storage import cache_root

    assert not K._cache_file().startswith(cache_root())  # this suite's choices stay out of the user's cache
    monkeypatch.setenv("AFA_D2_KERNEL_CACHE", str(tmp_path / "choices"))
    monkeypatch.setattr(K, "_choices", {})
    monkeypatch.setattr(K, "_loaded_from", None)
    monkeypatch.setattr(K, "_probe_linear", lambda cin, cout: {"plain": 1.0, "conv": 0.5})
    with kernel_policy("probe"):
        assert K.choose("linear", (24, 48)) == "conv"
    assert [p.parent.name for p in tmp_path.rglob("*.json")] == ["choices"]


def test_a_restricted_instruction_set_is_another_host(tmp_path, monkeypatch):
    """A choice measured with oneDNN / MKL on their full instruction set is not reused when a variable
    restricts them (the kernels' speeds change): the probe runs again, into another cache file."""
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path))
    monkeypatch.delenv("AFA_D2_KERNEL_CACHE", raising=False)  # the default place: $AFA_D2_CACHE/kernels
    for var in K.ISA_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(K, "_choices", {})
    monkeypatch.setattr(K, "_loaded_from", None)
    monkeypatch.setattr(K, "_probe_linear", lambda cin, cout: {"plain": 1.0, "conv": 0.5})
    with kernel_policy("probe"):
        assert K.choose("linear", (24, 48)) == "conv"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(K, "_choices", {})
    monkeypatch.setattr(K, "_loaded_from", None)
    monkeypatch.setattr(K, "_probe_linear", lambda cin, cout: {"plain": 0.5, "conv": 1.0})
    with kernel_policy("probe"):
        assert K.choose("linear", (24, 48)) == "plain"  # measured again, not read from the first file
    assert len(list((tmp_path / "kernels").glob("*.json"))) == 2


def test_real_probe_measures_both_kernels():
    times = K._probe_linear(16, 32)
    assert set(times) == {"plain", "conv"} and all(t > 0 for t in times.values())
    times = K._probe_attention(16, 4)
    assert set(times) == {"plain", "conv"} and all(t > 0 for t in times.values())


def test_the_probe_times_the_functions_the_layers_run(monkeypatch):
    """linear_ways / attention_ways / conv3x3_ways: each pair computes the same product, and the probe
    (like ``tools/benchmark.py --kernels``) times exactly the functions token_linear, rows_linear and
    attend then call: a kernel broken in the layers is broken in what the probe measures too."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 24)
    tokens, rows = torch.randn(2, 6 * 7, 16), torch.randn(9, 16)
    q, k, v = torch.randn(1, 6 * 7, 16), torch.randn(1, 4, 5, 4), torch.randn(1, 4, 5, 4)
    maps, w3 = torch.randn(3, 8, 5, 6), torch.randn(8, 8, 3, 3) * 0.1
    with torch.no_grad():
        for ways in (K.linear_ways(tokens, lin.weight, lin.bias, (6, 7)), K.linear_ways(rows, lin.weight, lin.bias),
                     K.attention_ways(q, k, v, (6, 7)), K.conv3x3_ways(maps, w3, None)):
            assert set(ways) == ({"plain", "conv"} if len(ways) == 2 or K.nnpack_available() else {"plain"})
            values = [fn() for fn in ways.values()]
            assert all(torch.allclose(x, values[0], atol=1e-5) for x in values[1:])
    # break the 1x1 convolution of tokens and of rows: the layers and the probe both see it
    monkeypatch.setattr(K, "_tokens_conv1x1", lambda x, *a: torch.zeros(x.shape[0], x.shape[1], 24))
    monkeypatch.setattr(K, "_rows_conv1x1", lambda x, *a: torch.zeros(x.shape[0], 24))
    with torch.no_grad(), kernel_policy("conv"):
        assert K.token_linear(lin, tokens, (6, 7)).abs().max() == 0
        assert K.rows_linear(lin, rows).abs().max() == 0
    assert K.linear_ways(tokens, lin.weight, lin.bias, (6, 7))["conv"]().abs().max() == 0
    assert K.linear_ways(rows, lin.weight, lin.bias)["conv"]().abs().max() == 0
    calls = []
    monkeypatch.setattr(K, "_attend_conv", lambda *a: calls.append("attend") or torch.zeros_like(a[0]))
    with torch.no_grad(), kernel_policy("conv"):
        K.attend(q, k, v, (6, 7))
    K.attention_ways(q, k, v, (6, 7))["conv"]()
    assert calls == ["attend", "attend"]


def test_bad_policy_is_named(monkeypatch):
    monkeypatch.setenv(K.KERNELS_ENV, "fastest")
    with pytest.raises(ValueError, match="AFA_D2_KERNELS='fastest': expected one of"):
        K.choose("linear", (8, 8))


# ----------------------------------------------------------------------------- the allocator setting
_RSS_AFTER_FREE = textwrap.dedent(
    """
    import logging, os, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from afa_d2.execution.runtime import configure_cpu_runtime
    import torch

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    print("settings", configure_cpu_runtime("the test"))
    base = rss()
    x = torch.ones(64, 2**20 // 4)  # 64 MiB, one block
    del x
    print("kept MiB", (rss() - base) / 2**20)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("setting", ["keep", "default"])
def test_keep_freed_memory_is_explicit_logged_and_does_what_it_says(setting):
    env = dict(os.environ, AFA_D2_MALLOC=setting, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE], capture_output=True, text=True, env=env,
                         check=True).stdout
    kept = float(out.split("kept MiB")[1].split()[0])
    if setting == "keep":
        assert "settings {'M_MMAP_MAX': 0, 'M_TRIM_THRESHOLD': 2147483647}" in out
        assert "glibc malloc keeps freed memory in the process for the test" in out and "AFA_D2_MALLOC=default" in out
        assert kept > 60  # the freed 64 MiB stayed with the process, ready for the next allocation
    else:
        assert "settings None" in out and "left as it is for the test (AFA_D2_MALLOC=default)" in out
        assert kept < 4  # glibc's own behaviour: the block was unmapped on free


def test_importing_afa_d2_changes_no_allocator_setting():
    code = "import afa_d2, afa_d2.modeling, afa_d2.model_zoo, afa_d2.execution.runtime as r; print(r._applied)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"


def test_bad_allocator_setting_is_named(monkeypatch):
    from afa_d2.execution.runtime import configure_cpu_runtime

    monkeypatch.setenv("AFA_D2_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="AFA_D2_MALLOC='jemalloc': expected 'keep'"):
        configure_cpu_runtime()


# ----------------------------------------------------------------------------- CPU inference set-up
def test_threaded_roi_align_is_detectron2s_op_bit_for_bit():
    from detectron2.layers import ROIAlign

    from afa_d2.execution.runtime import ThreadedROIAlign

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 40, 56, generator=g)
    xy = torch.rand(300, 2, generator=g) * torch.tensor([200.0, 140.0])
    wh = 4 + 60 * torch.rand(300, 2, generator=g)
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=g).float(), xy, xy + wh], 1)
    plain, threaded = ROIAlign((7, 7), 0.25, 0, aligned=True), ThreadedROIAlign((7, 7), 0.25, 0, aligned=True)
    with torch.no_grad():
        assert torch.equal(threaded(x, rois), plain(x, rois))
        x_cl = x.contiguous(memory_format=torch.channels_last)  # one NCHW copy, before the split
        assert torch.equal(threaded(x_cl, rois), plain(x, rois))
        with torch_threads(1):
            assert torch.equal(threaded(x_cl, rois), plain(x, rois))
    x.requires_grad_(True)  # with autograd: detectron2's op (and its gradient)
    threaded(x, rois).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _clustered_boxes(n_classes: int, per_class: int, seed: int = 0):
    """Boxes in tight clusters (NMS suppresses most of them), tied scores, uneven and missing classes."""
    g = torch.Generator().manual_seed(seed)
    n = n_classes * per_class
    centres = torch.rand(12, 2, generator=g) * 400
    xy = centres[torch.randint(0, 12, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 2
    boxes = torch.cat([xy, xy + 20 + 30 * torch.rand(n, 2, generator=g)], 1)
    scores = torch.rand(n, generator=g).round(decimals=2)  # many exact ties
    idxs = torch.randint(0, n_classes + 3, (n,), generator=g).clamp(max=n_classes - 1)  # the last class crowded
    idxs[idxs == 3] = 4  # class 3 absent
    return boxes, scores, idxs


@pytest.mark.parametrize("n_classes,per_class", [(80, 60), (5, 900), (3, 200)])  # per-class path; 600 boxes: below it
def test_threaded_batched_nms_is_detectron2s_bit_for_bit(monkeypatch, n_classes, per_class):
    import threading

    import torchvision
    from detectron2.layers import batched_nms

    from afa_d2.execution import runtime

    boxes, scores, idxs = _clustered_boxes(n_classes, per_class)
    threads_used = set()
    original_nms = torchvision.ops.nms

    def recording_nms(*args):
        threads_used.add(threading.current_thread().name)
        return original_nms(*args)

    monkeypatch.setattr(torchvision.ops, "nms", recording_nms)
    expected = batched_nms(boxes, scores, idxs, 0.5)
    threads_used.clear()
    with torch_threads(2):
        got = runtime.threaded_batched_nms(boxes, scores, idxs, 0.5)
    assert len(expected) < 0.75 * len(boxes)  # the clusters make NMS suppress: the comparison means something
    assert torch.equal(got, expected)
    per_class_path = boxes.numel() > runtime.NMS_PER_CLASS_NUMEL
    in_pool = [name.startswith("afa_d2_cpu") for name in threads_used]
    assert (bool(in_pool) and all(in_pool)) == per_class_path  # every class's NMS in the pool, or none
    with torch_threads(1):  # one thread: detectron2's function
        assert torch.equal(runtime.threaded_batched_nms(boxes, scores, idxs, 0.5), expected)


def _nms_in_forked_child(queue, boxes, scores, idxs, expected):
    from afa_d2.execution.runtime import threaded_batched_nms

    with torch_threads(2):
        queue.put(torch.equal(threaded_batched_nms(boxes, scores, idxs, 0.5), expected))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_threaded_ops_work_in_a_child_forked_after_the_pool_started():
    import multiprocessing

    from detectron2.layers import batched_nms

    from afa_d2.execution.runtime import threaded_batched_nms

    boxes, scores, idxs = _clustered_boxes(5, 900)
    expected = batched_nms(boxes, scores, idxs, 0.5)
    with torch_threads(2):
        threaded_batched_nms(boxes, scores, idxs, 0.5)  # the parent's pool threads exist now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    # (the child runs only the threaded op: after a fork, any intra-op-parallel torch op in the child's
    # main thread can hang on the parent's OpenMP state, with or without afa_d2)
    child = ctx.Process(target=_nms_in_forked_child, args=(queue, boxes, scores, idxs, expected))
    child.start()
    child.join(120)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child hung on the parent's thread pool"
    assert child.exitcode == 0 and queue.get(timeout=10) is True


def test_cpu_inference_scope_is_counted_and_restored():
    from detectron2.layers import batched_nms
    from detectron2.modeling.proposal_generator import proposal_utils
    from detectron2.modeling.roi_heads import fast_rcnn

    from afa_d2.execution import runtime
    from afa_d2.execution.runtime import cpu_inference_scope, threaded_batched_nms

    x = torch.randn(1, 8, 12, 16).contiguous(memory_format=torch.channels_last)
    assert runtime._nchw(x) is not runtime._nchw(x)  # outside a scope: a fresh copy each time
    with cpu_inference_scope():
        with cpu_inference_scope():
            assert fast_rcnn.batched_nms is threaded_batched_nms
            copy = runtime._nchw(x)
            assert copy.is_contiguous() and torch.equal(copy, x)
        assert proposal_utils.batched_nms is threaded_batched_nms  # the outer block is still open
        assert runtime._nchw(x) is copy  # one NCHW copy per map for every RoIAlign call in the scope
        x.add_(1)  # ... unless the map changed in place
        assert torch.equal(runtime._nchw(x), x) and runtime._nchw(x) is not copy
    assert fast_rcnn.batched_nms is batched_nms and proposal_utils.batched_nms is batched_nms
    assert not runtime._nchw_cache  # the copies are dropped with the last block


def test_prepare_for_cpu_inference_keeps_the_detections(monkeypatch):
    from afa_d2 import benchmark
    from afa_d2.execution import runtime
    from afa_d2.execution.kernels import BatchedConv2d, RowsLinear
    from afa_d2.execution.runtime import ThreadedROIAlign, prepare_for_cpu_inference

    calls = []
    original = runtime.threaded_batched_nms
    monkeypatch.setattr(runtime, "threaded_batched_nms", lambda *a: calls.append(len(a[0])) or original(*a))

    args = benchmark.parse_args(["--proposals", "200", "--detections-per-image", "20"])
    model = benchmark._build("msca", args).eval()
    image = [{"image": benchmark._image(160, 224, torch.device("cpu"))}]
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(image)[0]["instances"]
        prepare_for_cpu_inference(model)
        after = model(image)[0]["instances"]
    assert sum(isinstance(m, ThreadedROIAlign) for m in model.modules()) == 8  # 4 box + 4 mask levels
    assert type(model.roi_heads.box_head.fc1) is RowsLinear and type(model.roi_heads.box_head.fc2) is RowsLinear
    assert sum(type(m) is BatchedConv2d for m in model.roi_heads.mask_head.children()) == 4
    assert list(model.state_dict()) == keys  # the same parameters under the same names
    nnpack_calls = _count_nnpack(monkeypatch)
    with torch.no_grad(), kernel_policy("conv"):  # the heads' (and MS-Att's) other kernels: the same detections
        forced = model(image)[0]["instances"]
    assert len(nnpack_calls) == (4 if K.nnpack_available() else 0)  # the mask head's 20 detections
    assert calls, "the prepared model's inference did not go through the threaded NMS"
    from detectron2.layers import batched_nms
    from detectron2.modeling.roi_heads import fast_rcnn

    assert fast_rcnn.batched_nms is batched_nms  # restored after the forward
    prepare_for_cpu_inference(model)  # twice: still one pair of hooks
    assert len(model._forward_pre_hooks) == 1
    with pytest.raises(Exception):
        model([{"image": torch.zeros(2, 8, 8)}])  # a failing forward ...
    assert fast_rcnn.batched_nms is batched_nms  # ... restores the names too
    assert model.backbone.fpn_lateral2.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(after) == len(before) == len(forced) == 20
    for got in (after, forced):
        assert (got.scores - before.scores).abs().max().item() <= 1e-4
        assert (got.pred_boxes.tensor - before.pred_boxes.tensor).abs().max().item() <= 1e-2  # pixels
