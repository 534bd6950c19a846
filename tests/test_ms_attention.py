"""MSAttention: pooling of keys/values, shapes, the sdpa path, autocast, validation.

Its numerics against the paper's equations are in test_aggregation.py (reference MS-Att).
"""
import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import pytest
import torch
import torch.nn.functional as F

from afa_d2.modeling import MSAttention
from afa_d2.modeling.ms_attention import _pool_output_sizes, pool_tokens


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
    assert sum(h * w for h, w in _pool_output_sizes(*size, pooling, attn.pool_strides, 7)) == want_tokens


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
    ],
)
def test_bad_arguments_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MSAttention(16, **kwargs)
