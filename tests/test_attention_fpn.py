"""AttentionFPN: FPN parity, every operator x pooling x level set, gradients, contracts."""
import itertools

import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from afa_d2.modeling import AttentionFPN

IN_FEATURES = ["res2", "res3", "res4", "res5"]
R50_CHANNELS = (256, 512, 1024, 2048)
LEVEL_SETS = [("p5",), ("p4", "p5"), ("p3", "p4", "p5"), ("p2", "p3", "p4", "p5")]


class StubBottomUp(Backbone):
    """res2..res5 of the sizes detectron2's ResNet gives (ceil(H / s)), random but fixed."""

    def __init__(self, channels=(16, 32, 64, 128)):
        super().__init__()
        self._out_features = list(IN_FEATURES)
        self._out_feature_channels = dict(zip(IN_FEATURES, channels))
        self._out_feature_strides = dict(zip(IN_FEATURES, (4, 8, 16, 32)))

    def forward(self, x):
        n, _, h, w = x.shape
        g = torch.Generator().manual_seed(h * 10007 + w)
        return {
            f: torch.randn(n, c, -(-h // s), -(-w // s), generator=g)
            for (f, c), s in zip(self._out_feature_channels.items(), (4, 8, 16, 32))
        }


def _resnet(depth=50):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = IN_FEATURES
    cfg.MODEL.RESNETS.NORM = "BN"
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def _afpn(bottom_up=None, out_channels=16, **kw):
    kw.setdefault("top_block", LastLevelMaxPool())
    return AttentionFPN(bottom_up or StubBottomUp(), IN_FEATURES, out_channels, **kw)


def _expected_sizes(h, w):
    return {"p{}".format(k): (-(-h // 2 ** k), -(-w // 2 ** k)) for k in range(2, 7)}


# --------------------------------------------------------------------------- FPN parity
def test_sum_equals_detectron2_fpn_exactly_and_loads_its_checkpoint():
    torch.manual_seed(0)
    bottom_up = _resnet(50).eval()
    fpn = FPN(bottom_up, IN_FEATURES, 256, top_block=LastLevelMaxPool()).eval()
    torch.manual_seed(1)  # different init: only the copied weights can make them equal
    afpn = AttentionFPN(bottom_up, IN_FEATURES, 256, aggregation="sum", top_block=LastLevelMaxPool()).eval()
    assert set(afpn.state_dict()) == set(fpn.state_dict())
    afpn.load_state_dict(fpn.state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 160)  # a multiple of 32, as detectron2 pads
    with torch.no_grad():
        want, got = fpn(x), afpn(x)
        assert list(got) == list(want) == ["p2", "p3", "p4", "p5", "p6"]
        for k in want:
            assert torch.equal(got[k], want[k]), k
        assert want["p2"].abs().max() > 0
        odd = afpn(torch.randn(1, 3, 97, 131))  # unpadded: accepted
    assert {k: tuple(v.shape[-2:]) for k, v in odd.items()} == _expected_sizes(97, 131)
    assert afpn.size_divisibility == fpn.size_divisibility == 32
    assert afpn.output_shape() == fpn.output_shape()


def test_attention_variants_load_an_fpn_checkpoint_non_strictly():
    fpn = FPN(StubBottomUp(R50_CHANNELS), IN_FEATURES, 256, top_block=LastLevelMaxPool())
    afpn = _afpn(StubBottomUp(R50_CHANNELS), 256, aggregation="msca")
    missing = afpn.load_state_dict(fpn.state_dict(), strict=False)
    assert missing.unexpected_keys == []
    assert all(k.startswith("fpn_aggregation") for k in missing.missing_keys)
    assert torch.equal(afpn.fpn_output2.weight, fpn.fpn_output2.weight)


# --------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize(
    "op,pooling", list(itertools.product(["sum", "concat", "mssa", "msca"], ["multi_scale", "single_scale", "adaptive"]))
)
def test_every_operator_pooling_and_level_set(op, pooling):
    for levels in LEVEL_SETS:
        # every level set on the odd size; all four levels also on 64x64 and on 20x28,
        # where every pool clamps to 1x1
        sizes = [(97, 131)] + ([(64, 64), (20, 28)] if len(levels) == 4 else [])
        torch.manual_seed(0)
        model = _afpn(aggregation=op, attention_levels=levels, pooling=pooling).eval()
        assert model.level_ops == {lvl: (op if lvl in levels else "sum") for lvl in model.levels}
        shapes = model.output_shape()
        assert {k: v.stride for k, v in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
        assert {v.channels for v in shapes.values()} == {16}
        for h, w in sizes:
            with torch.no_grad():
                out = model(torch.zeros(2, 3, h, w))
            assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
            assert {k: tuple(v.shape) for k, v in out.items()} == {
                k: (2, 16) + s for k, s in _expected_sizes(h, w).items()
            }, (op, pooling, levels, h, w)
            assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("op", ["concat", "mssa", "msca"])
def test_800x1333(op):
    model = _afpn(StubBottomUp((8, 8, 8, 8)), 8, aggregation=op, num_heads=2).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 800, 1333))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (200, 334), "p3": (100, 167), "p4": (50, 84), "p5": (25, 42), "p6": (13, 21)
    }


def test_per_level_dict_and_pool_strides():
    model = _afpn(aggregation={"p3": "msca", "p5": "mssa"}, pooling="single_scale", pool_strides=(9, 7, 5, 3))
    assert model.level_ops == {"p2": "sum", "p3": "msca", "p4": "sum", "p5": "mssa"}
    assert model.fpn_aggregation3.attn.pool_strides == (7,)
    assert model.fpn_aggregation5.attn.pool_strides == (3,)
    default = _afpn(aggregation="mssa")
    assert [default.get_submodule("fpn_aggregation{}".format(s)).attn.pool_strides for s in (2, 3, 4, 5)] == [
        (16, 32), (8, 16), (4, 8), (2, 4)
    ]


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs,count",
    [
        (dict(aggregation="sum"), 3344384),  # = detectron2 FPN R-50
        (dict(aggregation="concat"), 3738368),  # 3 convs 512 -> 256 (none on the top level)
        (dict(aggregation="mssa"), 5475328),
        (dict(aggregation="msca"), 5475328),
        (dict(aggregation="mssa", pooling="adaptive"), 5475328),
        (dict(aggregation="mssa", attention_levels=("p5",)), 3877120),
        (dict(aggregation="msca", attention_levels=("p4", "p5")), 4409856),
        (dict(aggregation="mssa", attention_levels=("p3", "p4", "p5")), 4942592),
    ],
)
def test_parameter_counts_are_pinned(kwargs, count):
    model = _afpn(StubBottomUp(R50_CHANNELS), 256, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("op", ["concat", "mssa", "msca"])
def test_gradients_reach_every_parameter(op):
    torch.manual_seed(0)
    model = _afpn(aggregation=op).train()
    out = model(torch.zeros(2, 3, 64, 96))
    sum((v ** 2).mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, "no gradient for {}".format(name)
        assert p.grad.abs().sum() > 0, "zero gradient for {}".format(name)


@pytest.mark.parametrize("op", ["mssa", "msca"])
def test_checkpoint_mlp_keeps_outputs_and_gradients(op):
    """checkpoint_mlp reaches every MS-Att and trades memory only: same outputs, same gradients."""
    torch.manual_seed(0)
    plain = _afpn(aggregation=op).train()
    ckpt = _afpn(aggregation=op, checkpoint_mlp=True).train()
    ckpt.load_state_dict(plain.state_dict())
    attns = [m for m in ckpt.modules() if type(m).__name__ == "MSAttention"]
    assert len(attns) == 4 and all(m.checkpoint_mlp for m in attns)
    x = torch.randn(2, 3, 48, 72)
    grads = []
    for model in (plain, ckpt):
        out = model(x)
        sum((v * (k + 1)).square().mean() for k, v in enumerate(out.values())).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=1e-5, atol=1e-7), name


def test_eval_is_deterministic_and_state_dict_round_trips():
    torch.manual_seed(0)
    a = _afpn(out_channels=32, aggregation="msca", norm="GN").eval()
    torch.manual_seed(1)
    b = _afpn(out_channels=32, aggregation="msca", norm="GN").eval()
    x = torch.zeros(2, 3, 64, 96)
    with torch.no_grad():
        first, second = a(x), a(x)
        assert all(torch.equal(first[k], second[k]) for k in first)
        assert (b(x)["p2"] - first["p2"]).abs().max() > 1e-3  # different init differs
        b.load_state_dict(a.state_dict())
        third = b(x)
    for k in first:
        assert torch.equal(first[k], third[k]), k


# --------------------------------------------------------------------------- contracts
def test_size_divisibility_and_padding_constraints():
    model = _afpn(square_pad=1024)
    assert model.size_divisibility == 32
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 1024}


def test_channels_last_autocast_and_trace_on_resnet18():
    torch.manual_seed(0)
    model = _afpn(_resnet(18), 16, aggregation="mssa").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        for k in ref:
            assert (cl[k] - ref[k]).abs().max().item() < 1e-4, k
        model = model.to(memory_format=torch.contiguous_format)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
        for k in ref:
            assert low[k].shape == ref[k].shape and torch.isfinite(low[k]).all(), k
        traced = torch.jit.trace(model, (x,), strict=False, check_trace=False)
        got = traced(x)
        for k in ref:
            assert (got[k] - ref[k]).abs().max().item() < 1e-5, k


def test_lazy_config_instantiates():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    cfg = L(AttentionFPN)(
        bottom_up=L(StubBottomUp)(channels=(8, 8, 8, 8)),
        in_features=IN_FEATURES,
        out_channels=8,
        aggregation="msca",
        attention_levels=["p4", "p5"],
        num_heads=2,
        top_block=L(LastLevelMaxPool)(),
    )
    model = instantiate(cfg)
    assert isinstance(model, AttentionFPN)
    assert model.level_ops == {"p2": "sum", "p3": "sum", "p4": "msca", "p5": "msca"}


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(aggregation="attention"), r"'attention'.*\['sum', 'concat', 'mssa', 'msca'\]"),
        (dict(aggregation={"p3": "max"}), r"'max'.*\['sum', 'concat', 'mssa', 'msca'\]"),
        (dict(attention_levels=("p4", "p7")), r"'p7'.*\['p2', 'p3', 'p4', 'p5'\]"),
        (dict(attention_levels="p5"), r"'p5'.*\['p2', 'p3', 'p4', 'p5'\]"),
        (dict(aggregation={"res5": "mssa"}), r"'res5'.*\['p2', 'p3', 'p4', 'p5'\]"),
        (dict(pooling="max"), r"'max'.*\['multi_scale', 'single_scale', 'adaptive'\]"),
        (dict(num_heads=3), r"num_heads=3.*out_channels=16.*valid: \[1, 2, 4, 8, 16\]"),
        (dict(pool_strides=(16, 8, 0, 2)), r"positive.*0.*\[16, 8, 0, 2\]"),
        (dict(pool_strides=(16, 8, -4, 2)), r"positive.*-4"),
        (dict(pool_strides=(16, 8, 4)), r"\[16, 8, 4\] has 3 entries.*one per in_feature"),
        (dict(adaptive_pool_size=0), r"adaptive_pool_size.*0"),
        (dict(upsample_mode="cubic"), r"'cubic'.*\['nearest', 'bilinear'\]"),
        (dict(fuse_type="avg"), r"'avg'.*\['sum'\]"),
        (dict(checkpoint_mlp=1), r"checkpoint_mlp must be a bool, got 1"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _afpn(**kwargs)
    # the operator-independent checks hold even where the operator is "sum"
    if "pooling" in kwargs or "pool_strides" in kwargs:
        with pytest.raises(ValueError):
            _afpn(aggregation="sum", **kwargs)


def test_unknown_in_feature_and_non_contiguous_strides():
    with pytest.raises(ValueError, match=r"'res6'.*res2"):
        AttentionFPN(StubBottomUp(), ["res4", "res6"], 16)
    with pytest.raises(ValueError, match=r"log2-contiguous"):
        AttentionFPN(StubBottomUp(), ["res2", "res4"], 16, pool_strides=(4, 2))


@pytest.mark.parametrize("op", ["mssa", "msca"])
def test_fast_neck_equals_reference_path_on_odd_size(op):
    from afa_d2.modeling.aggregation import use_reference_path

    torch.manual_seed(0)
    model = _afpn(aggregation=op).eval()
    x = torch.zeros(1, 3, 97, 131)  # res2 25x33 ... res5 4x5
    with torch.no_grad():
        fast = model(x)
        ref = use_reference_path(model)(x)
        use_reference_path(model, False)
    for k in ref:
        assert fast[k].shape == ref[k].shape == (1, 16) + _expected_sizes(97, 131)[k], k
        assert (fast[k] - ref[k]).abs().max().item() < 1e-4, k


def test_a_fifth_operator_is_one_class_and_one_registry_entry(monkeypatch):
    """docs/DESIGN.md, "Where do I add ...": an operator registered in AGGREGATION_OPS (here an element-wise max
    with a learned gate) builds in AttentionFPN on chosen levels, trains, refuses start_as_fpn with its own reason,
    and is named by the registry's readers; nothing else changes."""
    from afa_d2.model_zoo.publish import _operator_from_weights
    from afa_d2.modeling import aggregation as A

    class MaxAggregation(A.Aggregation):
        label = "max (gated)"
        own_modules = ("gate",)
        can_start_as_sum = False

        def __init__(self, channels, upsample_mode=None):
            super().__init__(upsample_mode)
            self.gate = torch.nn.Conv2d(channels, channels, 1)

        @classmethod
        def build(cls, channels, *, upsample_mode, **_unused):
            return cls(channels, upsample_mode)

        def forward(self, lateral, top_down=None):
            if top_down is None:
                return lateral
            return torch.maximum(lateral, self.gate(self.up(top_down, lateral)))

    monkeypatch.setitem(A.AGGREGATION_OPS, "max", MaxAggregation)
    torch.manual_seed(0)
    neck = _afpn(aggregation="max", attention_levels=["p2", "p3"])
    assert neck.level_ops == {"p2": "max", "p3": "max", "p4": "sum", "p5": "sum"}
    out = neck(torch.randn(1, 3, 64, 96))
    sum(v.sum() for v in out.values()).backward()
    assert neck.fpn_aggregation2.gate.weight.grad.abs().sum() > 0
    assert A.operator_label("max") == "max (gated)"
    weights = {"backbone." + k: v for k, v in neck.state_dict().items()}
    assert _operator_from_weights(weights) == "max"
    with pytest.raises(ValueError, match=r"max \(gated\) cannot start as FPN's sum"):
        _afpn(aggregation="max", start_as_fpn=True)
