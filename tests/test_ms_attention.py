"""MSAttention: pooling of keys/values, shapes, the sdpa path, autocast, validation.

Its numerics against the paper's equations are in test_aggregation.py (reference MS-Att).
"""
import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import pytest
import torch
import torch.nn.functional as F

from afa_d2.modeling import MSAttention
from afa_d2.modeling.pooling import pool_tokens, pool_windows


def test_param_count_for_256_channels():
    # LN x3 (3*512) + Q (256*256+256) + fused KV (256*512+512) + proj (256*256+256)
    # + fc1 (256*512+512) + dwconv (512*9+512) + fc2 (512*256+256)
    assert sum(p.numel() for p in MSAttention(256).parameters()) == 532736


@pytest.mark.parametrize(
    "pooling,r,size,want_tokens",
    [
        ("multi_scale", 16, (200, 334), 13 * 21 + 7 * 11),  # p2 at 800x1333
        ("multi_scale", 2, (25, 42), 13 * 21 + 7 * 11),  # p5 at 800x1333
        ("multi_scale", 16, (25, 33), 2 * 3 + 1 * 2),  # 2r clamped to 25
        ("multi_scale", 16, (3, 5), 1 + 1),  # never below 1x1
        ("single_scale", 8, (100, 167), 13 * 21),
        ("single_scale", 16, (1, 1), 1),
        ("adaptive", 16, (50, 84), 49),
        ("adaptive", 16, (3, 5), 15),  # clamped to the input
    ],
)
def test_kv_token_count(pooling, r, size, want_tokens):
    attn = MSAttention(8, 2, pooling=pooling, pool_stride=r)
    x = torch.randn(1, 8, *size)
    assert attn.kv_tokens(x).shape == (1, want_tokens, 8)
    assert sum(p.tokens for p in pool_windows(*size, pooling, attn.pool_strides, 7)) == want_tokens


def test_partial_windows_average_only_the_inside():
    x = torch.arange(5 * 7, dtype=torch.float32).view(1, 1, 5, 7)
    tokens = pool_tokens(x, "single_scale", (4,), 7)[0, :, 0]  # windows 4x4, then partial
    want = torch.stack([x[0, 0, :4, :4].mean(), x[0, 0, :4, 4:].mean(), x[0, 0, 4:, :4].mean(), x[0, 0, 4:, 4:].mean()])
    assert tokens.tolist() == pytest.approx(want.tolist(), abs=1e-5)


@pytest.mark.parametrize("pooling", ["multi_scale", "single_scale", "adaptive"])
def test_shapes_self_and_cross(pooling):
    torch.manual_seed(0)
    attn = MSAttention(16, 4, pooling=pooling, pool_stride=4).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.3)  # away from the near-identity init
    xq, xkv = torch.randn(2, 16, 9, 11), torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        out_self, out_cross = attn(xq), attn(xq, xkv)
        assert out_self.shape == (2, 16, 9, 11) and out_cross.shape == (2, 16, 9, 11)
        assert (attn(xq, xq) - out_self).abs().max().item() < 1e-5
        assert (out_self - out_cross).abs().max().item() > 1e-2  # the key/value source matters


