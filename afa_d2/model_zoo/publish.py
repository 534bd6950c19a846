"""Publishing checkpoints: weights plus a metadata record, named by their hash; the zoo's index.

:func:`publish_checkpoint` turns a training checkpoint (``model_final.pth``: model, optimizer,
scheduler, iteration, trainer state) into a published one: ``{"model": weights,
"afa_d2_metadata": {...}}`` and nothing else, written atomically as
``<name>-<first 8 hex of its sha256>.pth`` into the zoo folder. The metadata record says what the
weights are and what they cost: the config (its zoo name, the command-line overrides and the whole
dumped config), operator, architecture, afa_d2 / detectron2 / torch versions, git commit, the
evaluation metrics, the training cost (iterations, seconds per iteration, peak memory) and
inference seconds per image. What is not given is read from the run's folder (``config.yaml`` and
``metrics.json`` as ``train_net.py`` writes them).

:func:`write_index` then scans the folder's hash-named files, checks each hash, and writes
``model_zoo.json`` from their metadata (config name -> file); :func:`render_model_zoo_md` writes
``MODEL_ZOO.md`` from the same records: nothing in it is typed by hand.
"""
from __future__ import annotations

import datetime
import glob
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import torch

from afa_d2.modeling.aggregation import baseline_operator, operators_with_modules
from afa_d2.hub import HASH_PREFIX_RE, hashed_name, sha256_of, verify_file
from .paper import PAPER_RESULTS
from .zoo import INDEX_NAME

__all__ = [
    "METADATA_KEY",
    "provenance",
    "publish_checkpoint",
    "read_metadata",
    "read_run",
    "render_model_zoo_md",
    "table_row",
    "write_index",
    "write_model_zoo_md",
]

logger = logging.getLogger(__name__)

METADATA_KEY = "afa_d2_metadata"
FORMAT = 1


