"""afa_d2.model_zoo: configs by name, publishing, serving, fetching and checking checkpoints.

Weights here are made locally (a shapes model's initial weights, or 2 training iterations), served
over a localhost HTTP server where a URL is needed: nothing is downloaded from outside.
"""
import functools
import glob
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile

import pytest
import torch

import afa_d2  # noqa: F401
from afa_d2 import model_zoo
from afa_d2.engine.checkpoint import AtomicCheckpointer, CorruptCheckpointError
from afa_d2 import hub
from afa_d2.model_zoo.publish import (
    METADATA_KEY,
    publish_checkpoint,
    read_metadata,
    render_model_zoo_md,
    table_row,
    write_index,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSCA = "shapes/mask_rcnn_R_18_msca.py"


# ----------------------------------------------------------------------------- configs by name
def test_every_shipped_config_has_a_name():
    on_disk = sorted(os.path.relpath(p, os.path.join(REPO, "configs")).replace(os.sep, "/")
                     for p in glob.glob(os.path.join(REPO, "configs", "**", "*.*"), recursive=True)
                     if p.endswith((".py", ".yaml")))
    assert model_zoo.list_configs() == on_disk
    path = model_zoo.get_config_file(MSCA)
    assert os.path.samefile(path, os.path.join(REPO, "configs", "shapes", "mask_rcnn_R_18_msca.py"))
    assert model_zoo.get_config_file("configs/" + MSCA) == path  # the checkout's spelling too


def test_unknown_config_is_one_line_with_the_closest_names():
    with pytest.raises(model_zoo.UnknownConfigError) as e:
        model_zoo.get_config_file("shapes/mask_rcnn_R18_msca.py")
    msg = str(e.value)
    assert "\n" not in msg and "'shapes/mask_rcnn_R18_msca.py'" in msg and "closest: shapes/mask_rcnn_R_18_msca.py" in msg
    with pytest.raises(model_zoo.UnknownConfigError, match="closest: shapes/mask_rcnn_R_18_msca.py"):
        model_zoo.get_config("mask_rcnn_R_18_msca.py")  # the folder left out
    with pytest.raises(model_zoo.UnknownConfigError):
        model_zoo.get("COCO/no_such_config.py")


def test_get_config_lazy_and_yacs():
    cfg = model_zoo.get_config(MSCA)
    assert cfg.model.backbone.aggregation == "msca" and cfg.train.eval_period is None  # schedule keys declared
    yacs = model_zoo.get_config("shapes/mask_rcnn_R_18_msca.yaml")
    assert yacs.MODEL.AFA.AGGREGATION == "msca" and yacs.MODEL.BACKBONE.NAME == "build_resnet_attention_fpn_backbone"
    model = model_zoo.get("shapes/mask_rcnn_R_18_msca.yaml", device="cpu")
    assert set(model.backbone.level_ops.values()) == {"msca"}


def test_configs_travel_with_an_installed_wheel(tmp_path):
    """Built as a wheel and imported from it (not from the checkout), the names still resolve and
    a config loads and builds."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "afa_d2"), src / "afa_d2", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(REPO, "configs"), src / "configs", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(out)], check=True, capture_output=True, cwd=str(tmp_path))
    site = tmp_path / "site"
    with zipfile.ZipFile(next(out.glob("afa_d2-*.whl"))) as z:
        z.extractall(site)
    code = (
        "import afa_d2, os\n"
        "from afa_d2 import model_zoo\n"
        "assert afa_d2.__file__.startswith({site!r}), afa_d2.__file__\n"
        "p = model_zoo.get_config_file('shapes/cascade_mask_rcnn_R_18_msca.py')\n"
        "assert p.startswith({site!r}) and not os.path.islink(os.path.dirname(os.path.dirname(p))), p\n"
        "m = model_zoo.get('shapes/cascade_mask_rcnn_R_18_msca.py', device='cpu')\n"
        "print(len(model_zoo.list_configs()), type(m.roi_heads).__name__, m.backbone.level_ops['p2'])\n"
    ).format(site=str(site))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=str(site), PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(len(model_zoo.list_configs())), "CascadeROIHeads", "msca"]


# ----------------------------------------------------------------------------- hashes and fetching
class _Server:
    """A localhost HTTP file server over ``root``; ``bad_length`` makes it announce more bytes
    than it sends (a download cut short)."""

    def __init__(self, root):
        outer = self
        self.bad_length = False
        self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                if outer.bad_length:
                    data = open(os.path.join(str(root), self.path.lstrip("/")), "rb").read()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    return
                return super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = "http://127.0.0.1:{}/".format(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    s = _Server(root)
    s.root = root
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_D2_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _flip_byte(path, offset=None):
    data = bytearray(open(path, "rb").read())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _cache_files(cache):
    return sorted(os.path.relpath(p, str(cache)) for p in glob.glob(str(cache / "**" / "*"), recursive=True)
                  if os.path.isfile(p)) + sorted(
        os.path.relpath(p, str(cache)) for p in glob.glob(str(cache / "**" / ".*"), recursive=True))


def test_hash_prefix_in_names():
    assert hub.expected_hash_prefix("mask_rcnn_R_18_msca-0123abcd.pth") == "0123abcd"
    assert hub.expected_hash_prefix("http://h/a/b/model-0123abcd4567.pth?x=1") == "0123abcd4567"
    assert hub.expected_hash_prefix("detectron2://COCO/model_final_f10217.pkl") is None  # an id, not a hash
    assert hub.expected_hash_prefix("model_final.pth") is None
    assert hub.hashed_name("m", "89abcdef" * 8) == "m-89abcdef.pth"


def test_a_flipped_byte_is_refused_in_a_local_file(tmp_path):
    src = tmp_path / "w.pth"
    torch.save({"model": {"w": torch.arange(1000.0)}}, src)
    name = hub.hashed_name("w", hub.sha256_of(str(src)))
    good = tmp_path / name
    shutil.copy(src, good)
    assert hub.fetch_checkpoint(str(good)) == str(good)
    assert hub.fetch_checkpoint("file://" + str(good)) == str(good)
    _flip_byte(good)
    with pytest.raises(hub.ChecksumError) as e:
        hub.fetch_checkpoint(str(good))
    msg = str(e.value)
    assert "\n" not in msg and str(good) in msg and name.split("-")[1][:8] in msg and "was not used" in msg
    # ... and through the checkpointer (train.init_checkpoint, --eval-only)
    with pytest.raises(hub.ChecksumError):
        AtomicCheckpointer(torch.nn.Linear(2, 2)).load(str(good))
    with pytest.raises(FileNotFoundError, match="no-such-0123abcd.pth"):
        hub.fetch_checkpoint(str(tmp_path / "no-such-0123abcd.pth"))


def test_download_is_cached_verified_every_time_and_fetched_again_when_bad(server, cache):
    torch.save({"model": {"w": torch.arange(4000.0)}}, server.root / "tmp.pth")
    name = hub.hashed_name("w", hub.sha256_of(str(server.root / "tmp.pth")))
    os.replace(server.root / "tmp.pth", server.root / name)
    url = server.url + "zoo/" + name
    os.makedirs(server.root / "zoo")
    shutil.move(str(server.root / name), str(server.root / "zoo" / name))

    path = hub.fetch_checkpoint(url)
    assert path.startswith(str(cache / "checkpoints" / "127.0.0.1:")) and path.endswith(os.path.join("zoo", name))
    assert len(server.requests) == 1
    assert hub.fetch_checkpoint(url) == path and len(server.requests) == 1  # cached: no request

    _flip_byte(path)  # the cached copy rots on disk: detected, fetched again, good
    assert hub.fetch_checkpoint(url) == path and len(server.requests) == 2
    assert hub.sha256_of(path).startswith(name.split("-")[1][:8])

    _flip_byte(path)  # rots again, and the server now serves a bad file too: refused, nothing cached
    _flip_byte(server.root / "zoo" / name)
    with pytest.raises(hub.ChecksumError, match="its name says sha256"):
        hub.fetch_checkpoint(url)
    assert not os.path.exists(path)
    assert _cache_files(cache) == []  # no half-written or temporary file left


def test_truncated_download_leaves_nothing_in_the_cache(server, cache):
    torch.save({"model": {"w": torch.arange(4000.0)}}, server.root / "plain.pth")
    server.bad_length = True
    with pytest.raises(hub.FetchError):
        hub.fetch_checkpoint(server.url + "plain.pth")
    assert _cache_files(cache) == []


def test_offline_uses_the_cache_and_says_clearly_when_it_cannot(server, cache):
    torch.save({"model": {"w": torch.zeros(3)}}, server.root / "plain.pth")
    path = hub.fetch_checkpoint(server.url + "plain.pth")
    server.stop()
    assert hub.fetch_checkpoint(server.url + "plain.pth") == path  # offline: the cached copy
    with pytest.raises(hub.FetchError) as e:
        hub.fetch_checkpoint(server.url + "other-0123abcd.pth")
    msg = str(e.value)
    assert "\n" not in msg and "cannot fetch" in msg and "no cached copy" in msg and "AFA_D2_ZOO_URL" in msg
    assert _cache_files(cache) == [os.path.relpath(path, str(cache))]


def test_corrupt_file_without_a_hash_is_named(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="model_final.pth is not a readable torch checkpoint"):
        AtomicCheckpointer(torch.nn.Linear(2, 2)).load(str(path))


# ----------------------------------------------------------------------------- publishing and serving
@pytest.fixture(scope="module")
def msca_model():
    from detectron2.config import instantiate

    torch.manual_seed(0)
    return instantiate(model_zoo.get_config(MSCA).model).eval()


def _training_checkpoint(model, run_dir):
    """A checkpoint as do_train writes it: model, optimizer, scheduler, iteration, trainer state."""
    os.makedirs(run_dir, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = os.path.join(run_dir, "model_final.pth")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {"last_epoch": 7},
                "iteration": 6, "trainer": {"iteration": 6, "hooks": {}}}, path)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        for it in range(7):
            f.write(json.dumps({"iteration": it, "time": 0.5 + 0.01 * it, "peak_mem_mib": 800.0 + it}) + "\n")
        f.write(json.dumps({"iteration": 6, "bbox/AP": 12.5, "bbox/AP50": 30.0, "segm/AP": 11.0}) + "\n")
    return path


def test_publish_then_serve_then_get_trained_gives_equal_weights(msca_model, server, cache, tmp_path, monkeypatch):
    ckpt = _training_checkpoint(msca_model, str(tmp_path / "run"))
    entry = publish_checkpoint(ckpt, str(server.root), config=MSCA, name="mask_rcnn_R_18_msca_shapes",
                               metadata={"inference": {"seconds_per_image": 0.25}})
    # named by its hash; only the weights and the record are kept
    assert entry["file"] == "mask_rcnn_R_18_msca_shapes-{}.pth".format(entry["sha256"][:8])
    assert hub.sha256_of(entry["path"]) == entry["sha256"]
    published = torch.load(entry["path"], map_location="cpu", weights_only=True)
    assert sorted(published) == ["afa_d2_metadata", "model"]
    meta = published[METADATA_KEY]
    assert meta["config"] == MSCA and meta["operator"] == "msca" and meta["versions"]["afa_d2"] == afa_d2.__version__
    assert meta["metrics"] == {"box_AP": 12.5, "box_AP50": 30.0, "mask_AP": 11.0}
    assert meta["training"] == {"seconds_per_iter": 0.53, "peak_memory_mib": 806.0, "iterations": 7}
    assert meta["inference"] == {"seconds_per_image": 0.25}
    assert read_metadata(entry["path"]) == meta
    index = json.loads((server.root / "model_zoo.json").read_text())
    assert index["checkpoints"][MSCA]["file"] == entry["file"]
    row = table_row(index["checkpoints"][MSCA])
    assert row.startswith("| `shapes/mask_rcnn_R_18_msca.py` | msca | 7 | 12.5 | 11.0 | 0.530 | 0.250 | 806 MiB |")
    assert entry["file"] in row and 'model_zoo.get("shapes/mask_rcnn_R_18_msca.py", trained=True)' in row

    monkeypatch.setenv(model_zoo.ZOO_URL_ENV, server.url)
    assert model_zoo.get_checkpoint_url(MSCA) == server.url + entry["file"]
    model = model_zoo.get(MSCA, trained=True, device="cpu")
    for (name, a), b in zip(msca_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert model_zoo.get_config(MSCA, trained=True).train.init_checkpoint == server.url + entry["file"]

    # a flipped byte on the server: the cached copy is still good and is what gets used
    _flip_byte(server.root / entry["file"], offset=100)
    model_zoo.get(MSCA, trained=True, device="cpu")
    # ... the cached copy flipped too: fetched again, refused, never loaded
    cached = hub.fetch_checkpoint(server.url + entry["file"])
    _flip_byte(cached, offset=100)
    with pytest.raises(hub.ChecksumError, match=entry["file"]):
        model_zoo.get(MSCA, trained=True, device="cpu")

    # the zoo has no checkpoint for another config: one line naming what it has
    with pytest.raises(model_zoo.NotInZooError, match="has no checkpoint for shapes/mask_rcnn_R_18_sum.py; it has: "
                       + MSCA):
        model_zoo.get_checkpoint_url("shapes/mask_rcnn_R_18_sum.py")
    # offline: the index comes from the cache, with a warning
    server.stop()
    assert model_zoo.get_checkpoint_url(MSCA) == server.url + entry["file"]


def test_a_checkpoint_of_another_architecture_names_what_differs(msca_model, tmp_path, cache, monkeypatch):
    """Mask R-CNN weights published under the Cascade config: get(trained=True) refuses them,
    naming keys and shapes."""
    zoo = tmp_path / "zoo"
    ckpt = _training_checkpoint(msca_model, str(tmp_path / "run"))
    publish_checkpoint(ckpt, str(zoo), config="shapes/cascade_mask_rcnn_R_18_msca.py")
    monkeypatch.setenv(model_zoo.ZOO_URL_ENV, str(zoo))  # a folder works as the zoo URL
    with pytest.raises(model_zoo.CheckpointMismatchError) as e:
        model_zoo.get("shapes/cascade_mask_rcnn_R_18_msca.py", trained=True, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and "does not fit the model of shapes/cascade_mask_rcnn_R_18_msca.py" in msg
    assert "8 checkpoint tensor(s) the model does not have (roi_heads.box_head.fc1.weight" in msg  # Mask R-CNN's
    assert "24 model tensor(s) missing (roi_heads.box_head.0.fc1.weight" in msg  # the cascade's stages


def test_model_zoo_md_is_generated_from_the_records(msca_model, tmp_path):
    zoo = str(tmp_path / "zoo")
    publish_checkpoint(_training_checkpoint(msca_model, str(tmp_path / "run")), zoo, config=MSCA)
    page = render_model_zoo_md(write_index(zoo))
    assert "| `shapes/mask_rcnn_R_18_msca.py` | msca | 7 | 12.5 | 11.0 |" in page
    # the paper's rows are listed without weights, their numbers marked as the paper's
    assert "| `COCO/cascade_mask_rcnn_R_50_msca_1x.py` | 1 | no weights yet | 43.4 (paper) | 38.6 (paper) | 11.9 (paper) |" in page
    assert "| `LVIS/mask_rcnn_R_50_mssa_1x.py` | 3 | no weights yet | 24.1 (paper) |" in page


def test_repository_model_zoo_md_is_the_rendering_of_its_records():
    from afa_d2.model_zoo import get_config
    from afa_d2.model_zoo.build import architecture

    """MODEL_ZOO.md is never typed by hand: it equals what MODEL_ZOO.json (the published files'
    records, written beside it by tools/train_model_zoo.py) renders to."""
    with open(os.path.join(REPO, "MODEL_ZOO.json")) as f:
        index = json.load(f)
    with open(os.path.join(REPO, "MODEL_ZOO.md")) as f:
        assert f.read() == render_model_zoo_md(index)
    configs = {e["metadata"]["config"] for e in index["checkpoints"].values()}
    from afa_d2.model_zoo.train import ZOO_CONFIGS

    assert configs == set(ZOO_CONFIGS)  # the default set of tools/train_model_zoo.py, every one published
    for e in index["checkpoints"].values():
        assert e["metadata"]["arch"] == architecture(get_config(e["metadata"]["config"]))
    for e in index["checkpoints"].values():
        assert hub.expected_hash_prefix(e["file"]) == e["sha256"][:8]
        assert e["metadata"]["training"]["iterations"] > 0 and e["metadata"]["metrics"]["box_AP"] > 0


def test_one_command_trains_publishes_and_indexes(tmp_path, cache, monkeypatch):
    """tools/train_model_zoo.py at 2 iterations on a tiny split: trained in its own process,
    published, indexed, MODEL_ZOO.md written; get(trained=True) loads exactly the run's weights;
    a second run trains nothing again."""
    from afa_d2.model_zoo.train import main

    args = ["--output-dir", str(tmp_path / "runs"), "--zoo-dir", str(tmp_path / "zoo"), "--configs", MSCA,
            "--max-iter", "2", "--num-train", "8", "--num-val", "3", "--md", str(tmp_path / "MODEL_ZOO.md")]
    index = main(args)
    entry = index["checkpoints"][MSCA]
    meta = entry["metadata"]
    assert meta["training"]["iterations"] == 2 and meta["training"]["peak_memory_mib"] > 50
    assert meta["inference"]["seconds_per_image"] > 0 and set(meta["metrics"]) >= {"box_AP", "mask_AP"}
    assert meta["dataset"] == {"train": "shapes_n8_3_train", "test": "shapes_n8_3_val"}
    page = (tmp_path / "MODEL_ZOO.md").read_text()
    assert entry["file"] in page and page == render_model_zoo_md(json.loads((tmp_path / "MODEL_ZOO.json").read_text()))
    monkeypatch.setenv(model_zoo.ZOO_URL_ENV, str(tmp_path / "zoo"))
    model = model_zoo.get(MSCA, trained=True, device="cpu")
    run = torch.load(str(tmp_path / "runs" / "shapes_mask_rcnn_R_18_msca" / "model_final.pth"), map_location="cpu",
                     weights_only=True)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, run[name]), name
    again = main(args)  # trained and published already: nothing new
    assert again["checkpoints"][MSCA]["sha256"] == entry["sha256"]
    assert sorted(os.listdir(tmp_path / "zoo")) == sorted([entry["file"], "model_zoo.json"])


@pytest.mark.parametrize("config,arch", [
    ("shapes/mask_rcnn_R_18_msca.py", "mask_rcnn"), ("shapes/cascade_mask_rcnn_R_18_sum.py", "cascade_mask_rcnn"),
    ("shapes/retinanet_R_18_mssa.py", "retinanet"), ("shapes/fcos_R_18_sum.py", "fcos"),
    ("COCO/panoptic_fpn_R_50_msca_1x.py", "panoptic_fpn"), ("COCO/keypoint_rcnn_R_50_sum_1x.py", "keypoint_rcnn"),
])
def test_a_checkpoints_record_names_its_detector(config, arch, tmp_path):
    """The metadata of a published checkpoint names the detector of any shipped config (the one-stage ones
    have no RoI heads), from the config file and from a run's dumped config.yaml alike."""
    from afa_d2.model_zoo import get_config
    from afa_d2.model_zoo.publish import describe_config
    from detectron2.config import LazyConfig

    cfg = get_config(config)
    record = describe_config(cfg)
    assert record["arch"] == arch and record["operator"] == cfg.model.backbone.aggregation
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    assert describe_config(LazyConfig.load(str(tmp_path / "config.yaml")))["arch"] == arch