def test_uses_scaled_dot_product_attention(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    attn = MSAttention(16, 4, pool_stride=4)
    attn(torch.randn(2, 16, 8, 12))
    # (N, heads, H*W, C/heads) queries against 2x3 + 1x2 pooled tokens
    assert calls == [((2, 4, 96, 4), (2, 4, 8, 4))]


def test_channels_last_and_autocast_bf16():
    torch.manual_seed(0)
    attn = MSAttention(16, 4, pool_stride=2).eval()
    x = torch.randn(2, 16, 10, 14)
    with torch.no_grad():
        ref = attn(x)
        cl = attn(x.to(memory_format=torch.channels_last))
        assert (cl - ref).abs().max().item() < 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = attn(x)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max().item() < 0.1 * ref.abs().max().item()


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(num_heads=3), r"num_heads=3.*dim=16.*valid: \[1, 2, 4, 8, 16\]"),
        (dict(pooling="max"), r"'max'.*multi_scale.*single_scale.*adaptive"),
        (dict(pool_stride=0), r"pool_stride.*0"),
        (dict(pool_stride=-2), r"pool_stride.*-2"),
        (dict(adaptive_pool_size=0), r"adaptive_pool_size.*0"),
        (dict(mlp_ratio=0.0), r"mlp_ratio.*0.0"),
        (dict(checkpoint_mlp="yes"), r"checkpoint_mlp must be a bool, got 'yes'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MSAttention(16, **kwargs)


# ------------------------------------------------- the fast path against the straightforward one
def _randomized(attn, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            base = 1.0 if name.endswith("weight") and p.dim() == 1 else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return attn


@pytest.mark.parametrize("pooling", ["multi_scale", "single_scale", "adaptive"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size,kv_size", [((97, 131), None), ((12, 9), (5, 7)), ((1, 1), None)])
def test_fast_forward_equals_reference(pooling, channels_last, size, kv_size):
    attn = _randomized(MSAttention(16, 4, pooling=pooling, pool_stride=8)).eval()
    g = torch.Generator().manual_seed(1)
    xq = torch.randn(2, 16, *size, generator=g)
    xkv = None if kv_size is None else torch.randn(2, 16, *kv_size, generator=g)
    if channels_last:
        xq = xq.to(memory_format=torch.channels_last)
        xkv = None if xkv is None else xkv.to(memory_format=torch.channels_last)
    xq_before = xq.clone()
    with torch.no_grad():
        want = attn.forward_reference(xq, xkv)
        got = attn(xq, xkv)
    assert got.shape == want.shape == (2, 16) + size
    assert got.is_contiguous(memory_format=torch.channels_last)  # a view of the tokens
    assert (got - want).abs().max().item() < 1e-4, (got - want).abs().max().item()
    assert want.abs().mean().item() > 0.1
    assert torch.equal(xq, xq_before)  # in-place residuals never touch the input


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_gradients_equal_reference(channels_last):
    attn = _randomized(MSAttention(16, 4, pool_stride=4), 2).train()
    g = torch.Generator().manual_seed(3)
    xq, xkv = torch.randn(2, 16, 13, 11, generator=g), torch.randn(2, 16, 7, 6, generator=g)
    w = torch.randn(2, 16, 13, 11, generator=g)  # a loss that weighs every output differently
    grads = []
    for fn in (attn.forward_reference, attn.forward):
        attn.zero_grad(set_to_none=True)
        a, b = xq.clone().requires_grad_(), xkv.clone().requires_grad_()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        (fn(a.to(memory_format=fmt), b.to(memory_format=fmt)) * w).sum().backward()
        grads.append({"x_q": a.grad, "x_kv": b.grad, **{n: p.grad for n, p in attn.named_parameters()}})
    ref, fast = grads
    for name in ref:
        assert fast[name] is not None, "no gradient for {}".format(name)
        err = (fast[name] - ref[name]).abs().max().item()
        assert err < 1e-4 * max(1.0, ref[name].abs().max().item()), "{}: {}".format(name, err)


def test_tokens_round_trip_without_copies():
    from afa_d2.modeling.tokens import from_tokens, to_tokens

    x = torch.randn(2, 8, 5, 7).to(memory_format=torch.channels_last)
    t = to_tokens(x)
    assert t.shape == (2, 35, 8) and t.data_ptr() == x.data_ptr()  # a view
    assert torch.equal(t, x.flatten(2).transpose(1, 2))
    back = from_tokens(t, (5, 7))
    assert back.data_ptr() == x.data_ptr() and torch.equal(back, x)
    plain = torch.randn(2, 8, 5, 7)
    assert torch.equal(to_tokens(plain), plain.flatten(2).transpose(1, 2))


# ------------------------------------------------- recomputing the DW-MLP branch in backward
def _saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (distinct storages)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_checkpoint_mlp_same_gradients_fewer_saved_activations():
    """checkpoint_mlp changes no value and no gradient, and keeps far fewer activations: the
    branch's LN output, FC1 output, DW-conv output and GELU output (7 of ~12 C-channel tensors
    per token) are recomputed in backward instead."""
    g = torch.Generator().manual_seed(5)
    xq, xkv = torch.randn(2, 32, 40, 36, generator=g), torch.randn(2, 32, 20, 18, generator=g)
    w = torch.randn(2, 32, 40, 36, generator=g)
    results = {}
    for ckpt in (False, True):
        attn = _randomized(MSAttention(32, 4, pool_stride=4, checkpoint_mlp=ckpt), 4).train()
        a, b = xq.clone().requires_grad_(), xkv.clone().requires_grad_()
        out, saved = _saved_bytes(lambda: attn(a, b))
        (out * w).sum().backward()
        results[ckpt] = (out.detach(), saved, {"x_q": a.grad, "x_kv": b.grad,
                                               **{n: p.grad for n, p in attn.named_parameters()}})
    (out0, saved0, g0), (out1, saved1, g1) = results[False], results[True]
    assert torch.equal(out0, out1)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-5, atol=1e-6), name
    token_bytes = 2 * 40 * 36 * 32 * 4  # one (N, H*W, C) fp32 tensor
    assert saved0 - saved1 > 6 * token_bytes, (saved0 / token_bytes, saved1 / token_bytes)
    assert saved1 < 0.6 * saved0


def test_checkpoint_mlp_is_free_at_inference():
    attn = _randomized(MSAttention(16, 4, pool_stride=4, checkpoint_mlp=True)).eval()
    x = torch.randn(1, 16, 9, 10)
    with torch.no_grad():
        want = attn.forward_reference(x)
        got = attn(x)
    assert (got - want).abs().max().item() < 1e-4


def test_a_bool_is_not_a_number_of_heads_anywhere():
    """MSAttention and AttentionFPN check MS-Att's arguments with the same function: a bool is
    refused by both (it used to pass MSAttention as 1 head and fail AttentionFPN)."""
    from afa_d2.modeling.ms_attention import check_attention_args

    with pytest.raises(ValueError, match=r"MSAttention: num_heads=True must be a positive int dividing dim=16"):
        MSAttention(16, True)
    with pytest.raises(ValueError, match=r"mlp_ratio must be a number > 0, got True"):
        MSAttention(16, 4, mlp_ratio=True)
    with pytest.raises(ValueError, match=r"X: pool_stride must be positive ints, got False"):
        check_attention_args(dim=16, num_heads=4, pooling="multi_scale", pool_strides=[False], adaptive_pool_size=7,
                             mlp_ratio=2.0, checkpoint_mlp=False, where="X")


@pytest.mark.parametrize("pooling", ["multi_scale", "single_scale", "adaptive"])
def test_pool_windows_describe_the_tokens_pool_tokens_makes(pooling):
    """The one description of MS-Att's key/value geometry: as many tokens, in the same grids, as pool_tokens
    makes, on maps below and above the strides; a kernel is the stride unless the map is smaller."""
    from afa_d2.modeling.pooling import pool_tokens, pool_windows

    m = MSAttention(16, 4, pooling=pooling, pool_stride=4, adaptive_pool_size=3)
    for h, w in [(1, 1), (3, 5), (8, 8), (9, 17), (40, 23)]:
        pools = m.pool_windows(h, w)
        assert sum(p.tokens for p in pools) == pool_tokens(torch.zeros(1, 16, h, w), m.pooling, m.pool_strides,
                                                           m.adaptive_pool_size).shape[1], (h, w)
        if pooling != "adaptive":
            assert [p.kernel for p in pools] == [(min(s, h), min(s, w)) for s in m.pool_strides]
        assert pools == pool_windows(h, w, m.pooling, m.pool_strides, m.adaptive_pool_size)
    assert m.unclamped_size == {"multi_scale": 8, "single_scale": 4, "adaptive": None}[pooling]
    assert [p.name for p in m.pool_windows(40, 40)] == {"multi_scale": ["r=4", "r=8"], "single_scale": ["r=4"],
                                                        "adaptive": ["3x3 adaptive"]}[pooling]


def test_attention_weights_are_a_softmax_over_the_pooled_tokens():
    """One row per head and query, over the tokens pool_windows describes; a subset of queries gives the same rows;
    an index outside the query grid is refused."""
    torch.manual_seed(0)
    m = MSAttention(16, 4, pool_stride=2)
    x_q, x_kv = torch.randn(2, 16, 5, 7), torch.randn(2, 16, 5, 7)
    weights = m.attention_weights(x_q, x_kv)
    tokens = sum(p.tokens for p in m.pool_windows(5, 7))
    assert weights.shape == (2, 4, 35, tokens) and weights.dtype == torch.float32
    assert (weights.sum(dim=-1) - 1).abs().max() < 1e-6 and (weights > 0).all()
    assert (m.attention_weights(x_q, x_kv, [3, 34]) - weights[:, :, [3, 34]]).abs().max() < 1e-6
    assert (m.attention_weights(x_q) - m.attention_weights(x_q, x_q)).abs().max() == 0
    with pytest.raises(ValueError, match=r"query index 35 is outside the 5x7 grid; valid: 0 to 34"):
        m.attention_weights(x_q, x_kv, [0, 35])
