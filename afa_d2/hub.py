"""Checkpoints by path or URL: fetched once into a cache, checked against the hash in their name.

A published checkpoint is named ``<name>-<hash>.pth`` where ``<hash>`` is the first 8 (or more)
hex digits of the file's sha256, torch.hub's convention. torch.hub checks the hash only when it
downloads; here :func:`fetch_checkpoint` checks it on **every** use of such a file, a cached copy
or a local file included, so a file that rotted on disk, was truncated by a full disk, or was
replaced, is never loaded:

* a local path (or ``file://``) whose hash does not match raises :class:`ChecksumError`;
* a cached copy whose hash does not match is deleted and fetched again;
* a download is written to a hidden temporary file next to its cache entry, checked (length
  against ``Content-Length``, then the hash), and only then renamed into place: an interrupted or
  bad download leaves nothing in the cache.

Sources: a local path, ``file://``, ``http(s)://`` and ``detectron2://`` (detectron2's model zoo,
``https://dl.fbaipublicfiles.com/detectron2/``). Downloads are cached under
``$AFA_D2_CACHE/checkpoints/<host>/<path>`` (``$AFA_D2_CACHE`` defaults to ``~/.cache/afa_d2``), and
a cached file is used without touching the network, so everything works offline once fetched.
A file without a hash in its name (detectron2's ``model_final_f10217.pkl`` carries an id, not a
hash) is cached and used as it is.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from afa_d2.storage import cache_root

__all__ = [
    "ChecksumError",
    "FetchError",
    "HASH_PREFIX_RE",
    "cache_root",
    "expected_hash_prefix",
    "fetch_checkpoint",
    "hashed_name",
    "sha256_of",
    "verify_file",
]

logger = logging.getLogger(__name__)

DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
# ``<name>-<hex>.<ext>``: at least 8 hex digits right before the extension (torch.hub's convention).
HASH_PREFIX_RE = re.compile(r"-([0-9a-f]{8,64})\.(pth|pkl|pt)$")
_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A checkpoint's sha256 does not start with the hash its name carries."""


class FetchError(RuntimeError):
    """A checkpoint could not be fetched and no usable copy is cached."""


def expected_hash_prefix(name: str) -> Optional[str]:
    """The hash prefix in a file name ``<name>-<hex>.pth`` (also in a URL), or None."""
    base = os.path.basename(urllib.parse.urlparse(name).path or name)
    m = HASH_PREFIX_RE.search(base)
    return m.group(1) if m else None


def hashed_name(stem: str, sha256: str, ext: str = ".pth", digits: int = 8) -> str:
    """``<stem>-<first digits of sha256><ext>``, the published name of a file."""
    return "{}-{}{}".format(stem, sha256[:digits], ext)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str, expected: Optional[str] = None, *, label: Optional[str] = None) -> str:
    """Check that ``path``'s sha256 starts with ``expected`` (default: the hash in its name).

    Returns the full sha256. Raises :class:`ChecksumError` (one line: the file, the expected
    and the actual prefix) on a mismatch; a file without a hash in its name passes.
    """
    if expected is None:
        expected = expected_hash_prefix(path)
    actual = sha256_of(path)
    if expected is not None and not actual.startswith(expected):
        raise ChecksumError(
            "checkpoint {}: its name says sha256 {}..., the file's is {}...: corrupt, truncated or not the "
            "published file; it was not used".format(label or path, expected, actual[: len(expected)])
        )
    return actual


def _to_url(path_or_url: str) -> str:
    if path_or_url.startswith("detectron2://"):
        return DETECTRON2_PREFIX + path_or_url[len("detectron2://"):]
    return path_or_url


def _cache_path(url: str, cache_dir: str) -> str:
    parsed = urllib.parse.urlparse(url)
    parts = [p for p in parsed.path.split("/") if p not in ("", ".", "..")]
    if not parts:
        raise FetchError("URL {} names no file".format(url))
    return os.path.join(cache_dir, parsed.netloc or "_", *parts)


def _download(url: str, dest: str, expected: Optional[str], timeout: float) -> None:
    """Download ``url`` to ``dest`` through a temporary file; check length and hash first."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = os.path.join(os.path.dirname(dest), ".{}.part-{}".format(os.path.basename(dest), os.getpid()))
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "afa_d2"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as f:
            length = response.headers.get("Content-Length")
            shutil.copyfileobj(response, f, _CHUNK)
            f.flush()
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        if length is not None and size != int(length):
            raise FetchError("download of {} stopped at {} of {} bytes; nothing was cached".format(url, size, length))
        verify_file(tmp, expected, label=url)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch_checkpoint(path_or_url: str, *, cache_dir: Optional[str] = None, timeout: float = 60.0) -> str:
    """A local, verified file for ``path_or_url``; fetched into the cache if it is a URL.

    Args:
        path_or_url (str): a local path, ``file://...``, ``http(s)://...`` or ``detectron2://...``.
        cache_dir (str): where downloads are kept (default ``$AFA_D2_CACHE/checkpoints``).
        timeout (float): seconds to wait for the server.

    Returns:
        str: the path of the local file (for a local source, the source itself).

    Raises:
        FileNotFoundError: a local file that is not there.
        ChecksumError: a local file, or a freshly downloaded one, whose hash does not match its name.
        FetchError: a download that failed with no good cached copy to fall back on.
    """
    if not isinstance(path_or_url, str) or not path_or_url:
        raise ValueError("a checkpoint path or URL is needed, got {!r}".format(path_or_url))
    url = _to_url(path_or_url)
    parsed = urllib.parse.urlparse(url)
    expected = expected_hash_prefix(url)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else path_or_url
        if not os.path.isfile(path):
            raise FileNotFoundError("checkpoint {}: no such file".format(path))
        verify_file(path, expected)
        return path
    if parsed.scheme not in ("http", "https"):
        raise ValueError(
            "checkpoint {!r}: unknown scheme {!r}; valid: a local path, file://, http://, https://, "
            "detectron2://".format(path_or_url, parsed.scheme)
        )
    cached = _cache_path(url, cache_dir or os.path.join(cache_root(), "checkpoints"))
    if os.path.isfile(cached):
        try:
            verify_file(cached, expected, label="{} (cached copy of {})".format(cached, url))
            return cached
        except ChecksumError as e:
            logger.warning("%s: fetching it again", e)
            os.remove(cached)
    logger.info("Fetching %s into %s", url, cached)
    try:
        _download(url, cached, expected, timeout)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchError(
            "cannot fetch {} ({}) and there is no cached copy at {}: check the network or the URL "
            "(AFA_D2_ZOO_URL for the model zoo), or put the file there".format(url, reason, cached)
        ) from e
    return cached
