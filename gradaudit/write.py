"""Writing report files so that a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradaudit.errors import OutputError, UsageError


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same path, a symbolic link or a hard link."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwriting(outputs: dict[str, str | None], inputs: list[str | Path]) -> None:
    """Exit 2 before anything is written when a report path names an input of the run (by
    any path, link or hard link) or another report path."""
    given = {option: path for option, path in outputs.items() if path}
    for option, path in given.items():
        for source in inputs:
            if same_file(path, source):
                raise UsageError(f"{option} {path}: is an input of this run ({source})")
    names = list(given.items())
    for i, (option, path) in enumerate(names):
        for other, again in names[i + 1 :]:
            if same_file(path, again):
                raise UsageError(f"{option} and {other} name the same file: give each its own")


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
