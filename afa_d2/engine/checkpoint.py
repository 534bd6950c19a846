"""A detectron2 checkpointer that never leaves a half-written file behind, and loads safely.

Three differences from :class:`detectron2.checkpoint.DetectionCheckpointer`:

Atomic writes
    ``save`` writes ``<dir>/.<name>.pth.tmp-<pid>``, flushes and fsyncs it, then ``os.replace``
    renames it over ``<dir>/<name>.pth``; the ``last_checkpoint`` tag is written the same way,
    after the checkpoint. A process killed at any point leaves either the old or the new
    file under each name, never a truncated one, so ``last_checkpoint`` always names a
    complete checkpoint (stale ``*.tmp-*`` files may remain; they are removed by the next save
    of the same name).

Loading under torch >= 2.6 (``weights_only=True`` by default)
    A full training checkpoint holds the model, the optimizer state, the iteration, the lr
    scheduler and AMP scaler states: tensors, numbers, strings, lists, tuples and dicts, which
    the weights-only unpickler accepts, plus the few safe globals in :data:`SAFE_GLOBALS`
    (allowlisted). So every ``.pth`` is first loaded with ``weights_only=True``. Only when that
    fails (a checkpoint that pickled some other object) and the file is *trusted* is it
    re-loaded with ``weights_only=False``, with a warning. Trusted means: it lies in this
    checkpointer's own ``save_dir`` (a file this trainer wrote), or ``AFA_D2_TRUST_CHECKPOINTS=1``
    is set (the user vouches for a local file). Anything else fails with a message naming the
    file, the refused global and the two ways out. ``.pkl`` files (detectron2 / Detectron model
    zoo format) are read by detectron2 as before.

Checkpoints by URL, checked by hash
    ``load`` takes a local path or an ``http(s)://``, ``file://`` or ``detectron2://`` URL: URLs
    are fetched into afa_d2's cache, and a file whose name carries a sha256 prefix
    (``<name>-<hash>.pth``, how the model zoo publishes) is checked against it on every load
    (:func:`afa_d2.hub.fetch_checkpoint`). A file that is not a readable checkpoint
    (truncated, corrupt) raises :class:`CorruptCheckpointError` naming it.

Shapes that do not fit
    fvcore skips a parameter whose shape differs and logs a warning per key, which is easy to
    miss. Here every load builds a :class:`LoadReport` (loaded, shape-mismatched with both
    shapes, missing, unexpected keys), logs it as one readable block, keeps it in
    :attr:`AtomicCheckpointer.last_load_report`, and with ``strict_shapes=True`` raises
    :class:`CheckpointShapeError` carrying the same text (``train_net.py --eval-only`` does:
    evaluating a partly loaded model is meaningless).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from afa_d2.storage import SAFE_GLOBALS, atomic_torch_save, atomic_write_text

__all__ = [
    "AtomicCheckpointer",
    "CheckpointShapeError",
    "CorruptCheckpointError",
    "UntrustedCheckpointError",
    "LoadReport",
    "TRUST_ENV",
    "load_checkpoint_file",
]

logger = logging.getLogger(__name__)

TRUST_ENV = "AFA_D2_TRUST_CHECKPOINTS"


class CheckpointShapeError(RuntimeError):
    """A checkpoint's tensors do not fit the model (raised with ``strict_shapes=True``)."""

    def __init__(self, message: str, report: "LoadReport"):
        super().__init__(message)
        self.report = report


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint needs full unpickling but is not trusted."""


class CorruptCheckpointError(RuntimeError):
    """A file that is not a readable checkpoint (truncated, corrupt, not a torch file)."""


@dataclass
class LoadReport:
    """What a load did to the model's state dict."""

    path: str
    num_model_keys: int
    loaded: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.mismatched

    def describe(self, limit: int = 50) -> str:
        lines = [
            "Checkpoint {}: loaded {} of the model's {} tensors".format(
                self.path, len(self.loaded), self.num_model_keys
            )
        ]
        if self.mismatched:
            lines.append(
                "{} key(s) NOT loaded because their shapes do not fit (name: checkpoint shape vs model shape):".format(
                    len(self.mismatched)
                )
            )
            for name, ckpt_shape, model_shape in self.mismatched[:limit]:
                lines.append("  {}: {} in the checkpoint vs {} in the model".format(name, ckpt_shape, model_shape))
            if len(self.mismatched) > limit:
                lines.append("  ... and {} more".format(len(self.mismatched) - limit))
        if self.missing:
            lines.append("{} model key(s) not in the checkpoint (left as initialized): {}".format(
                len(self.missing), _short_list(self.missing, limit)))
        if self.unexpected:
            lines.append("{} checkpoint key(s) not in the model (ignored): {}".format(
                len(self.unexpected), _short_list(self.unexpected, limit)))
        return "\n".join(lines)

    __str__ = describe


def _short_list(keys: List[str], limit: int) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (" ... (+{} more)".format(len(keys) - limit) if len(keys) > limit else "")


def _is_trusted(path: str, trusted_dirs: List[str]) -> bool:
    if os.environ.get(TRUST_ENV, "") not in ("", "0"):
        return True
    real = os.path.realpath(path)
    for d in trusted_dirs:
        if d and os.path.dirname(real) == os.path.realpath(d):
            return True
    return False


