"""Which CPU kernel computes MS-Att's large products: chosen per host, by measuring both.

Two products dominate MS-Att on a large map (p2 at 800x1333 is 200x336 = 67,200 tokens):

* the token linears (Q, K/V, the output projection, the DW-MLP's two FCs): ``F.linear`` on
  (N, H*W, C) tokens runs through BLAS (MKL's GEMM); the same product is a 1x1 convolution of the
  channels-last (N, C, H, W) view of the same memory, which runs through oneDNN;
* attention over the ~350 pooled keys: ``scaled_dot_product_attention``, or two grouped 1x1
  convolutions of that view, keys then values as the weights, with a softmax over each head's keys
  in between (per image: the weights differ from image to image).

Which is faster depends on the host, not on the code: on a 2-core AMD EPYC without AVX-512, MKL's
GEMM ran at 80-97 GMAC/s and oneDNN's 1x1 convolution at 213 (issue #12); other hosts differ. So the
choice is measured: the first time a product of a given shape signature is needed (in a process
whose choice is not cached yet), :func:`choose` times both kernels on a probe of
``PROBE_TOKENS`` tokens with the current thread count, keeps the faster (the convolution only when
it is at least ``MARGIN`` faster), and caches the result in memory and in
``$AFA_D2_CACHE/kernels/<host>.json`` (the host key: CPU model and flags, torch version, threads),
so later processes skip the probe. ``AFA_D2_KERNELS`` overrides it: ``probe`` (default), ``plain``
(always ``F.linear`` / SDPA) or ``conv`` (always the convolutions; tests use it on any host).

The convolutions are only used where they compute the same thing in the same precision: CPU,
float32, no autocast, not while tracing, scripting, exporting or compiling, contiguous tokens, at
least ``MIN_TOKENS`` tokens unless forced (below, call overhead dominates); attention
by convolution only without autograd (its score tensor, (N, heads * M, H, W), would be kept for
backward: training keeps SDPA, which never materialises it). Everything else takes the plain
path, which is also what :meth:`MSAttention.forward_reference` uses.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "KERNELS_ENV",
    "MARGIN",
    "MIN_TOKENS",
    "PROBE_TOKENS",
    "attend",
    "choices",
    "choose",
    "kernel_policy",
    "token_linear",
]

logger = logging.getLogger(__name__)

KERNELS_ENV = "AFA_D2_KERNELS"
POLICIES = ("probe", "plain", "conv")
MIN_TOKENS = 4096
PROBE_HW = (64, 128)  # the probe's map: 8,192 tokens
PROBE_TOKENS = PROBE_HW[0] * PROBE_HW[1]
PROBE_KEYS = 352  # pooled keys of the probe's attention (p2-p5 at 800x1333 have 336-352)
MARGIN = 0.05  # the convolution must be this much faster to be chosen

_lock = threading.Lock()
_choices: Dict[str, str] = {}
_loaded_from: Optional[str] = None
_policy_override: Optional[str] = None


# --------------------------------------------------------------------------------------------- policy
def _policy() -> str:
    if _policy_override is not None:
        return _policy_override
    value = os.environ.get(KERNELS_ENV, "probe").strip().lower()
    if value not in POLICIES:
        raise ValueError("{}={!r}: expected one of {}".format(KERNELS_ENV, value, list(POLICIES)))
    return value


@contextmanager
def kernel_policy(policy: str) -> Iterator[None]:
    """Use ``policy`` ("probe", "plain" or "conv") inside the ``with`` block (tests, benchmarks)."""
    global _policy_override
    if policy not in POLICIES:
        raise ValueError("unknown kernel policy {!r}; valid: {}".format(policy, list(POLICIES)))
    old, _policy_override = _policy_override, policy
    try:
        yield
    finally:
        _policy_override = old


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _special_mode() -> bool:
    """Tracing, scripting, ONNX export or torch.compile: the plain ops, which every one supports."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    onnx = getattr(torch, "onnx", None)
    return bool(onnx is not None and hasattr(onnx, "is_in_onnx_export") and onnx.is_in_onnx_export())


