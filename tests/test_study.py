"""The operator study (afa_d2.study, tools/study.py): statistics against values computed by hand, a tiny
study killed and resumed end to end, paired initialisation and data order checked on the weights and
batches, the reports, and the one-line refusals."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import afa_d2  # noqa: F401  (detectron2 compat patches first)
from afa_d2.study import StudyDesignError, StudyRunError, custom_study, paired, preset, summarize
from afa_d2.study.design import PRESETS, Arm, Recipe, StudyDesign, check_seeds
from afa_d2.study.report import markdown, replace_between_markers, sentences
from afa_d2.study.runner import load_study, plan, write_study
from afa_d2.study.runs import flat_metrics
from afa_d2.study.stats import study_statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Recipe(max_iter=2, num_train=6, num_val=2, threads=1)


# ---- statistics ------------------------------------------------------------------------------------------

def test_summary_is_the_student_t_interval():
    # 1..5: mean 3, sd sqrt(2.5), standard error sqrt(0.5); t(0.975, 4 df) = 2.776445 (tables)
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["n"] == 5 and s["mean"] == pytest.approx(3.0)
    assert s["sd"] == pytest.approx(math.sqrt(2.5))
    half = 2.776445 * math.sqrt(0.5)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((3.0 - half, 3.0 + half), abs=1e-5)


def _t3_two_sided_p(t):
    """The two-sided p of Student's t with 3 degrees of freedom, from its closed-form CDF."""
    u = abs(t) / math.sqrt(3.0)
    cdf = 0.5 + (u / (1.0 + u * u) + math.atan(u)) / math.pi
    return 2.0 * (1.0 - cdf)


def test_paired_difference_interval_and_p_value():
    arm = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0, 7: 50.0}  # seed 7 has no baseline pair: left out
    base = {0: 9.0, 1: 10.5, 2: 11.0, 3: 11.5}
    d = paired(arm, base)
    # differences 1, 1.5, 0, 1.5: mean 1, sd sqrt(0.5), standard error sqrt(0.5)/2, t = 2 sqrt(2), 3 df
    assert d["seeds"] == [0, 1, 2, 3] and d["n"] == 4
    assert d["mean"] == pytest.approx(1.0) and d["sd"] == pytest.approx(math.sqrt(0.5))
    half = 3.182446 * math.sqrt(0.5) / 2  # t(0.975, 3 df) = 3.182446 (tables)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((1.0 - half, 1.0 + half), abs=1e-5)
    assert d["p"] == pytest.approx(_t3_two_sided_p(2.0 * math.sqrt(2.0)), abs=1e-6)
    assert 0.05 < d["p"] < 0.1  # the interval holds zero: no claim at 95%
    assert d["ci_low"] < 0 < d["ci_high"]


def test_no_interval_from_one_seed_or_from_equal_differences():
    one = paired({0: 3.0}, {0: 1.0})
    assert one["n"] == 1 and one["mean"] == pytest.approx(2.0)
    assert one["ci_low"] is None and one["p"] is None
    same = paired({0: 3.0, 1: 4.0}, {0: 2.0, 1: 3.0})
    assert same["mean"] == pytest.approx(1.0) and same["p"] is None and same["ci_low"] is None
    assert summarize([float("nan"), 2.0, None])["n"] == 1


def _fake_runs(design, table):
    """Study records from {arm: {seed: box AP}}; mask AP = box AP - 1, context AP = 2 x box AP."""
    return [{"arm": arm, "seed": seed, "metrics": {"bbox/AP": v, "segm/AP": v - 1, "bbox/AP-context": 2 * v},
             "time": {"train_s_per_iter": 0.2}} for arm, seeds in table.items() for seed, v in seeds.items()]


