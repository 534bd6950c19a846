"""The operators against an independent computation of the paper's equations (1)-(7).

The reference below is written from the paper (§3.1-3.3) and docs/DESIGN.md, "The method" with explicit loops,
matmuls and softmax (no ``scaled_dot_product_attention``, no ``avg_pool2d``, no ``Conv2d``,
no ``LayerNorm`` module), reading only the weights from the module under test.
"""
import math

import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import pytest
import torch
import torch.nn.functional as F

from afa_d2.modeling.aggregation import (
    AGGREGATION_OPS,
    ConcatAggregation,
    MSCAAggregation,
    MSSAAggregation,
    SumAggregation,
    build_aggregation,
)

C = 16
HEADS = 4


# ------------------------------------------------------------------ reference, from the paper
def ref_layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_avg_pool(x, r):
    """Windows of r x r (clamped to the input), the last ones partial: mean of what is inside."""
    _, _, h, w = x.shape
    kh, kw = min(r, h), min(r, w)
    rows = []
    for i in range(0, h, kh):
        rows.append(torch.stack([x[:, :, i:i + kh, j:j + kw].mean(dim=(2, 3)) for j in range(0, w, kw)], -1))
    return torch.stack(rows, -2)  # (N, C, ceil(h/kh), ceil(w/kw))


def ref_adaptive_pool(x, s):
    _, _, h, w = x.shape
    oh, ow = min(s, h), min(s, w)
    rows = []
    for i in range(oh):
        h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        row = []
        for j in range(ow):
            w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            row.append(x[:, :, h0:h1, w0:w1].mean(dim=(2, 3)))
        rows.append(torch.stack(row, -1))
    return torch.stack(rows, -2)


def ref_depthwise3x3(x, conv):
    _, _, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    out = conv.bias.view(1, -1, 1, 1).expand_as(x).clone()
    for di in range(3):
        for dj in range(3):
            out = out + conv.weight[:, 0, di, dj].view(1, -1, 1, 1) * xp[:, :, di:di + h, dj:dj + w]
    return out


def ref_ms_att(attn, x_q, x_kv, pooling, r, adaptive=7):
    """p_q = f_q + DW-MLP(LN(f_q + Att)), Att = W_o softmax(Q K^T / sqrt(d_k)) V (eqs. 5-7)."""
    n, c, h, w = x_q.shape
    f_q = x_q.flatten(2).transpose(1, 2)
    if pooling == "multi_scale":
        pools = [ref_avg_pool(x_kv, r), ref_avg_pool(x_kv, 2 * r)]
    elif pooling == "single_scale":
        pools = [ref_avg_pool(x_kv, r)]
    else:
        pools = [ref_adaptive_pool(x_kv, adaptive)]
    f_kv = torch.cat([p.flatten(2) for p in pools], 2).transpose(1, 2)
    wk, wv = attn.kv.weight[:c], attn.kv.weight[c:]
    bk, bv = attn.kv.bias[:c], attn.kv.bias[c:]
    q = ref_layer_norm(f_q, attn.norm_q) @ attn.q.weight.T + attn.q.bias  # eq. 5
    kv_in = ref_layer_norm(f_kv, attn.norm_kv)
    k, v = kv_in @ wk.T + bk, kv_in @ wv.T + bv
    d = c // attn.num_heads
    heads = []
    for j in range(attn.num_heads):
        sl = slice(j * d, (j + 1) * d)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)  # eq. 6
        heads.append(weights @ v[..., sl])
    att = torch.cat(heads, -1) @ attn.proj.weight.T + attn.proj.bias
    y = ref_layer_norm(f_q + att, attn.norm_mlp)  # eq. 7
    mlp = attn.mlp
    hid = y @ mlp.fc1.weight.T + mlp.fc1.bias
    hid = ref_depthwise3x3(hid.transpose(1, 2).reshape(n, -1, h, w), mlp.dwconv).flatten(2).transpose(1, 2)
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))  # GELU
    p_q = f_q + hid @ mlp.fc2.weight.T + mlp.fc2.bias
    return p_q.transpose(1, 2).reshape(n, c, h, w)


