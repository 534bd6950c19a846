"""The CPU fast path under torch.autocast (issue: bf16 inference crashed in the threaded NMS).

Autocast and grad mode are thread-local in torch: afa_d2's threaded RoIAlign and per-class NMS run their
work on a pool of threads, which started without the caller's autocast, so torchvision's ``nms`` saw fp32
boxes and bf16 scores and raised. ``afa_d2.execution.runtime.pool_map`` runs each task in the caller's state."""
import pytest
import torch

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.execution.runtime import ThreadedROIAlign, pool_map, prepare_for_cpu_inference, threaded_batched_nms

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_pool_tasks_run_in_the_callers_autocast_and_grad_state():
    def state(_):
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_grad_enabled()

    with torch.no_grad(), torch.autocast(**BF16):
        assert set(pool_map(state, range(4))) == {(True, torch.bfloat16, False)}
    assert set(pool_map(state, range(4))) == {(False, torch.get_autocast_dtype("cpu"), True)}


def _boxes(n, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 80 + 4
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_threaded_nms_under_autocast_keeps_what_detectron2_keeps(two_threads):
    from detectron2.layers import batched_nms

    boxes, scores, idxs = _boxes(3000, 13)  # 12000 coordinates: the per-class, threaded path
    with torch.no_grad(), torch.autocast(**BF16):
        scores = scores.to(torch.bfloat16)  # what a bf16 box head hands the NMS
        want = batched_nms(boxes, scores, idxs, 0.5)
        got = threaded_batched_nms(boxes, scores, idxs, 0.5)
    assert got.numel() > 100 and torch.equal(got, want)


def test_threaded_roi_align_under_autocast_gives_detectron2s_values(two_threads):
    from detectron2.layers import ROIAlign

    g = torch.Generator().manual_seed(1)
    feature = torch.randn(1, 16, 48, 64, generator=g).to(torch.bfloat16)
    boxes, _, _ = _boxes(200, 1, seed=2)
    rois = torch.cat([torch.zeros(200, 1), boxes * 0.2], 1)
    with torch.no_grad(), torch.autocast(**BF16):
        want = ROIAlign((7, 7), 0.25, 0, aligned=True)(feature, rois)
        got = ThreadedROIAlign((7, 7), 0.25, 0, aligned=True)(feature, rois)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("op", ["sum", "concat", "mssa", "msca"])
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "plain"])
def test_every_operator_runs_under_cpu_bf16_autocast(op, prepared, two_threads):
    from detectron2.config import instantiate

    from afa_d2.engine import load_config
    from afa_d2.model_zoo.catalog import get_config_file

    cfg = load_config(get_config_file("shapes/mask_rcnn_R_18_{}.py".format(op)))
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    if prepared:
        prepare_for_cpu_inference(model)
    image = {"image": torch.rand(3, 160, 213) * 255, "height": 160, "width": 213}
    with torch.no_grad(), torch.autocast(**BF16):
        (out,) = model([image])
    inst = out["instances"]
    assert len(inst) > 0  # random weights, score threshold 0.05: many boxes, so the threaded NMS ran
    assert inst.pred_boxes.tensor.dtype == torch.float32 and torch.isfinite(inst.pred_boxes.tensor).all()
    assert inst.pred_masks.shape[-2:] == (160, 213)