def test_study_statistics_pair_each_arm_with_its_baseline_only():
    design = custom_study("shapes/mask_rcnn_R_18_sum.py", [["a"], ["b", "model.backbone.aggregation=msca"]],
                          recipe=TINY)
    runs = _fake_runs(design, {"a": {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0}, "b": {0: 11.0, 1: 13.5, 2: 11.0, 3: 14.5}})
    stats = study_statistics(design, runs)
    assert set(stats["paired"]) == {"b"} and stats["paired"]["b"]["baseline"] == "a"
    assert stats["paired"]["b"]["bbox/AP"]["mean"] == pytest.approx(1.0)
    assert stats["paired"]["b"]["bbox/AP-context"]["mean"] == pytest.approx(2.0)
    assert stats["arms"]["a"]["bbox/AP"]["mean"] == pytest.approx(11.5)
    assert stats["arms"]["a"]["time/train_s_per_iter"]["mean"] == pytest.approx(0.2)
    study = {"design": design.to_dict(), "runs": runs, "statistics": stats}
    said = sentences(study)
    assert len(said) == 1 and said[0].startswith("b − a: +1.0 box AP (95% CI -0.1 to +2.1, p = 0.066")
    assert "not distinguishable from zero" in said[0] and "4 seeds paired" in said[0]
    table = markdown(study)
    assert "| b − a | 4 | +1.0 [-0.1, +2.1] (0.066)" in table


def test_flat_metrics_adds_the_context_and_shapes_groups():
    results = {"bbox": {"AP": 40.0, "AP-marker_sea": 30.0, "AP-marker_forest": 10.0, "AP-marker_city": 20.0,
                        "AP-circle": 90.0, "AP-star": float("nan")}}
    flat = flat_metrics(results)
    assert flat["bbox/AP"] == 40.0 and flat["bbox/AP-context"] == pytest.approx(20.0)
    assert flat["bbox/AP-shapes"] == pytest.approx(90.0)  # NaN (no ground truth) left out of the mean
    assert flat["bbox/AP-star"] is None  # and written as null, valid JSON


# ---- design and bad input --------------------------------------------------------------------------------

def test_presets_come_from_the_registry_and_the_configs():
    table1 = preset("table1")
    assert [a.name for a in table1.arms] == ["sum", "concat", "mssa", "msca"]
    assert [a.baseline for a in table1.arms] == [None, "sum", "sum", "sum"]
    assert [a.label for a in table1.arms] == ["sum-up (FPN)", "concat (FPN-cat)", "MSSA", "MSCA"]
    assert [a.name for a in preset("table1-cascade").arms] == ["sum", "mssa", "msca"]
    t4 = preset("table4")
    assert t4.arm("p5").overrides == ("model.backbone.attention_levels=['p5']",)
    assert {a.name: a.baseline for a in t4.arms} == {"p5": "all", "p4-p5": "all", "p3-p5": "all", "all": None}
    assert [a.name for a in preset("table5").arms] == ["multi_scale", "single_scale", "adaptive"]
    ft = preset("finetune")
    assert ft.order()[0].name == "base" and all(a.init_from == "base" for a in ft.arms[1:])
    assert {a.name for a in ft.arms} == {"base", "sum", "concat", "mssa", "msca"}
    assert len({a.max_iter for a in ft.arms[1:]}) == 1
    short = preset("finetune", Recipe(max_iter=100))  # the recipe reaches every arm: fine-tuned for half of it
    assert [short.iterations(a) for a in short.arms] == [100, 50, 50, 50, 50]
    det = preset("detectors")
    assert {a.name: a.baseline for a in det.arms}["mask_rcnn/msca"] == "mask_rcnn/sum"
    assert {a.name: a.baseline for a in det.arms}["cascade_mask_rcnn/msca"] == "cascade_mask_rcnn/sum"
    assert {a.name for a in det.arms} >= {"retinanet/sum", "retinanet/msca", "fcos/sum", "fcos/msca"}
    assert {a.name: a.label for a in det.arms}["retinanet/msca"] == "RetinaNet, MSCA"  # the family in the tables
    assert set(PRESETS) == {"table1", "table1-cascade", "table4", "table5", "finetune", "detectors"}