def _refusal(e: Exception) -> str:
    """The refused global from torch's weights-only error, e.g. ``GLOBAL mod.Cls``."""
    text = str(e)
    m = re.search(r"(Unsupported global: )?GLOBAL [\w.]+", text)
    if m:
        return m.group(0)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def load_checkpoint_file(path: str, trusted_dirs: Optional[List[str]] = None) -> Any:
    """Load a ``.pth`` checkpoint on CPU: weights-only first, full unpickling only if trusted.

    Args:
        path (str): a local file.
        trusted_dirs (list[str]): directories whose files may be fully unpickled (a
            trainer's own output directory).

    Raises:
        UntrustedCheckpointError: the file needs full unpickling and is not trusted.
    """
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # not a refused object: bytes that are not a pickle at all
            raise _corrupt(path, e) from e
        if not _is_trusted(path, trusted_dirs or []):
            raise UntrustedCheckpointError(
                "Refusing to fully unpickle checkpoint {}: it holds objects the weights-only loader "
                "does not allow ({}). Full unpickling can run arbitrary code. If you trust this "
                "file, set {}=1, or load it and re-save only its tensors.".format(path, _refusal(e), TRUST_ENV)
            ) from e
        logger.warning(
            "Checkpoint %s is not loadable with weights_only=True (%s); it is trusted (own output "
            "directory or %s), so it is loaded with weights_only=False.",
            path, _refusal(e), TRUST_ENV,
        )
        return torch.load(path, map_location=torch.device("cpu"), weights_only=False)
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        # torch's zip reader, a short legacy pickle, bytes that are not a pickle (KeyError of the first byte)
        raise _corrupt(path, e) from e


def _corrupt(path: str, e: Exception) -> CorruptCheckpointError:
    # torch wraps the unpickler's own words ("Unsupported operand 103", "pickle data was
    # truncated") between paragraphs about weights_only: keep those words
    noise = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith(noise)]
    reason = lines[0] if lines else type(e).__name__
    if isinstance(e, KeyError):  # the unpickler's lookup of an opcode it does not know
        reason = "not a pickle (unknown opcode {})".format(reason)
    return CorruptCheckpointError(
        "checkpoint {} is not a readable torch checkpoint (truncated or corrupt?): {}".format(path, reason))


def _fetch(path: str) -> str:
    """A URL or a hash-named file as a local, verified file (model zoo); other paths as they are.

    A ``?query`` (detectron2's ``?matching_heuristics=True``) is kept on the result.
    """
    from urllib.parse import urlparse

    from afa_d2.hub import expected_hash_prefix, fetch_checkpoint

    base, sep, query = path.partition("?")
    if urlparse(base).scheme in ("http", "https", "file", "detectron2") or expected_hash_prefix(base):
        return fetch_checkpoint(base) + sep + query
    return path


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` with atomic saves, safe loads and a clear load report.

    Args:
        model, save_dir, save_to_disk, **checkpointables: as for ``DetectionCheckpointer``.
        strict_shapes (bool): raise :class:`CheckpointShapeError` when a tensor's shape differs.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk=None, strict_shapes: bool = False, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.strict_shapes = strict_shapes
        self.last_load_report: Optional[LoadReport] = None
        self._loading_path = ""

    # -- saving -------------------------------------------------------------------------------
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        os.makedirs(self.save_dir, exist_ok=True)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    # -- loading ------------------------------------------------------------------------------
    def load(self, path: str, *args, **kwargs):
        """``DetectionCheckpointer.load``, leaving the checkpointer usable when the load raises.

        detectron2 (after v0.6) keeps the URL being loaded in ``_parsed_url_during_load`` and
        asserts it is ``None`` when a load starts; it clears it only when the load succeeds.
        A refused or failed load (untrusted pickle, shape error, missing file) would leave it
        set, and every later load of the same checkpointer would fail that assertion.
        """
        self._loading_path = path
        try:
            if path:
                path = _fetch(path)
            return super().load(path, *args, **kwargs)
        finally:
            self._loading_path = ""
            if hasattr(self, "_parsed_url_during_load"):
                self._parsed_url_during_load = None

    def _load_file(self, filename: str):
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)
        loaded = load_checkpoint_file(filename, trusted_dirs=[self.save_dir])
        if not isinstance(loaded, dict) or "model" not in loaded:
            loaded = {"model": loaded}
        return loaded

    def _load_model(self, checkpoint: Any):
        model_keys = list(self.model.state_dict().keys())
        incompatible = super()._load_model(checkpoint)
        bad = {k for k, _, _ in incompatible.incorrect_shapes} | set(incompatible.missing_keys)
        report = LoadReport(
            path=self._loading_path,
            num_model_keys=len(model_keys),
            loaded=[k for k in model_keys if k not in bad],
            mismatched=[(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes],
            missing=[k for k in incompatible.missing_keys if k not in {m for m, _, _ in incompatible.incorrect_shapes}],
            unexpected=list(incompatible.unexpected_keys),
        )
        self.last_load_report = report
        if report.mismatched or report.missing or report.unexpected:
            text = report.describe()
            if report.mismatched and self.strict_shapes:
                raise CheckpointShapeError(text, report)
            self.logger.warning(text)
        else:
            self.logger.info(report.describe())
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        # Replaced by the single LoadReport block logged in _load_model.
        pass
