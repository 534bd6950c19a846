"""afa_d2.compat: each workaround is needed by the registry copy, works, and is skipped
when an official detectron2 build is present."""
import os
import subprocess
import sys
import textwrap

import pytest

from afa_d2 import compat

registry_only = pytest.mark.skipif(
    compat.has_extension(), reason="official detectron2 build installed: nothing to work around"
)


def _python(code, env_extra=None):
    """Run ``code`` in a fresh interpreter; return (exit code, combined output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, timeout=300)
    return proc.returncode, proc.stdout


@registry_only
def test_registry_copy_gets_every_patch():
    """The patches applied are exactly those this environment needs, read from a fresh
    interpreter where nothing is patched: the Pillow and NumPy aliases only where missing."""
    rc, out = _python("""
        from PIL import Image
        import numpy as np
        import torch
        try:
            torch.nn.GroupNorm(32, 1)
            gn1 = True
        except ValueError:
            gn1 = False
        print(hasattr(Image, 'LINEAR'), 'bool' in np.__dict__, gn1)
    """)
    assert rc == 0, out
    has_linear, has_np_bool, has_gn1 = (word == "True" for word in out.split()[-3:])
    expected = {"missing_extension", "cpu_launch"}
    if not has_linear:  # Pillow >= 10
        expected.add("pillow_linear")
    if not has_np_bool:  # NumPy 1.24-1.26
        expected.add("numpy_bool")
    if not has_gn1:  # PyTorch that checks GroupNorm's groups
        expected.add("retinanet_norm")
    assert set(compat.APPLIED) == expected
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR


def test_numpy_bool_alias_restored_only_where_missing(monkeypatch):
    """v0.6 rasterises every polygon mask target with ``np.bool``: without the alias (NumPy
    1.24-1.26) Mask R-CNN training on COCO polygons fails at its first step."""
    import numpy as np

    assert compat._patch_numpy_bool() is False  # present (NumPy 2, or already restored): untouched
    monkeypatch.delattr(np, "bool")
    assert compat._patch_numpy_bool() is True and np.bool is np.bool_
    from detectron2.structures.masks import polygons_to_bitmask

    mask = polygons_to_bitmask([np.array([0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0])], 6, 6)
    assert mask.dtype == np.bool_ and mask.sum() > 0
    assert polygons_to_bitmask([], 3, 5).shape == (3, 5)  # an empty polygon list too


@registry_only
def test_without_patches_detectron2_modules_do_not_import():
    # The failures the patches exist for, in an interpreter where afa_d2 is not imported.
    rc, out = _python("import detectron2.layers")
    assert rc != 0 and "cannot import name '_C'" in out
    rc, out = _python("""
        import sys, types
        sys.modules['detectron2._C'] = types.ModuleType('detectron2._C')  # past the first failure
        from PIL import Image
        assert not hasattr(Image, 'LINEAR'), 'this Pillow still has LINEAR'
        import detectron2.data
    """)
    if "this Pillow still has LINEAR" not in out:
        assert rc != 0 and "LINEAR" in out
    # (Not importable without the patches either, so read the file.)
    rc, out = _python("""
        import importlib.util
        print(open(importlib.util.find_spec('detectron2').submodule_search_locations[0]
                   + '/engine/launch.py').read())
    """)
    assert rc == 0 and 'backend="NCCL"' in out and "assert torch.cuda.is_available()" in out


@registry_only
def test_with_patches_mask_rcnn_modules_import_and_extension_ops_fail_clearly():
    rc, out = _python("""
        import sys
        import afa_d2
        import detectron2.data, detectron2.layers, detectron2.modeling, detectron2.model_zoo
        print('worker', sys.modules['detectron2.engine.launch']._distributed_worker.__module__)
        from detectron2.utils.collect_env import collect_env_info
        print('env report:', 'no C++ extension' in collect_env_info())
        import torch
        from detectron2.layers import nms_rotated
        from detectron2.layers import deform_conv
        from detectron2.structures import RotatedBoxes, pairwise_iou_rotated
        boxes = RotatedBoxes(torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]]))
        for call in (lambda: pairwise_iou_rotated(boxes, boxes),
                     lambda: nms_rotated(boxes.tensor, torch.ones(1), 0.5),
                     lambda: deform_conv._C.deform_conv_forward):  # what DeformConv calls on GPU
            try:
                call()
            except afa_d2.compat.MissingExtensionError as e:
                print('error:', e)
    """)
    assert rc == 0, out
    assert "worker afa_d2.compat" in out
    assert "env report: True" in out  # default_setup's report runs
    assert "error: detectron2._C.box_iou_rotated (rotated-box IoU)" in out
    assert "error: detectron2._C.nms_rotated (rotated-box NMS)" in out
    assert "error: detectron2._C.deform_conv_forward (deformable convolution" in out
    assert out.count("Install official detectron2 from source") == 3


def test_official_build_is_not_patched():
    # Simulate an official build: a real (non stand-in) detectron2._C before compat runs.
    # compat.py is loaded on its own, since afa_d2's __init__ goes on to import detectron2's
    # modules, which in v0.6 (what is installed here) need the patches.
    rc, out = _python("""
        import importlib.util, sys, types
        sys.modules['detectron2._C'] = types.ModuleType('detectron2._C')
        from PIL import Image
        had_linear = hasattr(Image, 'LINEAR')
        spec = importlib.util.spec_from_file_location('compat', {!r})
        compat = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compat)
        print('has extension', compat.has_extension())
        print('applied', sorted(compat.apply()))
        print('linear', hasattr(Image, 'LINEAR') == had_linear)
        print('launch imported', 'detectron2.engine.launch' in sys.modules)
    """.format(compat.__file__))
    assert rc == 0, out
    assert "has extension True" in out
    assert "applied []" in out
    assert "linear True" in out  # Pillow untouched
    assert "launch imported False" in out  # launch's worker untouched


def _record_rank(out_dir):
    import torch
    import torch.distributed as dist

    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    with open(os.path.join(out_dir, "rank{}".format(dist.get_rank())), "w") as f:
        f.write("{} {} {}".format(dist.get_world_size(), dist.get_backend(), float(t)))
    # A main run by official detectron2's own launch (not patched there) ends its group itself, as
    # afa_d2's mains do: a gloo group left to interpreter exit can abort a worker ("terminate called
    # without an active exception", SIGABRT; seen once in this test on official detectron2). On the
    # registry copy the patched worker's own call is then a no-op.
    from afa_d2.engine.launch import end_process_group

    end_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="spawned gloo workers")
def test_launch_two_processes_on_cpu(tmp_path):
    import torch
    from detectron2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("this test covers the CPU (gloo) path")
    launch(_record_rank, 2, dist_url="auto", args=(str(tmp_path),))
    results = sorted(p.read_text() for p in tmp_path.iterdir())
    assert results == ["2 gloo 3.0", "2 gloo 3.0"]


def test_tracing_shims_compute_the_forward_and_are_undone_after():
    """The tracing shims of afa_d2.export: ``traceable_min`` clamps a traced size and is ``min`` otherwise;
    the two context managers replace detectron2's private names inside the block only."""
    import torch
    from detectron2.modeling.meta_arch import dense_detector
    from detectron2.modeling.roi_heads import cascade_rcnn

    capped = compat.traceable_min(200, torch.tensor(324))
    assert isinstance(capped, torch.Tensor) and int(capped) == 200
    assert int(compat.traceable_min(torch.tensor(162), 200)) == 162
    assert compat.traceable_min(3, 5) == 3 and compat.traceable_min([4, 2, 7]) == 2
    assert compat.traceable_min(True, torch.tensor(5)) is True  # a bool is not a count: Python's min, no clamp
    x = torch.randn(4)
    assert compat.identity_scale_gradient(x, 0.5) is x

    apply, had_min = cascade_rcnn._ScaleGradient.apply, hasattr(dense_detector, "min")
    with compat.cascade_scale_gradient_as_identity(), compat.dense_detector_traceable_min():
        assert cascade_rcnn._ScaleGradient.apply is compat.identity_scale_gradient
        assert dense_detector.min is compat.traceable_min
    assert cascade_rcnn._ScaleGradient.apply == apply and hasattr(dense_detector, "min") == had_min