def _applies(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 3 and x.is_contiguous()
            and not _autocast_on() and not _special_mode())


def _use_conv(kind: str, signature: Tuple[int, ...], tokens: int) -> bool:
    policy = _policy()
    if policy != "probe":
        return policy == "conv"  # forced: at any size (tests)
    return tokens >= MIN_TOKENS and choose(kind, signature) == "conv"


# --------------------------------------------------------------------------------------------- choice
#: Environment variables that restrict the instruction set of PyTorch's CPU libraries (part of the host key).
ISA_ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                "MKL_CBWR")
def _host_key() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = ",".join(sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"}))
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()  # the ATen kernel path in use (AVX512, AVX2, ...)
    except AttributeError:  # older torch
        capability = ""
    # Variables that move oneDNN / MKL / ATen to another instruction set change the measurement too.
    isa = ",".join("{}={}".format(k, os.environ[k]) for k in ISA_ENV_VARS if os.environ.get(k))
    text = "|".join([model, flags, capability, isa, torch.__version__, str(torch.get_num_threads())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cache_file() -> str:
    from afa_d2.model_zoo.hub import cache_root

    return os.path.join(cache_root(), "kernels", "{}.json".format(_host_key()))


def _load_cache() -> None:
    global _loaded_from
    path = _cache_file()
    if _loaded_from == path:
        return
    _loaded_from = path
    try:
        with open(path) as f:
            stored = json.load(f).get("choices", {})
        _choices.update({k: v for k, v in stored.items() if v in ("plain", "conv")})
    except (OSError, ValueError):
        pass


def _save_cache() -> None:
    path = _cache_file()
    try:
        from afa_d2.engine.checkpoint import atomic_write_text

        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {"host": {"processor": platform.processor(), "machine": platform.machine(),
                           "torch": torch.__version__, "threads": torch.get_num_threads()},
                  "choices": dict(sorted(_choices.items()))}
        atomic_write_text(json.dumps(record, indent=1), path)
    except OSError as e:  # a read-only cache only costs the probe again next time
        logger.debug("Kernel choices not saved to %s: %s", path, e)


def _time(fns: Dict[str, Callable[[], object]], reps: int = 3) -> Dict[str, float]:
    """Median seconds of each function, interleaved, after one untimed call each."""
    for fn in fns.values():
        fn()
    times: Dict[str, list] = {k: [] for k in fns}
    for r in range(reps):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _probe_linear(cin: int, cout: int) -> Dict[str, float]:
    g = torch.Generator().manual_seed(0)
    h, w = PROBE_HW
    x = torch.randn(1, h * w, cin, generator=g)
    weight, bias = torch.randn(cout, cin, generator=g) * cin ** -0.5, torch.zeros(cout)
    x_map, w4 = x.view(1, h, w, cin).permute(0, 3, 1, 2), weight[:, :, None, None]
    return _time({"plain": lambda: F.linear(x, weight, bias), "conv": lambda: F.conv2d(x_map, w4, bias)})


def _probe_attention(dim: int, heads: int) -> Dict[str, float]:
    g = torch.Generator().manual_seed(0)
    h, w = PROBE_HW
    q = torch.randn(1, h * w, dim, generator=g)
    k, v = (torch.randn(1, heads, PROBE_KEYS, dim // heads, generator=g) for _ in range(2))
    return _time({"plain": lambda: _attend_sdpa(q, k, v), "conv": lambda: _attend_conv(q, k, v, PROBE_HW)})


def choose(kind: str, signature: Tuple[int, ...]) -> str:
    """"plain" or "conv" for a product ``kind`` ("linear": (in, out); "attention": (C, heads))."""
    policy = _policy()
    if policy != "probe":
        return policy
    key = "{}:{}:t{}".format(kind, "x".join(map(str, signature)), torch.get_num_threads())
    with _lock:
        if key not in _choices:
            _load_cache()
        if key in _choices:
            return _choices[key]
        with torch.no_grad():
            times = _probe_linear(*signature) if kind == "linear" else _probe_attention(*signature)
        choice = "conv" if times["conv"] < (1.0 - MARGIN) * times["plain"] else "plain"
        _choices[key] = choice
        logger.info("MS-Att kernel for %s %s, %d threads: %s (probe on %d tokens: plain %.1f ms, conv %.1f ms)",
                    kind, signature, torch.get_num_threads(), choice, PROBE_TOKENS, 1e3 * times["plain"],
                    1e3 * times["conv"])
        _save_cache()
        return choice


def choices() -> Dict[str, str]:
    """The choices made or loaded so far in this process ("linear:256x512:t2" -> "conv")."""
    with _lock:
        return dict(_choices)


# --------------------------------------------------------------------------------------------- kernels
def token_linear(linear: nn.Linear, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """``linear(x)`` for tokens x of shape (N, H*W, C_in) on an H x W grid -> (N, H*W, C_out).

    As a 1x1 convolution of the channels-last view where that is the host's faster kernel (see the
    module's doc); the result is contiguous tokens either way, with the same gradients.
    """
    if _applies(x) and _use_conv("linear", (linear.in_features, linear.out_features), x.shape[1]):
        n, hw, cin = x.shape
        h, w = feat_size
        y = F.conv2d(x.view(n, h, w, cin).permute(0, 3, 1, 2), linear.weight[:, :, None, None], linear.bias)
        return y.permute(0, 2, 3, 1).reshape(n, hw, linear.out_features)  # (N, H*W, C_out), a view
    return linear(x)


def _attend_sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    n, hw, c = q.shape
    heads = k.shape[1]
    q4 = q.view(n, hw, heads, c // heads).transpose(1, 2)  # (N, heads, H*W, C/heads), a view
    att = F.scaled_dot_product_attention(q4, k, v)  # (N, heads, H*W, C/heads)
    return att.transpose(1, 2).reshape(n, hw, c)  # (N, H*W, C)


def _attend_conv(q: Tensor, k: Tensor, v: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """Attention as two grouped 1x1 convolutions per image, keys then values as the weights."""
    n, hw, c = q.shape
    heads, m, d = k.shape[1], k.shape[2], k.shape[3]
    h, w = feat_size
    out = torch.empty(n, h, w, c, dtype=q.dtype)
    for i in range(n):
        q_map = q[i:i + 1].view(1, h, w, c).permute(0, 3, 1, 2)  # (1, C, H, W), channels-last view
        w_k = (k[i] * d ** -0.5).reshape(heads * m, d, 1, 1)  # head-major, as q's channels
        s = F.conv2d(q_map, w_k, groups=heads)  # (1, heads*M, H, W): each head's scores
        s = s.permute(0, 2, 3, 1).reshape(hw, heads, m)  # (H*W, heads, M), a view
        s = s.softmax(dim=-1)
        s_map = s.view(1, h, w, heads * m).permute(0, 3, 1, 2)  # (1, heads*M, H, W), channels-last view
        w_v = v[i].transpose(1, 2).reshape(heads * d, m, 1, 1)  # (heads*d, M, 1, 1)
        out[i] = F.conv2d(s_map, w_v, groups=heads).permute(0, 2, 3, 1)[0]  # (H, W, C)
    return out.view(n, hw, c)


def attend(q: Tensor, k: Tensor, v: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """Multi-head attention of query tokens over pooled keys and values.

    Args:
        q: Tensor of shape (N, H*W, C), query tokens (heads along C, head-major); not scaled.
        k, v: Tensors of shape (N, heads, M, C/heads).
        feat_size: (H, W) of the query grid.

    Returns:
        Tensor of shape (N, H*W, C): ``softmax(Q K^T / sqrt(C/heads)) V``, heads concatenated.
    """
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not grad and _applies(q) and k.dtype == q.dtype and _use_conv("attention", (q.shape[2], k.shape[1]), q.shape[1]):
        return _attend_conv(q, k, v, feat_size)
    return _attend_sdpa(q, k, v)