def test_every_preset_arm_builds_its_config(tmp_path, monkeypatch):
    """Every arm's config and overrides resolve before anything trains (bad keys fail here, not at a run)."""
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    from afa_d2.study.runs import fingerprint, run_config

    prints = set()
    for name in PRESETS:
        design = preset(name)
        for arm in design.arms:
            cfg = run_config(design, arm, 0, str(tmp_path))
            assert cfg.train.max_iter == design.iterations(arm)
            prints.add(fingerprint(cfg, 1))
            if name == "table4":
                assert list(cfg.model.backbone.attention_levels)[0] == {"p5": "p5", "p4-p5": "p4", "p3-p5": "p3",
                                                                        "all": "p2"}[arm.name]
    assert len(prints) >= 15  # arms differ (table4's "all" may equal table1's MSSA: the same model)


@pytest.mark.parametrize("seeds, needle", [([0, 1, 1], "repeats [1]"), ([], "no seeds"), ([-1], "not ints >= 0")])
def test_bad_seed_lists(seeds, needle):
    with pytest.raises(StudyDesignError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        check_seeds(seeds)


def test_bad_designs_name_the_value():
    with pytest.raises(StudyDesignError, match="unknown preset 'tabel1'; valid:"):
        preset("tabel1")
    with pytest.raises(StudyDesignError, match="baseline 'nope' is not an arm"):
        StudyDesign("x", (Arm("a", "c"), Arm("b", "c", baseline="nope")))
    with pytest.raises(StudyDesignError, match="appear more than once"):
        StudyDesign("x", (Arm("a", "c"), Arm("a", "c", baseline="a")))
    with pytest.raises(StudyDesignError, match="cycle"):
        StudyDesign("x", (Arm("a", "c", init_from="b"), Arm("b", "c", baseline="a", init_from="a")))
    with pytest.raises(StudyDesignError, match="recipe max_iter must be an int >= 1, got 0"):
        Recipe(max_iter=0)
    with pytest.raises(StudyDesignError, match="the first word is the arm's NAME"):
        custom_study("shapes/mask_rcnn_R_18_sum.py", [["a"], ["model.backbone.aggregation=msca"]])


def _cli(args, env=None, **kw):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "study.py")] + args, capture_output=True,
                          text=True, env=env, **kw)


def test_unknown_arm_key_is_one_line_before_any_training(tmp_path):
    env = dict(os.environ, AFA_D2_CACHE=str(tmp_path / "cache"))
    r = _cli(["--config", "shapes/mask_rcnn_R_18_sum.py", "--arm", "a", "--arm", "b", "model.backbone.agregation=msca",
              "--output-dir", str(tmp_path / "s"), "--max-iter", "2", "--num-train", "6", "--num-val", "2"], env=env)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tools/study.py: error: Unknown config key 'model.backbone.agregation'")
    assert "Traceback" not in r.stderr
    assert not os.path.isdir(tmp_path / "s" / "runs")  # nothing trained


# ---- paired initialisation and data order, on the weights and the batches --------------------------------

