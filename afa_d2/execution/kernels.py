"""Which CPU kernel computes MS-Att's large products: chosen per host, by measuring both.

Two products dominate MS-Att on a large map (p2 at 800x1333 is 200x336 = 67,200 tokens):

* the token linears (Q, K/V, the output projection, the DW-MLP's two FCs): ``F.linear`` on
  (N, H*W, C) tokens runs through BLAS (MKL's GEMM); the same product is a 1x1 convolution of the
  channels-last (N, C, H, W) view of the same memory, which runs through oneDNN;
* the box head's fully connected layers on the RoIs (fc1: 1,000 x 12,544 -> 1,024 at test time, about
  as many multiply-adds as all of MS-Att's Q projections): ``F.linear`` on (R, C_in) rows, or a 1x1
  convolution of the same rows viewed as a channels-last (1, C_in, R, 1) map
  (:func:`rows_linear`, :class:`RowsLinear`, installed by :func:`afa_d2.execution.runtime.prepare_for_cpu_inference`);
* the mask head's 3x3 convolutions on the detections (100 x 256 x 14 x 14 at 800x1333, four of them,
  about as many multiply-adds as one 3x3 convolution of p2): oneDNN's direct convolution, or NNPACK's
  batched convolution (:class:`BatchedConv2d`, also installed by ``prepare_for_cpu_inference``), which
  PyTorch builds in for x86-64 with AVX2 and ARM but does not pick for these. It is chosen only where
  its probe is at least as accurate as oneDNN's against a float64 reference (NNPACK's algorithm depends
  on the map size: 2e-6 at 14x14, 5e-5 at 7x7, where it is not taken) and ``MARGIN`` faster, and only for
  batches of at least ``MIN_BATCH_3X3`` maps;
* attention over the ~350 pooled keys: ``scaled_dot_product_attention``, or two grouped 1x1
  convolutions of that view, keys then values as the weights, with a softmax over each head's keys
  in between (per image: the weights differ from image to image).

Which is faster depends on the host, not on the code (the README's "CPU speed" list has what two hosts
measured, in opposite directions). So the choice is measured: the first time a product of a given shape
signature is needed (in a process whose choice is not cached yet), :func:`choose` times both kernels on a
probe of ``PROBE_TOKENS`` tokens with the current thread count, keeps the faster (the convolution only
when it is at least ``MARGIN`` faster), and caches the result in memory and in
``$AFA_D2_CACHE/kernels/<host>.json`` (the folder: ``$AFA_D2_KERNEL_CACHE`` where set; the host key:
CPU model and flags, torch version, threads), so later processes skip the probe. The probe times the
functions the layers call, not copies of them: :func:`linear_ways`, :func:`attention_ways` and
:func:`conv3x3_ways` give both of each pair (to ``tools/benchmark.py --kernels`` too, on the sizes of a
real image). ``AFA_D2_KERNELS`` overrides the choice: ``probe`` (default), ``plain`` (always
``F.linear`` / SDPA) or ``conv`` (always the convolutions; tests use it on any host).

**Low precision.** Under CPU bf16 autocast both kernels of a pair compute in bf16 (autocast casts the
inputs of ``F.linear`` and ``F.conv2d`` alike), so the choice is made for bf16 separately: the key of a
choice names its precision ("linear:256x512:t2:bf16"), and its probe runs under the caller's autocast,
timing the bf16 kernels (oneDNN's bf16 convolution against the bf16 GEMM, the grouped bf16 convolutions
against SDPA's bf16 kernel). NNPACK has no bf16 kernel: the 3x3 choice is fp32 only.

The convolutions are only used where they compute the same thing in the same precision: CPU,
float32 without autocast or under bf16 autocast, not while tracing, scripting, exporting or compiling,
contiguous tokens, at
least ``MIN_TOKENS`` tokens (rows: ``MIN_ROWS_MACS`` multiply-adds) unless forced (below, call
overhead dominates); rows only without autograd (inference: the box head's training step keeps
``F.linear``); attention by convolution only without autograd (its score tensor,
(N, heads * M, H, W), would be kept for backward: training keeps SDPA, which never materialises
it). Everything else takes the plain
path, which is also what :meth:`MSAttention.forward_reference` uses.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
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

from afa_d2.compat import autocast_state, nnpack_spatial_convolution
from afa_d2.modeling.tokens import plain_attend

__all__ = [
    "KERNELS_ENV",
    "MARGIN",
    "MIN_TOKENS",
    "PROBE_TOKENS",
    "BatchedConv2d",
    "RowsLinear",
    "attend",
    "attention_ways",
    "choices",
    "choose",
    "conv3x3_ways",
    "kernel_policy",
    "linear_ways",
    "rows_linear",
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
# A linear whose probe on PROBE_TOKENS tokens would take more multiply-adds than this (the box head's
# fc1, 12544 -> 1024: 105 G) is probed on PROBE_ROWS rows laid out as rows_linear lays them out.
PROBE_MAX_MACS = PROBE_TOKENS * 512 * 512
PROBE_ROWS = 1024
# Rows (R, C_in) take the choice from this many multiply-adds (fc1 on 1,000 RoIs: 12.8 G, fc2: 1.07 G).
MIN_ROWS_MACS = MIN_TOKENS * 256 * 256
# Batched 3x3 convolutions take the choice from this many maps (PyTorch's own NNPACK threshold); the
# probe runs PROBE_BATCH_3X3 maps. At 30 maps of 256 x 14 x 14 the two kernels tied here, at 100 NNPACK
# took 0.73 of oneDNN's time.
MIN_BATCH_3X3 = 16
PROBE_BATCH_3X3 = 64

_lock = threading.Lock()
_choices: Dict[str, str] = {}
_used: set = set()  # the keys this process asked for (the cache file may hold others)
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
    return autocast_state("cpu")[0]


def _precision() -> Optional[str]:
    """The precision the kernels compute in here: "fp32" (no CPU autocast), "bf16" (CPU bf16 autocast), or
    None (another autocast dtype: the plain ops)."""
    enabled, dtype = autocast_state("cpu")
    if not enabled:
        return "fp32"
    return "bf16" if dtype == torch.bfloat16 else None


def _special_mode() -> bool:
    """Tracing, scripting, ONNX export or torch.compile: the plain ops, which every one supports."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    onnx = getattr(torch, "onnx", None)
    return bool(onnx is not None and hasattr(onnx, "is_in_onnx_export") and onnx.is_in_onnx_export())