def _git_commit() -> Optional[str]:
    """The commit of the afa_d2 source tree, "+dirty" with uncommitted changes; None outside git."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _versions() -> Dict[str, str]:
    import detectron2

    import afa_d2

    return {"afa_d2": afa_d2.__version__, "detectron2": str(getattr(detectron2, "__version__", "?")),
            "torch": str(torch.__version__)}


def provenance() -> Dict[str, Any]:
    """Where a result comes from: the afa_d2 commit, the CPU, the CPU count and the library versions."""
    return {"git_commit": _git_commit(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "versions": _versions()}


def describe_config(cfg) -> Dict[str, Any]:
    """Operator, architecture and datasets of a LazyConfig, for the metadata record."""
    from .build import architecture

    return {
        "operator": str(cfg.model.backbone.get("aggregation", baseline_operator())),
        "arch": architecture(cfg),
        "dataset": {"train": str(cfg.dataloader.train.dataset.names), "test": str(cfg.dataloader.test.dataset.names)},
    }


def read_run(run_dir: str) -> Dict[str, Any]:
    """What a ``train_net.py`` run folder says about the run: its dumped config (``config.yaml``),
    operator, architecture, datasets, the last evaluation's metrics and the training cost from
    ``metrics.json`` (median seconds per iteration, the peak memory logged, the last iteration).
    Missing files give missing keys."""
    out: Dict[str, Any] = {}
    config_yaml = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(config_yaml):
        with open(config_yaml) as f:
            out["config_dump"] = f.read()
        try:
            from detectron2.config import LazyConfig

            out.update(describe_config(LazyConfig.load(config_yaml)))
        except Exception as e:  # an old or foreign config: the record simply has less in it
            logger.warning("Could not read %s: %s", config_yaml, e)
    metrics_json = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(metrics_json):
        from afa_d2.engine.metrics_json import read_metrics

        rows = read_metrics(metrics_json)  # ValueError naming the line where it is damaged
        evals = [r for r in rows if "bbox/AP" in r]
        if evals:
            last = evals[-1]
            out["metrics"] = {"{}_{}".format(key, m): float(last["{}/{}".format(task, m)])
                              for task, key in (("bbox", "box"), ("segm", "mask"))
                              for m in ("AP", "AP50", "AP75") if "{}/{}".format(task, m) in last}
        times = [r["time"] for r in rows if "time" in r]
        training: Dict[str, Any] = {}
        if times:
            training["seconds_per_iter"] = statistics.median(times)
        peaks = [r["peak_mem_mib"] for r in rows if "peak_mem_mib" in r]
        if peaks:
            training["peak_memory_mib"] = max(peaks)
        iters = [r["iteration"] for r in rows if "iteration" in r]
        if iters:
            training["iterations"] = max(iters) + 1
        out["training"] = training
    return out


def _merge(base: Dict[str, Any], extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in (extra or {}).items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def publish_checkpoint(
    checkpoint: str,
    output_dir: str,
    *,
    name: Optional[str] = None,
    config: Optional[str] = None,
    run_dir: Optional[str] = None,
    metadata: Optional[Dict[str, Any]] = None,
    update_index: bool = True,
) -> Dict[str, Any]:
    """Publish ``checkpoint`` into ``output_dir``: model weights and a metadata record only.

    Args:
        checkpoint (str): a training checkpoint (``{"model": ..., "optimizer": ...}``) or weights.
        output_dir (str): the zoo folder (created if needed).
        name (str): the file's stem, e.g. "mask_rcnn_R_18_msca_shapes" (default: the config's
            file name without extension, else the checkpoint's folder name).
        config (str): the config's zoo name ("shapes/mask_rcnn_R_18_msca.py"); the index maps it
            to this file.
        run_dir (str): the run folder to read ``config.yaml`` / ``metrics.json`` from (default:
            the checkpoint's folder).
        metadata (dict): entries that win over what is read (nested dicts are merged), e.g.
            ``{"inference": {"seconds_per_image": 0.2}, "training": {"peak_memory_mib": 900}}``.
        update_index (bool): rewrite ``model_zoo.json`` of ``output_dir``.

    Returns:
        dict: ``{"file", "path", "sha256", "metadata"}`` of the published checkpoint.
    """
    from afa_d2.engine.checkpoint import load_checkpoint_file

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError("checkpoint {}: no such file".format(checkpoint))
    run_dir = run_dir or os.path.dirname(os.path.abspath(checkpoint))
    data = load_checkpoint_file(checkpoint, trusted_dirs=[run_dir])
    weights = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError("checkpoint {} holds no model weights (expected {{'model': state_dict}} or a state "
                         "dict of tensors)".format(checkpoint))
    dropped = sorted(k for k in data if k != "model") if "model" in data else []
    record = _merge(read_run(run_dir), {
        "format": FORMAT,
        "config": config,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "published": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {"machine": platform.machine(), "processor": _cpu_model(), "cpus": os.cpu_count()},
    })
    if "iteration" in data and "iterations" not in record.get("training", {}):
        record.setdefault("training", {})["iterations"] = int(data["iteration"]) + 1
    if "operator" not in record and config and config.endswith(".py"):  # no run folder: the zoo config says
        from .zoo import get_config

        record = _merge(describe_config(get_config(config)), record)
    record = _merge(record, metadata)
    if "operator" not in record:
        record["operator"] = _operator_from_weights(weights)
    stem = name or (os.path.splitext(os.path.basename(config))[0] if config else os.path.basename(run_dir))
    record["name"] = stem
    # plain JSON types only: the weights-only loader reads them, and so does any tool
    record = json.loads(json.dumps(record, default=str))

    os.makedirs(output_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".publish-", suffix=".pth", dir=output_dir)
    os.close(fd)
    try:
        torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                    METADATA_KEY: record}, tmp)
        digest = sha256_of(tmp)
        final = os.path.join(output_dir, hashed_name(stem, digest))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a published file is served to others
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("Published %s (dropped from the training checkpoint: %s)", final, ", ".join(dropped) or "nothing")
    entry = {"file": os.path.basename(final), "path": final, "sha256": digest, "metadata": record}
    if update_index:
        write_index(output_dir)
    return entry


def _operator_from_weights(weights: Dict[str, torch.Tensor]) -> str:
    """The aggregation operator(s) a state dict's neck holds, from its module names: the registry's names,
    "/"-joined where the weights cannot tell operators apart or the levels differ."""
    levels: Dict[str, set] = {}
    for k in weights:
        if k.startswith("backbone.fpn_aggregation"):
            parts = k.split(".")
            levels.setdefault(parts[1], set()).update(parts[2:3])  # the level's direct submodule, if any
    ops = {name for children in levels.values() for name in operators_with_modules(children)}
    return "/".join(sorted(ops)) if ops else baseline_operator()


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata record of a published checkpoint (checked against the hash in its name)."""
    from afa_d2.engine.checkpoint import load_checkpoint_file

    verify_file(path)
    data = load_checkpoint_file(path)
    if not isinstance(data, dict) or METADATA_KEY not in data:
        raise ValueError("{} is not a published afa_d2 checkpoint (no {!r} record)".format(path, METADATA_KEY))
    return data[METADATA_KEY]


def write_index(output_dir: str) -> Dict[str, Any]:
    """Write ``<output_dir>/model_zoo.json`` from the hash-named checkpoints in it.

    Each file is checked against its hash (a bad one is left out, with a warning). A config
    published more than once maps to its most recent file. Returns the index.
    """
    from afa_d2.storage import atomic_write_text

    checkpoints: Dict[str, Dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "*.pth"))):
        if not HASH_PREFIX_RE.search(os.path.basename(path)):
            continue
        try:
            meta = read_metadata(path)
        except Exception as e:
            logger.warning("Left out of the zoo index: %s", e)
            continue
        key = meta.get("config") or meta.get("name")
        entry = {"file": os.path.basename(path), "sha256": sha256_of(path), "metadata": meta}
        if key not in checkpoints or meta.get("published", "") >= checkpoints[key]["metadata"].get("published", ""):
            checkpoints[key] = entry
    index = {"format": FORMAT, "checkpoints": checkpoints}
    atomic_write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", os.path.join(output_dir, INDEX_NAME))
    return index