def test_same_seed_gives_arms_the_same_shared_parts_and_data_order(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    from afa_d2.data import shapes_split_names
    from afa_d2.engine.train_loader import build_train_loader
    from afa_d2.engine.seeding import instantiate_seeded
    from afa_d2.study.runs import run_config

    design = preset("table1")
    models, batches = {}, {}
    for name, seed in (("sum", 3), ("mssa", 3), ("msca", 3), ("sum", 4)):
        cfg = run_config(design, design.arm(name), seed, str(tmp_path))
        cfg.dataloader.train.dataset.names = shapes_split_names(24, 2)["train"]  # small: the order is checked
        torch.manual_seed(1234 if name == "mssa" else 99)  # the caller's random state plays no part
        models[name, seed] = instantiate_seeded(cfg.model, seed).state_dict()
        loader, _ = build_train_loader(cfg)
        it = iter(loader)
        batches[name, seed] = [[d["image_id"] for d in next(it)] for _ in range(4)]
    ref = models["sum", 3]
    shared = [k for k in ref if "fpn_aggregation" not in k]
    assert any(k.startswith("backbone.bottom_up") for k in shared)
    assert any(k.startswith("roi_heads.box_head") for k in shared) and any("fpn_lateral" in k for k in shared)
    for arm in ("mssa", "msca"):
        diff = [k for k in shared if not torch.equal(ref[k], models[arm, 3][k])]
        assert not diff, "{} seed 3 starts with other shared weights than sum: {}".format(arm, diff[:5])
        assert batches[arm, 3] == batches["sum", 3]
    assert any(not torch.equal(ref[k], models["sum", 4][k]) for k in shared)  # another seed, another start
    assert batches["sum", 4] != batches["sum", 3]
    # and the attention blocks themselves: the same operator on another seed differs
    assert any(k.startswith("backbone.fpn_aggregation") for k in models["mssa", 3])


def test_seeded_instantiation_leaves_the_callers_random_state():
    from afa_d2.engine.seeding import instantiate_seeded
    from detectron2.config import LazyCall as L

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    a = instantiate_seeded(L(torch.nn.Linear)(in_features=4, out_features=2), 7)
    assert torch.equal(torch.rand(3), expected)
    b = instantiate_seeded(L(torch.nn.Linear)(in_features=4, out_features=2), 7)
    c = instantiate_seeded(L(torch.nn.Linear)(in_features=4, out_features=2), 8)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


# ---- a whole study, killed and resumed -------------------------------------------------------------------

def _tiny_args(out):
    return ["--config", "shapes/mask_rcnn_R_18_sum.py", "--arm", "sum", "--arm", "msca",
            "model.backbone.aggregation=msca", "--seeds", "2", "--max-iter", "2", "--num-train", "6",
            "--num-val", "2", "--jobs", "1", "--output-dir", str(out)]


def _one_error_line(stderr):
    """One line says what is wrong, and no traceback (library warnings may stand before it)."""
    return "Traceback" not in stderr and len([x for x in stderr.splitlines() if "tools/study.py: error:" in x]) == 1


def _starts(run_dir):
    with open(os.path.join(run_dir, "log.txt")) as f:
        return f.read().count("Starting training from iteration")


def test_study_killed_after_its_first_run_resumes_and_trains_each_run_once(tmp_path):
    env = dict(os.environ, AFA_D2_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "study.py")] + _tiny_args(out), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        study = load_study(str(out)) if os.path.isfile(out / "study.json") else None
        if study and len(study["runs"]) >= 1:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    else:
        pytest.fail("no run finished in 5 minutes")
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the worker it started, mid-run
    proc.wait()
    first = load_study(str(out))["runs"][0]
    first_dir = first["run_dir"]
    first_record_mtime = os.path.getmtime(os.path.join(first_dir, "run.json"))

    r = _cli(_tiny_args(out), env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    study = load_study(str(out))
    assert sorted((x["arm"], x["seed"]) for x in study["runs"]) == [("msca", 0), ("msca", 1), ("sum", 0), ("sum", 1)]
    assert [x for x in study["runs"] if (x["arm"], x["seed"]) == (first["arm"], first["seed"])][0] == first
    assert os.path.getmtime(os.path.join(first_dir, "run.json")) == first_record_mtime
    for x in study["runs"]:
        assert _starts(x["run_dir"]) == 1, "{}/seed{} trained more than once".format(x["arm"], x["seed"])
        assert os.path.isfile(os.path.join(x["run_dir"], "model_final.pth"))
        assert os.path.isfile(os.path.join(x["run_dir"], "config.yaml"))
        assert set(x["metrics"]) >= {"bbox/AP", "segm/AP", "bbox/AP50", "bbox/APs"}
        assert x["fingerprint"] and x["time"]["threads"] == 1
    assert set(study["statistics"]["paired"]["msca"]) >= {"baseline", "bbox/AP", "segm/AP"}
    assert study["host"]["versions"]["torch"] == torch.__version__
    # the reports
    md = (out / "study.md").read_text()
    assert "| msca − sum | 2 |" in md and "seeds 0, 1" in md
    png = (out / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    # the counters: MSCA adds its attention blocks' parameters and multiply-adds to the same model
    cost = study["cost"]
    assert cost["msca"]["params"] > cost["sum"]["params"] > 1e6 and cost["msca"]["gflops"] > cost["sum"]["gflops"] > 0
    # the quiet side-by-side timing
    r = _cli(["--output-dir", str(out), "--time"], env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    quiet = load_study(str(out))["quiet_timing"]["arms"]
    assert quiet["sum"]["inference_s_per_image"] > 0 and quiet["msca"]["train_s_per_step"] > 0
    assert quiet["msca"]["train_ratio"] == pytest.approx(quiet["msca"]["train_s_per_step"] / quiet["sum"]["train_s_per_step"])
    assert "Measured side by side in one process" in (out / "study.md").read_text()

    # nothing left: the same command trains nothing, even with the run folders gone
    import shutil

    shutil.rmtree(out / "runs")
    r = _cli(_tiny_args(out), env=env, timeout=600)
    assert r.returncode == 0 and "4 runs finished, 0 to train" in r.stdout, r.stdout + r.stderr
    assert not os.path.isdir(out / "runs")

    # a record of another config is refused in one line, and study.json is left as it was
    study = json.loads((out / "study.json").read_text())
    study["runs"][0]["fingerprint"] = "0123456789abcdef"
    (out / "study.json").write_text(json.dumps(study))
    before = (out / "study.json").read_text()
    r = _cli(_tiny_args(out), env=env, timeout=600)
    assert r.returncode == 2 and "with config 0123456789abcdef, this study's is" in r.stderr
    assert _one_error_line(r.stderr) and (out / "study.json").read_text() == before

    # a study file cut short: one line naming it, and it is not overwritten
    (out / "study.json").write_text(before[: len(before) // 2])
    r = _cli(_tiny_args(out), env=env, timeout=600)
    assert r.returncode == 2 and "study.json (the study) is not valid JSON" in r.stderr and _one_error_line(r.stderr)
    assert (out / "study.json").read_text() == before[: len(before) // 2]

    # another study in the same folder
    (out / "study.json").write_text(before)
    r = _cli(["--preset", "table1", "--output-dir", str(out), "--seeds", "1"], env=env, timeout=600)
    assert r.returncode == 2 and "holds study 'custom', not 'table1'" in r.stderr


def test_a_run_folder_of_another_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    design = custom_study("shapes/mask_rcnn_R_18_sum.py", [["a"], ["b", "model.backbone.aggregation=msca"]],
                          recipe=TINY)
    folder = tmp_path / "runs" / "b" / "seed0"
    folder.mkdir(parents=True)
    (folder / "study_run.json").write_text(json.dumps({"arm": "b", "seed": 0, "fingerprint": "feedfeedfeedfeed"}))
    with pytest.raises(StudyRunError, match="holds run b/seed0 of config feedfeedfeedfeed, not b/seed0 of config"):
        plan(design, [0], str(tmp_path))
    (folder / "study_run.json").unlink()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StudyRunError, match="holds files but no study_run.json"):
        plan(design, [0], str(tmp_path))
    assert (folder / "notes.txt").read_text() == "mine"


def test_publish_writes_between_the_markers(tmp_path):
    from afa_d2.study.publish import publish

    design = custom_study("shapes/mask_rcnn_R_18_sum.py", [["a"], ["b", "model.backbone.aggregation=msca"]],
                          recipe=TINY)
    out = tmp_path / "out"
    out.mkdir()
    runs = _fake_runs(design, {"a": {0: 10.0, 1: 12.0, 2: 11.0}, "b": {0: 11.0, 1: 13.5, 2: 11.5}})
    for r in runs:
        r["fingerprint"] = "x"
    write_study(str(out), {"format": 1, "preset": None, "design": design.to_dict(), "seeds": [0, 1, 2],
                           "runs": runs, "host": {}})
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "configs" / "README.md").write_text("head\n<!-- study:custom -->\nold\n<!-- /study:custom -->\ntail\n")
    (repo / "README.md").write_text("intro\n<!-- study:custom -->\n<!-- /study:custom -->\nend\n")
    publish(str(out), str(repo))
    table = (repo / "configs" / "README.md").read_text()
    assert table.startswith("head\n<!-- study:custom -->\n**custom**") and table.endswith("<!-- /study:custom -->\ntail\n")
    assert "old" not in table and "| b − a | 3 |" in table and "docs/studies/custom/study.png" in table
    readme = (repo / "README.md").read_text()
    assert "- b − a: +1.0 box AP (95% CI" in readme
    assert (repo / "docs" / "studies" / "custom" / "study.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="has no '<!-- study:other -->'"):
        replace_between_markers("text", "other", "body")


def test_reuse_takes_another_studys_runs_of_the_same_config_and_seed_only(tmp_path, monkeypatch):
    """``--reuse``: a run of another study is taken where fingerprint and seed are equal, under this study's arm
    name, with where it came from; a run of another seed or config is not; nor a run another arm starts from."""
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    from afa_d2.study.runner import reusable_runs
    from afa_d2.study.runs import fingerprint, run_config

    design = custom_study("shapes/mask_rcnn_R_18_sum.py", [["base"], ["attn", "model.backbone.aggregation=msca"]],
                          recipe=TINY)
    fp = {a.name: fingerprint(run_config(design, a, 0, str(tmp_path)), 1) for a in design.arms}
    other = tmp_path / "other"
    other.mkdir()
    runs = [{"arm": "msca", "seed": 0, "fingerprint": fp["attn"], "metrics": {"bbox/AP": 12.5}},
            {"arm": "msca", "seed": 1, "fingerprint": "0123456789abcdef", "metrics": {"bbox/AP": 1.0}},
            {"arm": "sum", "seed": 0, "fingerprint": fp["base"], "metrics": {"bbox/AP": 10.0}}]
    (other / "study.json").write_text(json.dumps({"runs": runs}))
    found, pending = plan(design, [0, 1], str(tmp_path / "new"), [], reusable_runs([str(other)]))
    assert sorted((r["arm"], r["seed"], r["metrics"]["bbox/AP"]) for r in found) == [("attn", 0, 12.5),
                                                                                    ("base", 0, 10.0)]
    assert found[0]["reused_from"].endswith("study.json {}/seed0".format({"attn": "msca", "base": "sum"}[
        found[0]["arm"]]))
    assert sorted((a.name, s) for a, s, _ in pending) == [("attn", 1), ("base", 1)]
    # a base that another arm starts from is trained here (its weights are needed), not taken
    ft = preset("finetune", TINY)
    base_fp = fingerprint(run_config(ft, ft.arm("base"), 0, str(tmp_path)), 1)
    (other / "study.json").write_text(json.dumps({"runs": [{"arm": "x", "seed": 0, "fingerprint": base_fp}]}))
    found, pending = plan(ft, [0], str(tmp_path / "ft"), [], reusable_runs([str(other / "study.json")]))
    assert not found and ("base", 0) in [(a.name, s) for a, s, _ in pending]
    with pytest.raises(StudyRunError, match=r"--reuse .*nowhere: no study record there"):
        reusable_runs([str(tmp_path / "nowhere")])