def _applies(x: Tensor, dim: int = 3, low_precision: bool = True) -> bool:
    """Whether the measured kernels may run on ``x``: CPU, contiguous tokens, fp32 without autocast or
    (``low_precision``) fp32 / bf16 under CPU bf16 autocast, no tracing or compiling."""
    if x.device.type != "cpu" or x.dim() != dim or (dim == 3 and not x.is_contiguous()) or _special_mode():
        return False
    precision = _precision()
    if precision == "fp32":
        return x.dtype == torch.float32
    return low_precision and precision == "bf16" and x.dtype in (torch.float32, torch.bfloat16)


def nnpack_available() -> bool:
    """Whether this PyTorch build has NNPACK and it initialised on this CPU (which it must be asked
    before the first NNPACK call)."""
    try:
        return bool(torch.backends.nnpack.is_available())
    except (AttributeError, RuntimeError):
        return False


def _use_conv(kind: str, signature: Tuple[int, ...], large: bool) -> bool:
    """Whether to take the convolution: forced by the policy (at any size: tests), else measured for
    a ``large`` enough product (below the size limits, call overhead dominates and nothing is probed)."""
    policy = _policy()
    if policy != "probe":
        return policy == "conv"
    return large and choose(kind, signature) == "conv"


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


#: Where the choices are kept instead of ``$AFA_D2_CACHE/kernels`` (the test suite points it at a temporary
#: folder, so that choices measured on a host busy with tests never reach the user's cache).
KERNEL_CACHE_ENV = "AFA_D2_KERNEL_CACHE"


def _cache_file() -> str:
    from afa_d2.storage import cache_root

    folder = os.environ.get(KERNEL_CACHE_ENV) or os.path.join(cache_root(), "kernels")
    return os.path.join(os.path.abspath(os.path.expanduser(folder)), "{}.json".format(_host_key()))


def _load_cache() -> None:
    global _loaded_from
    path = _cache_file()
    if _loaded_from == path:
        return
    _loaded_from = path
    try:
        with open(path) as f:
            stored = json.load(f).get("choices", {})
        _choices.update({k: v for k, v in stored.items() if v in ("plain", "conv")})  # "conv": the alternative
    except (OSError, ValueError):
        pass


def _save_cache() -> None:
    path = _cache_file()
    try:
        from afa_d2.storage import atomic_write_text

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