def _fmt(value, digits: int = 1, scale: float = 1.0) -> str:
    return "—" if value is None else "{:.{}f}".format(value * scale, digits)


TABLE_HEADER = ("| config | operator | iterations | box AP | mask AP | train s/iter | inference s/img | "
                "train peak memory | file | load it |\n"
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")


def table_row(entry: Dict[str, Any]) -> str:
    """One row of MODEL_ZOO.md's table for a published checkpoint (an index entry)."""
    m = entry["metadata"]
    metrics, training, inference = m.get("metrics", {}), m.get("training", {}), m.get("inference", {})
    config = m.get("config")
    mem = training.get("peak_memory_mib")
    load = '`model_zoo.get("{}", trained=True)`'.format(config) if config else "—"
    return "| {} | {} | {} | {} | {} | {} | {} | {} | `{}` | {} |".format(
        "`{}`".format(config) if config else m.get("name", "?"), m.get("operator", "?"),
        training.get("iterations", "—"), _fmt(metrics.get("box_AP")), _fmt(metrics.get("mask_AP")),
        _fmt(training.get("seconds_per_iter"), 3), _fmt(inference.get("seconds_per_image"), 3),
        "—" if mem is None else "{:.0f} MiB".format(mem), entry["file"], load)


def render_model_zoo_md(index: Dict[str, Any], *, paper_configs: Sequence[str] = tuple(PAPER_RESULTS)) -> str:
    """MODEL_ZOO.md from an index (:func:`write_index`): the published checkpoints, then the
    paper's rows that have no weights yet, with the paper's numbers marked as the paper's."""
    entries: List[Dict[str, Any]] = sorted(index.get("checkpoints", {}).values(),
                                           key=lambda e: (e["metadata"].get("config") or "", e["file"]))
    hosts = sorted({"{} CPUs ({})".format(e["metadata"].get("host", {}).get("cpus"),
                                          e["metadata"].get("host", {}).get("processor")
                                          or e["metadata"].get("host", {}).get("machine"))
                    for e in entries})
    commits = sorted({str(e["metadata"].get("git_commit")) for e in entries})
    lines = [
        "# afa_d2 model zoo",
        "",
        "Generated by `tools/train_model_zoo.py` from the published checkpoints' own metadata "
        "(`afa_d2.model_zoo.publish.render_model_zoo_md`); do not edit by hand.",
        "",
        "A published checkpoint holds the model's weights and a metadata record (config, operator, "
        "versions, git commit, metrics, training cost), nothing of the optimizer or trainer, and is "
        "named `<name>-<first 8 hex of its sha256>.pth`; every load checks that hash, cached copies "
        "included. `model_zoo.get(config, trained=True)` fetches it from the zoo URL "
        "(`$AFA_D2_ZOO_URL`: an http(s) or file URL, or a folder; default `$AFA_D2_CACHE/model_zoo`, "
        "where the zoo tools publish). See README.md, \"Pretrained weights and the model zoo\".",
        "",
        "## Trained here: the built-in `shapes` dataset (CPU, from scratch)",
        "",
    ]
    if entries:
        lines += [
            "Box and mask AP on `shapes_val` (200 images); training seconds per iteration (median), the "
            "training process's peak memory and inference seconds per image were measured on the host that "
            "trained them: {}; commit {}. These files are not hosted publicly: `python tools/train_model_zoo.py` "
            "trains and publishes the same set on any machine (the hashes differ: training is not "
            "bit-identical across hosts).".format(", ".join(hosts), ", ".join(commits)),
            "",
            TABLE_HEADER,
        ]
        lines += [table_row(e) for e in entries]
    else:
        lines.append("No checkpoint published yet: run `python tools/train_model_zoo.py`.")
    lines += [
        "",
        "## The paper's recipes: no weights yet",
        "",
        "These configs reproduce the paper's tables (12 epochs on COCO / LVIS, 8 GPUs). No weights have been "
        "trained for them yet; the numbers are **the paper's** (its Tables 1-6), not ours.",
        "",
        "| config | table | weights | paper box AP | paper mask AP | paper FPS |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    published = {e["metadata"].get("config") for e in entries}
    for config in paper_configs:
        if config in published:
            continue
        p = PAPER_RESULTS[config]
        lines.append("| `{}` | {} | no weights yet | {} (paper) | {} | {} |".format(
            config, p["table"], _fmt(p["box_AP"]), _fmt(p["mask_AP"]) + (" (paper)" if p["mask_AP"] else ""),
            _fmt(p["fps"]) + (" (paper)" if p["fps"] else "")))
    return "\n".join(lines) + "\n"


def write_model_zoo_md(index: Dict[str, Any], path: str) -> str:
    """Write :func:`render_model_zoo_md` of ``index`` to ``path`` and the index itself beside it
    (``MODEL_ZOO.md`` -> ``MODEL_ZOO.json``, metadata only, no weights), so that anyone can check
    that the page is what its records render to. Returns ``path``."""
    from afa_d2.storage import atomic_write_text

    atomic_write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", os.path.splitext(path)[0] + ".json")
    atomic_write_text(render_model_zoo_md(index), path)
    return path
