"""SwinBottomUp: timm Swin-T as res2..res5 for any input size, and under AttentionFPN."""
import afa_d2  # noqa: F401  (before detectron2)
import afa_d2.modeling  # noqa: F401
import pytest
import torch
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from afa_d2.modeling import AttentionFPN, SwinBottomUp


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return SwinBottomUp()


def test_output_shape(swin):
    shapes = swin.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert {k: v.stride for k, v in shapes.items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert {k: v.channels for k, v in shapes.items()} == {"res2": 96, "res3": 192, "res4": 384, "res5": 768}
    assert swin.size_divisibility == 32
    # shifted windows in every stage (timm's 224 would drop the shift in the last one)
    assert [blk.shift_size for blk in swin.model.layers_3.blocks] == [(0, 0), (3, 3)]


def test_odd_input_size_is_padded_and_cropped_back(swin):
    swin.eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        out = swin(x)
        padded = swin(torch.nn.functional.pad(x, (0, 160 - 131, 0, 128 - 97)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 96, 25, 33), "res3": (1, 192, 13, 17), "res4": (1, 384, 7, 9), "res5": (1, 768, 4, 5)
    }
    assert all(v.is_contiguous() for v in out.values())  # NCHW, not timm's NHWC view
    # the crop of the explicitly padded image: the wrapper pads the same way
    assert (out["res3"] - padded["res3"][:, :, :13, :17]).abs().max().item() < 1e-5


def test_gradients_reach_every_parameter_under_mssa(swin):
    torch.manual_seed(0)
    model = AttentionFPN(swin, ["res2", "res3", "res4", "res5"], 32, aggregation="mssa",
                         top_block=LastLevelMaxPool()).train()
    out = model(torch.randn(1, 3, 97, 131))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (25, 33), "p3": (13, 17), "p4": (7, 9), "p5": (4, 5), "p6": (2, 3)
    }
    sum((v ** 2).mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, "no gradient for {}".format(name)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'res6'.*res2.*res5"):
        SwinBottomUp(out_features=["res4", "res6"])
    with pytest.raises(ValueError, match=r"'resnet50'.*swin"):
        SwinBottomUp("resnet50")