def _randomize(module, seed=0):
    """Random values everywhere (biases and LayerNorm affine too), so no zero-init hides a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if p.dim() <= 1 else 1.0 / math.sqrt(p[0].numel())
            base = 1.0 if name.endswith("weight") and p.dim() == 1 else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
    return module


def _maps(seed, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


CASES = [  # pooling, r, F_i size, P_{i+1} size
    ("multi_scale", 4, (13, 17), (7, 9)),
    ("multi_scale", 16, (25, 33), (13, 17)),  # 2r = 32 > 25: clamped
    ("single_scale", 2, (8, 10), (4, 5)),
    ("adaptive", 8, (11, 13), (6, 7)),
    ("multi_scale", 16, (3, 5), (2, 3)),  # pools would go below 1x1
]


def _max_err(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("pooling,r,size,deep_size", CASES)
def test_mssa_matches_equations(pooling, r, size, deep_size):
    op = _randomize(MSSAAggregation(C, num_heads=HEADS, pooling=pooling, pool_stride=r)).eval()
    lateral, deep = _maps(1, (2, C) + size, (2, C) + deep_size)
    with torch.no_grad():
        got = op(lateral, deep)
        r_i = lateral + F.interpolate(deep, size=size, mode="bilinear", align_corners=False)  # eq. 1
        want = ref_ms_att(op.attn, r_i, r_i, pooling, r)  # eq. 2
        got_top = op(lateral)
        want_top = ref_ms_att(op.attn, lateral, lateral, pooling, r)
    assert _max_err(got, want) < 1e-5
    assert _max_err(got_top, want_top) < 1e-5
    assert want.abs().mean() > 0.1  # a real signal, not zeros


@pytest.mark.parametrize("pooling,r,size,deep_size", CASES)
def test_msca_matches_equations(pooling, r, size, deep_size):
    op = _randomize(MSCAAggregation(C, num_heads=HEADS, pooling=pooling, pool_stride=r), 1).eval()
    lateral, deep = _maps(2, (2, C) + size, (2, C) + deep_size)
    with torch.no_grad():
        got = op(lateral, deep)
        up = F.interpolate(deep, size=size, mode="bilinear", align_corners=False)
        want = lateral + ref_ms_att(op.attn, lateral, up, pooling, r)  # eqs. 3-4
        got_top = op(lateral)
        want_top = lateral + ref_ms_att(op.attn, lateral, lateral, pooling, r)
    assert _max_err(got, want) < 1e-5
    assert _max_err(got_top, want_top) < 1e-5


def test_msca_keys_come_from_the_deeper_map():
    op = _randomize(MSCAAggregation(C, num_heads=HEADS, pool_stride=2)).eval()
    lateral, deep_a, deep_b = _maps(3, (1, C, 8, 8), (1, C, 4, 4), (1, C, 4, 4))
    with torch.no_grad():
        assert _max_err(op(lateral, deep_a), op(lateral, deep_b)) > 1e-3


def test_sum_is_fpn_sum_with_nearest_upsampling():
    op = build_aggregation("sum", C)
    assert isinstance(op, SumAggregation) and op.upsample_mode == "nearest"
    assert len(list(op.parameters())) == 0
    lateral, deep = _maps(4, (2, C, 8, 10), (2, C, 4, 5))
    want = lateral + deep.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.equal(op(lateral, deep), want)
    assert op(lateral) is lateral
    # odd sizes: resized to F_i's exact size
    lateral, deep = _maps(5, (1, C, 13, 17), (1, C, 7, 9))
    assert op(lateral, deep).shape == (1, C, 13, 17)
    assert torch.equal(op(lateral, deep), lateral + F.interpolate(deep, size=(13, 17), mode="nearest"))


def test_concat_is_a_1x1_conv_of_both():
    op = _randomize(build_aggregation("concat", C))
    assert isinstance(op, ConcatAggregation)
    assert sum(p.numel() for p in op.parameters()) == 2 * C * C + C
    lateral, deep = _maps(6, (2, C, 6, 8), (2, C, 3, 4))
    up = deep.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    cat = torch.cat([lateral, up], 1)
    want = torch.einsum("oc,nchw->nohw", op.fuse.weight[:, :, 0, 0], cat) + op.fuse.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        assert _max_err(op(lateral, deep), want) < 1e-5
    assert op(lateral) is lateral


def test_upsample_mode_defaults_and_override():
    assert build_aggregation("mssa", C).upsample_mode == "bilinear"
    assert build_aggregation("msca", C).upsample_mode == "bilinear"
    assert build_aggregation("concat", C).upsample_mode == "nearest"
    assert build_aggregation("mssa", C, upsample_mode="nearest").upsample_mode == "nearest"
    assert build_aggregation("sum", C, upsample_mode="bilinear").upsample_mode == "bilinear"


def test_bad_names_raise_value_error_naming_valid_ones():
    with pytest.raises(ValueError, match=r"'max'.*sum.*concat.*mssa.*msca"):
        build_aggregation("max", C)
    with pytest.raises(ValueError, match=r"'bicubic'.*nearest.*bilinear"):
        build_aggregation("mssa", C, upsample_mode="bicubic")
    with pytest.raises(ValueError, match=r"num_heads=3"):
        build_aggregation("msca", C, num_heads=3)
    assert set(AGGREGATION_OPS) == {"sum", "concat", "mssa", "msca"}


# ------------------------------------------- the fast path (default) against the straightforward one
@pytest.mark.parametrize("name", ["mssa", "msca"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size,deep_size", [((97, 131), (49, 66)), ((13, 17), None)])
def test_fast_operator_equals_reference_forward_and_backward(name, channels_last, size, deep_size):
    from afa_d2.modeling.aggregation import use_reference_path

    op = _randomize(build_aggregation(name, C, num_heads=HEADS, pool_stride=8), 7).train()
    shapes = [(2, C) + size] + ([] if deep_size is None else [(2, C) + deep_size])
    maps = _maps(8, *shapes)
    if channels_last:
        maps = [m.to(memory_format=torch.channels_last) for m in maps]
    weight = _maps(9, (2, C) + size)[0]
    outs, grads = [], []
    for reference in (True, False):
        assert use_reference_path(op, reference) is op and op.reference is reference
        op.zero_grad(set_to_none=True)
        inputs = [m.detach().clone().requires_grad_() for m in maps]
        out = op(*inputs)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad for x in inputs] + [p.grad for p in op.parameters()])
    use_reference_path(op, False)
    assert _max_err(outs[1], outs[0]) < 1e-4
    assert outs[0].abs().mean() > 0.1
    for g_fast, g_ref in zip(grads[1], grads[0]):
        assert g_fast is not None and g_ref is not None
        assert _max_err(g_fast, g_ref) < 1e-4 * max(1.0, g_ref.abs().max().item())


def test_the_registry_names_the_default_and_reads_operators_from_weights():
    """AttentionFPN's default and the publisher's "which operator is in these weights" come from the registry."""
    from afa_d2.model_zoo.publish import _operator_from_weights
    from afa_d2.modeling.aggregation import AGGREGATION_OPS, default_operator, operators_with_modules

    assert default_operator() == "mssa" and AGGREGATION_OPS[default_operator()].is_default
    assert operators_with_modules([]) == ["sum"]
    assert operators_with_modules(["fuse"]) == ["concat"]
    assert operators_with_modules(["attn", "extra"]) == ["msca", "mssa"]  # the weights cannot tell them apart
    for op, expected in (("sum", "sum"), ("concat", "concat"), ("msca", "msca/mssa")):
        agg = build_aggregation(op, 8)
        weights = {"backbone.fpn_aggregation3." + k: v for k, v in agg.state_dict().items()}
        weights["backbone.fpn_lateral3.weight"] = torch.zeros(1)
        assert _operator_from_weights(weights) == expected, op
