"""Published checkpoints by config name: ``get_checkpoint_url`` and ``get``, detectron2's API.

Where the published checkpoints are is the *zoo URL*: ``$AFA_D2_ZOO_URL`` if set (an
``http(s)://`` prefix of a file server, a ``file://`` URL or a folder), else the local folder
``$AFA_D2_CACHE/model_zoo`` that ``tools/train_model_zoo.py`` and ``tools/publish_model.py``
publish into by default. The zoo holds the checkpoint files (``<name>-<sha256 prefix>.pth``)
and ``model_zoo.json``, the index written from the files' own metadata
(:func:`afa_d2.model_zoo.publish.write_index`), which maps each config name to its file.

The index of a remote zoo is fetched on each lookup and cached; without a network the cached
index is used (with a warning). The checkpoints themselves go through
:func:`afa_d2.hub.fetch_checkpoint`: cached once, and checked against the hash in their
name on every load.
"""
from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional

from .catalog import get_config_file
from afa_d2.hub import FetchError
from afa_d2.storage import cache_root

__all__ = [
    "INDEX_NAME",
    "ZOO_URL_ENV",
    "CheckpointMismatchError",
    "load_fitting",
    "NotInZooError",
    "get",
    "get_checkpoint_url",
    "get_config",
    "read_index",
    "zoo_url",
]

logger = logging.getLogger(__name__)

ZOO_URL_ENV = "AFA_D2_ZOO_URL"
INDEX_NAME = "model_zoo.json"


class NotInZooError(KeyError):
    """The zoo has no published checkpoint for this config."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model built from its config (another architecture)."""


def default_zoo_dir() -> str:
    """``$AFA_D2_CACHE/model_zoo``: where the zoo tools publish when given no folder."""
    return os.path.join(cache_root(), "model_zoo")


def zoo_url() -> str:
    """The zoo's URL prefix, ending in "/": ``$AFA_D2_ZOO_URL`` or ``file://`` of :func:`default_zoo_dir`."""
    url = os.environ.get(ZOO_URL_ENV, "").strip()
    if not url:
        url = default_zoo_dir()
    if "://" not in url:  # a folder
        url = urllib.parse.urljoin("file:", urllib.request.pathname2url(os.path.abspath(os.path.expanduser(url))))
    return url if url.endswith("/") else url + "/"