def _probe_map(cin: int, cout: int) -> Tuple[int, int]:
    """The (H, W) of a linear's probe: PROBE_HW, or PROBE_ROWS x 1 (as :func:`rows_linear` lays its
    rows out) where PROBE_HW would take more than PROBE_MAX_MACS multiply-adds."""
    return PROBE_HW if PROBE_TOKENS * cin * cout <= PROBE_MAX_MACS else (PROBE_ROWS, 1)


def _probe_linear(cin: int, cout: int) -> Dict[str, float]:
    g = torch.Generator().manual_seed(0)
    h, w = _probe_map(cin, cout)
    weight, bias = torch.randn(cout, cin, generator=g) * cin ** -0.5, torch.zeros(cout)
    if (h, w) == PROBE_HW:
        return _time(linear_ways(torch.randn(1, h * w, cin, generator=g), weight, bias, (h, w)))
    return _time(linear_ways(torch.randn(h, cin, generator=g), weight, bias))  # rows


def _probe_attention(dim: int, heads: int) -> Dict[str, float]:
    g = torch.Generator().manual_seed(0)
    h, w = PROBE_HW
    q = torch.randn(1, h * w, dim, generator=g)
    k, v = (torch.randn(1, heads, PROBE_KEYS, dim // heads, generator=g) for _ in range(2))
    return _time(attention_ways(q, k, v, PROBE_HW))


def _nnpack_conv3x3(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """3x3, stride 1, padding 1 convolution of NCHW ``x`` by NNPACK (NCHW out)."""
    return nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [1, 1])


def _probe_conv3x3(cin: int, cout: int, h: int, w: int) -> Dict[str, float]:
    """oneDNN's and NNPACK's time on PROBE_BATCH_3X3 maps; NNPACK's is infinite where it is missing or
    less accurate than oneDNN against a float64 reference on the probe (unit-scale outputs)."""
    if not nnpack_available():
        return {"plain": 1.0, "conv": math.inf}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_BATCH_3X3, cin, h, w, generator=g)
    weight, bias = torch.randn(cout, cin, 3, 3, generator=g) * (9 * cin) ** -0.5, torch.randn(cout, generator=g)
    n = MIN_BATCH_3X3  # the accuracy on the smallest batch it would run
    exact = F.conv2d(x[:n].double(), weight.double(), bias.double(), padding=1)
    errors = {way: (fn().double() - exact).abs().max().item() for way, fn in conv3x3_ways(x[:n], weight, bias).items()}
    times = _time(conv3x3_ways(x, weight, bias))
    if errors["conv"] > max(errors["plain"], 1e-6):
        logger.info("NNPACK's 3x3 convolution at %s: max error %.1e, oneDNN's %.1e: not used", (cin, cout, h, w),
                    errors["conv"], errors["plain"])
        times["conv"] = math.inf
    return times


# --------------------------------------------------------------------------------------------- the ways
# Each choice is between two functions of the same inputs: "plain" and "conv" (:data:`ALTERNATIVES`). The
# probes time these, ``tools/benchmark.py --kernels`` times these, and the model's layers call the same ones.
def _tokens_conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor], feat_size: Tuple[int, int]) -> Tensor:
    """``F.linear(x, weight, bias)`` of tokens (N, H*W, C_in) as a 1x1 convolution of their channels-last
    view -> (N, H*W, C_out), a view of the convolution's channels-last output."""
    n, hw, cin = x.shape
    h, w = feat_size
    y = F.conv2d(x.view(n, h, w, cin).permute(0, 3, 1, 2), weight[:, :, None, None], bias)
    return y.permute(0, 2, 3, 1).reshape(n, hw, weight.shape[0])


