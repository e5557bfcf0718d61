"""gradaudit_text: character-level text corpora for gradaudit (data loader "text").

Sources, one per spec (`data.options`):
  source: builtin          a small English text shipped with this plugin (the default)
  path: FILE               a UTF-8 text file; relative paths resolve against the spec's folder
  url: URL, sha256: HEX    downloaded once into the cache, checksum verified on every use
  source: tinyshakespeare  Tiny Shakespeare: `path`, then $GRADAUDIT_DATA_DIR, then the cache,
                           then a download into the cache; its sha256 is always verified
and, with any source, `block_size: N` (default 8): the length of each window of token ids.
Batches hold `inputs` (size, block_size) and `targets` (the inputs shifted by one); the
model factory receives `vocab_size` and `block_size`.

Written only against gradaudit's public API, as any third-party plugin would be.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs

from gradaudit import TokenCorpus, hookimpl

__all__ = ["load_text", "register_data"]

_OPTIONS = ("block_size", "path", "sha256", "source", "url")
_SOURCES = ("builtin", "tinyshakespeare")
_TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
_TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_TINYSHAKESPEARE_NAMES = ("tinyshakespeare.txt", "input.txt")
_DOWNLOAD_TIMEOUT_S = 30
# A spec's `url` makes gradaudit fetch it: read at most this much (Tiny Shakespeare is 1 MiB).
MAX_DOWNLOAD_BYTES = 64 * 2**20


@hookimpl
def register_data(register: Callable[[str, Any], None]) -> None:
    register("text", load_text)


def load_text(options: Mapping[str, Any], base_dir: Path) -> TokenCorpus:
    """Build a character-level `TokenCorpus` from the one source `options` names."""
    unknown = sorted(str(key) for key in options if key not in _OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown text data option(s) {', '.join(unknown)}: allowed are {', '.join(_OPTIONS)}"
        )
    block_size = options.get("block_size", 8)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    options = {k: v for k, v in options.items() if k != "block_size"}
    source = _str_option(options, "source")
    path = _str_option(options, "path")
    url = _str_option(options, "url")
    sha256 = _str_option(options, "sha256")
    if sha256 is not None:
        sha256 = _checked_sha256(sha256)

    if source is not None and source not in _SOURCES:
        raise ValueError(f"unknown text source {source!r}: allowed are {', '.join(_SOURCES)}")
    if source == "tinyshakespeare":
        _only(options, "source: tinyshakespeare", "source", "path")
        data = _tinyshakespeare(_resolve(path, base_dir) if path is not None else None)
        name = "Tiny Shakespeare"
    elif path is not None:
        _only(options, "`path`", "path", "sha256")
        resolved = _resolve(path, base_dir)
        data = _read(resolved)
        if sha256 is not None:
            _verify(data, sha256, str(resolved))
        name = str(resolved)
    elif url is not None:
        _only(options, "`url`", "url", "sha256")
        if sha256 is None:
            raise ValueError("a `url` needs its `sha256`, so that the download can be verified")
        data = _cached_or_download(url, sha256)
        name = url
    elif sha256 is not None:
        raise ValueError("`sha256` verifies a `url` or a `path`: give one of them")
    else:
        _only(options, "source: builtin", "source")
        data = resources.files(__name__).joinpath("builtin.txt").read_bytes()
        name = "the builtin text"
    return _corpus(data, name, block_size)


def _only(options: Mapping[str, Any], what: str, *allowed: str) -> None:
    """One source per spec: reject the options that belong to another source."""
    extra = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if extra:
        raise ValueError(
            f"{what} cannot be combined with {', '.join(extra)}: give exactly one text source"
        )


def _corpus(data: bytes, name: str, block_size: int = 8) -> TokenCorpus:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8 text: {exc}") from None
    if not text:
        raise ValueError(f"{name} is empty: a corpus needs at least one character")
    return TokenCorpus.from_text(text, block_size=block_size)


def _str_option(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is None or isinstance(value, str):
        return value
    if key == "path" and isinstance(value, os.PathLike):
        return str(os.fspath(value))
    raise ValueError(f"text data option {key!r} must be a string, got {value!r}")


def _resolve(path: str, base_dir: Path) -> Path:
    """Relative paths belong to the spec, not to the directory gradaudit runs in."""
    return (base_dir / Path(path).expanduser()).resolve()


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    return path.read_bytes()


def _checked_sha256(value: str) -> str:
    digest = value.strip().lower()
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise ValueError(f"sha256 must be 64 hex digits, got {value!r}")
    return digest


def _verify(data: bytes, sha256: str, name: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"checksum mismatch for {name}: expected sha256 {sha256}, got {actual}")


def _cache_path(sha256: str) -> Path:
    """Content-addressed, so that a file is downloaded once whatever spec asks for it."""
    root = os.environ.get("GRADAUDIT_CACHE_DIR") or platformdirs.user_cache_dir("gradaudit")
    return Path(root).expanduser() / "data" / sha256


def _from_cache(sha256: str) -> bytes | None:
    """The cached bytes if present and intact; a damaged entry is dropped, to be fetched again."""
    path = _cache_path(sha256)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        path.unlink(missing_ok=True)
        return None
    return data


def _download(url: str, sha256: str) -> bytes:
    """Fetch `url` into the cache, verified before it is moved into place.

    The temp file + `os.replace` means a crash or a bad checksum never leaves a
    half-written file where a later run would find it.
    """
    target = _cache_path(sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        data: bytes = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(
            f"{url} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB: not a corpus to download "
            "for an audit (give a `path` to a local copy)"
        )
    _verify(data, sha256, url)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{sha256}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data


def _cached_or_download(url: str, sha256: str) -> bytes:
    cached = _from_cache(sha256)
    if cached is not None:
        return cached
    try:
        return _download(url, sha256)
    except OSError as exc:  # urllib's URLError and timeouts are OSErrors
        reason = getattr(exc, "reason", exc)
        raise OSError(f"download of {url} failed: {reason}") from exc


def _tinyshakespeare(path: Path | None) -> bytes:
    """Look in the places a user or CI would put it before going to the network."""
    sha256 = _TINYSHAKESPEARE_SHA256
    if path is not None:
        data = _read(path)
        _verify(data, sha256, str(path))
        return data
    data_dir = os.environ.get("GRADAUDIT_DATA_DIR")
    if data_dir:
        for name in _TINYSHAKESPEARE_NAMES:
            candidate = Path(data_dir).expanduser() / name
            if candidate.is_file():
                data = candidate.read_bytes()
                _verify(data, sha256, str(candidate))
                return data
    cached = _from_cache(sha256)
    if cached is not None:
        return cached
    try:
        return _download(_TINYSHAKESPEARE_URL, sha256)
    except OSError as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        where = (
            f"$GRADAUDIT_DATA_DIR/tinyshakespeare.txt (GRADAUDIT_DATA_DIR={data_dir or 'unset'})"
        )
        raise FileNotFoundError(
            f"Tiny Shakespeare not found and download failed ({reason}): put input.txt "
            f"(sha256 {sha256}) at {where} or at {_cache_path(sha256)}"
        ) from exc