def _read_remote_index(url: str, timeout: float) -> Dict[str, Any]:
    cached = os.path.join(cache_root(), "checkpoints", "_index",
                          urllib.parse.quote(url, safe="") + ".json")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "afa_d2"}),
                                    timeout=timeout) as r:
            data = r.read()
        index = json.loads(data.decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        if os.path.isfile(cached):
            logger.warning("Cannot read the zoo index %s (%s): using the copy cached at %s", url, e, cached)
            with open(cached) as f:
                return json.load(f)
        raise FetchError(
            "cannot read the model zoo index {} ({}) and no copy is cached: check the network or {}".format(
                url, getattr(e, "reason", e), ZOO_URL_ENV)
        ) from e
    from afa_d2.storage import atomic_write_text

    os.makedirs(os.path.dirname(cached), exist_ok=True)
    atomic_write_text(json.dumps(index, indent=1, sort_keys=True), cached)
    return index


def read_index(url: Optional[str] = None, timeout: float = 30.0) -> Dict[str, Any]:
    """The zoo's index (``model_zoo.json``): ``{"checkpoints": {config name: entry}}``.

    Args:
        url (str): the zoo URL prefix (default :func:`zoo_url`).
    """
    prefix = url or zoo_url()
    index_url = urllib.parse.urljoin(prefix if prefix.endswith("/") else prefix + "/", INDEX_NAME)
    parsed = urllib.parse.urlparse(index_url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        if not os.path.isfile(path):
            raise NotInZooError(
                "no model zoo at {}: it has no {}. Publish checkpoints there with tools/train_model_zoo.py or "
                "tools/publish_model.py, or set {} to a zoo's URL".format(prefix, INDEX_NAME, ZOO_URL_ENV)
            )
        with open(path) as f:
            return json.load(f)
    if parsed.scheme in ("http", "https"):
        return _read_remote_index(index_url, timeout)
    raise ValueError("{}={!r}: expected an http(s):// or file:// URL, or a folder".format(ZOO_URL_ENV, prefix))


def _config_key(config_path: str) -> str:
    get_config_file(config_path)  # an unknown name fails here, with the closest names
    name = str(config_path).replace(os.sep, "/").lstrip("/")
    return name[len("configs/"):] if name.startswith("configs/") else name


def get_checkpoint_url(config_path: str) -> str:
    """The URL of the published checkpoint trained with ``config_path`` (hash in its name).

    Raises:
        UnknownConfigError: not a shipped config.
        NotInZooError: the zoo has no checkpoint for it (one line: which configs it has).
    """
    key = _config_key(config_path)
    prefix = zoo_url()
    entries = read_index(prefix).get("checkpoints", {})
    if key not in entries:
        raise NotInZooError(
            "the model zoo at {} has no checkpoint for {}; it has: {}".format(
                prefix, key, ", ".join(sorted(entries)) or "none")
        )
    return urllib.parse.urljoin(prefix, entries[key]["file"])


def load_fitting(model, path: str, config_name: str, hint: str = "") -> None:
    """Load ``path`` into ``model``; every model tensor must come from it, with its shape.

    The one "does this checkpoint fit this config" check of the package (``get(trained=True)``,
    the export, analysis and visualize tools). ``hint`` is appended to the message.

    Raises:
        CheckpointMismatchError: one line: how many tensors differ in shape, are missing or are
            extra, the first few named.
    """
    from afa_d2.engine.checkpoint import AtomicCheckpointer

    checkpointer = AtomicCheckpointer(model, strict_shapes=False)
    checkpointer.load(path)
    report = checkpointer.last_load_report
    if report is None or not (report.mismatched or report.missing or report.unexpected):
        return
    parts = []
    if report.mismatched:
        parts.append("{} tensor(s) differ in shape ({})".format(len(report.mismatched), ", ".join(
            "{}: {} in the checkpoint vs {} in the model".format(k, list(a), list(b))
            for k, a, b in report.mismatched[:4])))
    if report.missing:
        parts.append("{} model tensor(s) missing ({})".format(len(report.missing), ", ".join(report.missing[:4])))
    if report.unexpected:
        parts.append("{} checkpoint tensor(s) the model does not have ({})".format(
            len(report.unexpected), ", ".join(report.unexpected[:4])))
    raise CheckpointMismatchError(
        "checkpoint {} does not fit the model of {} (another architecture?): {}{}".format(
            path, config_name, "; ".join(parts), "; " + hint if hint else "")
    )


def get(config_path: str, trained: bool = False, device: Optional[str] = None):
    """The model of ``config_path``, with its published weights if ``trained``.

    Like ``detectron2.model_zoo.get``: returns the built ``torch.nn.Module`` (in training mode;
    call ``.eval()`` for inference) on ``device`` (default: "cuda" when available, else "cpu").
    With ``trained=True`` every weight must come from the checkpoint: one that does not fit the
    config raises :class:`CheckpointMismatchError` naming the keys and shapes that differ.
    """
    import torch

    cfg = get_config(config_path, trained=trained)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if hasattr(cfg, "MODEL"):  # yacs
        from detectron2.modeling import build_model

        cfg.MODEL.DEVICE = device
        model = build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
    else:
        from detectron2.config import instantiate

        model = instantiate(cfg.model).to(device)
        weights = cfg.train.init_checkpoint
    if trained:
        load_fitting(model, weights, config_path)
    return model


def get_config(config_path: str, trained: bool = False):
    """The config ``config_path``: a LazyConfig (``.py``) or a yacs ``CfgNode`` (``.yaml``, with
    ``MODEL.AFA`` added).

    Args:
        config_path (str): a name from :func:`list_configs`.
        trained (bool): point the weights (``train.init_checkpoint`` / ``MODEL.WEIGHTS``) at this
            config's published checkpoint (:func:`afa_d2.model_zoo.get_checkpoint_url`).
    """
    path = get_config_file(config_path)
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        from afa_d2.engine.schedule import ensure_schedule_keys

        cfg = LazyConfig.load(path)
        ensure_schedule_keys(cfg)
        if trained:
            cfg.train.init_checkpoint = get_checkpoint_url(config_path)
        return cfg
    from detectron2.config import get_cfg

    from afa_d2.config import add_afa_config

    cfg = get_cfg()
    add_afa_config(cfg)
    cfg.merge_from_file(path)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint_url(config_path)
    return cfg