def _rows_conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear(x, weight, bias)`` of rows (R, C_in) as a 1x1 convolution of the rows viewed as a
    channels-last (1, C_in, R, 1) map -> (R, C_out)."""
    r, cin = x.shape
    y = F.conv2d(x.view(1, r, 1, cin).permute(0, 3, 1, 2), weight[:, :, None, None], bias)
    return y.permute(0, 2, 3, 1).reshape(r, weight.shape[0])


def linear_ways(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                feat_size: Optional[Tuple[int, int]] = None) -> Dict[str, Callable[[], Tensor]]:
    """``F.linear`` and the 1x1 convolution, on tokens (N, H*W, C_in) of a ``feat_size`` grid, or on rows
    (R, C_in) where ``feat_size`` is None: {"plain": ..., "conv": ...}, each computing (.., C_out)."""
    if feat_size is None:
        conv = lambda: _rows_conv1x1(x, weight, bias)  # noqa: E731
    else:
        conv = lambda: _tokens_conv1x1(x, weight, bias, feat_size)  # noqa: E731
    return {"plain": lambda: F.linear(x, weight, bias), "conv": conv}


def attention_ways(q: Tensor, k: Tensor, v: Tensor, feat_size: Tuple[int, int]) -> Dict[str, Callable[[], Tensor]]:
    """SDPA and the grouped 1x1 convolutions (see :func:`attend` for the shapes): {"plain": ..., "conv": ...}."""
    return {"plain": lambda: plain_attend(q, k, v, feat_size), "conv": lambda: _attend_conv(q, k, v, feat_size)}


def conv3x3_ways(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Dict[str, Callable[[], Tensor]]:
    """A 3x3, stride 1, padding 1 convolution of a batch of maps (N, C_in, H, W): oneDNN on channels-last
    copies (made here, not timed; "plain") and NNPACK's batched convolution ("conv", only where this build
    has NNPACK)."""
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), weight.contiguous(memory_format=torch.channels_last)
    ways = {"plain": lambda: F.conv2d(x_cl, w_cl, bias, padding=1)}
    if nnpack_available():
        ways["conv"] = lambda: _nnpack_conv3x3(x, weight, bias)
    return ways


#: What "conv" names for each kind: the alternative to the plain op.
ALTERNATIVES = {"linear": "1x1 conv (oneDNN)", "attention": "grouped 1x1 convs (oneDNN)",
                "conv3x3": "NNPACK's batched convolution"}


def choose(kind: str, signature: Tuple[int, ...]) -> str:
    """"plain" or "conv" (the alternative kernel, :data:`ALTERNATIVES`) for a product ``kind``
    ("linear": (in, out); "attention": (C, heads); "conv3x3": (in, out, H, W))."""
    policy = _policy()
    if policy != "probe":
        return policy
    precision = _precision() or "fp32"
    key = "{}:{}:t{}{}".format(kind, "x".join(map(str, signature)), torch.get_num_threads(),
                               "" if precision == "fp32" else ":" + precision)
    with _lock:
        if key not in _choices:
            _load_cache()
        _used.add(key)
        if key in _choices:
            return _choices[key]
        with torch.no_grad():
            probe = {"linear": _probe_linear, "attention": _probe_attention, "conv3x3": _probe_conv3x3}[kind]
            times = probe(*signature)
        choice = "conv" if times["conv"] < (1.0 - MARGIN) * times["plain"] else "plain"
        _choices[key] = choice
        alternative = ("{:.1f} ms".format(1e3 * times["conv"]) if math.isfinite(times["conv"])
                       else "not timed: missing or less accurate")
        logger.info("CPU kernel for %s %s, %d threads, %s: %s (probe: plain %.1f ms, %s %s); kept in %s, delete "
                    "it to measure again", kind, signature, torch.get_num_threads(), precision,
                    "plain" if choice == "plain" else ALTERNATIVES[kind], 1e3 * times["plain"], ALTERNATIVES[kind],
                    alternative, _cache_file())
        _save_cache()
        return choice


def choices() -> Dict[str, str]:
    """The choices made or loaded so far in this process ("linear:256x512:t2" -> "conv")."""
    with _lock:
        return dict(_choices)


def describe_choices() -> Dict[str, str]:
    """The choices this process used (not every one the host's cache file holds), each "conv" named
    (:data:`ALTERNATIVES`): "conv3x3:256x256:14x14:t2" -> "NNPACK's batched convolution"."""
    with _lock:
        used = {key: _choices[key] for key in sorted(_used) if key in _choices}
    return {key: ALTERNATIVES.get(key.split(":")[0], value) if value == "conv" else value
            for key, value in used.items()}


# --------------------------------------------------------------------------------------------- kernels
def token_linear(linear: nn.Linear, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """``linear(x)`` for tokens x of shape (N, H*W, C_in) on an H x W grid -> (N, H*W, C_out).

    As a 1x1 convolution of the channels-last view where that is the host's faster kernel (see the
    module's doc); the result is contiguous tokens either way, with the same gradients.
    """
    if _applies(x) and _use_conv("linear", (linear.in_features, linear.out_features), x.shape[1] >= MIN_TOKENS):
        return _tokens_conv1x1(x, linear.weight, linear.bias, feat_size)  # (N, H*W, C_out), a view
    return linear(x)


def _sharing_parameters(new: nn.Module, layer: nn.Module) -> nn.Module:
    """``new`` (built on the meta device) holding ``layer``'s own weight and bias, in its train/eval mode."""
    new.weight = layer.weight
    new.bias = layer.bias
    return new.train(layer.training)


def rows_linear(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear(x)`` for rows x of shape (R, C_in) (the box head's flattened RoI features) -> (R, C_out).

    Without autograd, as a 1x1 convolution of the rows viewed as a channels-last (1, C_in, R, 1) map
    where that is the host's faster kernel (the same choice as :func:`token_linear`'s, per
    (C_in, C_out)) and the product has at least ``MIN_ROWS_MACS`` multiply-adds; else ``F.linear``.
    """
    if x.dim() == 2 and not torch.is_grad_enabled() and _applies(x.unsqueeze(0)):
        r, cin = x.shape
        cout = linear.out_features
        if _use_conv("linear", (cin, cout), r * cin * cout >= MIN_ROWS_MACS):
            return _rows_conv1x1(x, linear.weight, linear.bias)  # (R, C_out)
    return F.linear(x, linear.weight, linear.bias)  # not linear(x): RowsLinear's forward is this function


class RowsLinear(nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`rows_linear`: the same parameters, state_dict and values.

    :func:`afa_d2.execution.runtime.prepare_for_cpu_inference` puts one in place of each fully connected layer of
    detectron2's box head (:meth:`from_linear` shares the layer's parameters).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "RowsLinear":
        return _sharing_parameters(
            cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta"), linear)

    def forward(self, x: Tensor) -> Tensor:
        return rows_linear(self, x)


def _detectron2_conv2d():
    from detectron2.layers import Conv2d

    return Conv2d


class BatchedConv2d(_detectron2_conv2d()):
    """detectron2's ``Conv2d`` (3x3, stride 1, padding 1) that runs a large batch of maps without
    autograd through the host's faster kernel: NNPACK where :func:`choose` measured it faster and at
    least as accurate (``"conv3x3"``), else oneDNN. Norm and activation as detectron2's; the output is
    NCHW on NNPACK's path (the next layer's convolution takes either layout).

    :func:`afa_d2.execution.runtime.prepare_for_cpu_inference` puts one in place of each such convolution of the
    mask head and the box head (:meth:`from_conv` shares the layer's parameters and modules).
    """

    @classmethod
    def applies_to(cls, conv: nn.Module) -> bool:
        """A plain 3x3 convolution: torch's or detectron2's ``Conv2d`` exactly (a subclass may compute
        something else), stride 1, padding 1, no dilation or groups."""
        return (type(conv) in (nn.Conv2d, _detectron2_conv2d()) and conv.kernel_size == (3, 3)
                and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
                and conv.groups == 1 and conv.padding_mode == "zeros")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "BatchedConv2d":
        new = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None, device="meta",
                  norm=getattr(conv, "norm", None), activation=getattr(conv, "activation", None))
        return _sharing_parameters(new, conv)

    def forward(self, x: Tensor) -> Tensor:
        if (not torch.is_grad_enabled() and _applies(x, dim=4, low_precision=False) and x.shape[0] >= MIN_BATCH_3X3
                and _use_conv("conv3x3", (self.in_channels, self.out_channels, x.shape[2], x.shape[3]), True)
                and nnpack_available()):
            x = _nnpack_conv3x3(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
            if self.activation is not None:
                x = self.activation(x)
            return x
        return super().forward(x)


def _attend_conv(q: Tensor, k: Tensor, v: Tensor, feat_size: Tuple[int, int]) -> Tensor:
    """Attention as two grouped 1x1 convolutions per image, keys then values as the weights."""
    n, hw, c = q.shape
    heads, m, d = k.shape[1], k.shape[2], k.shape[3]
    h, w = feat_size
    out = torch.empty(n, h, w, c, dtype=torch.bfloat16 if _precision() == "bf16" else q.dtype)
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
    if (not grad and _applies(q) and (k.dtype == q.dtype or _precision() == "bf16")
            and _use_conv("attention", (q.shape[2], k.shape[1]), q.shape[1] >= MIN_TOKENS)):
        return _attend_conv(q, k, v, feat_size)
    return plain_attend(q, k, v, feat_size)
