"""Writing report files so that a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradaudit.errors import OutputError


def check_writable(path: str | Path) -> None:
    """Fail before the audit, not after it, when a report cannot be written."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target}: is a directory, not a file path")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{target.name}.", delete=True):
            pass
    except OSError as exc:
        raise OutputError(f"{target}: cannot write here: {exc.strerror or exc}") from None


def temp_beside(target: Path) -> tuple[int, str]:
    """A temp file in the target's folder (so the rename is atomic), with umask permissions."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def write_atomic(path: str | Path, text: str) -> None:
    """Write to a temp file beside `path`, then rename over it."""
    target = Path(path)
    fd, tmp = temp_beside(target)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
