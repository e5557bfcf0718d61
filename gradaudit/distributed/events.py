"""How a rank tells the launcher what it does: events, and the batch in progress.

Events (start, cases, done, abort, ...) are JSON lines appended to DIR/rank<R>.jsonl. The
batch in progress is two integers in DIR/rank<R>.progress, mapped into the rank's memory:
updating it is a store, not a system call (a flushed line a batch slowed the collectives
of a small model by several per cent). The launcher reads both.
"""

from __future__ import annotations

import json
import mmap
import struct
import time
from pathlib import Path
from typing import IO, Any

PROGRESS = struct.Struct("<qq")  # (cases started on this rank, batch in progress or -1)


class Events:
    """A rank's event file and progress record."""

    def __init__(self, path: Path) -> None:
        self.handle: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.where: dict[str, Any] = {}  # the case and batch in progress, for "abort"
        progress = path.with_suffix(".progress")
        progress.write_bytes(bytes(PROGRESS.size))
        with open(progress, "r+b") as handle:
            self.progress = mmap.mmap(handle.fileno(), PROGRESS.size)
        self.cases = 0
        self.leaving = False  # on the way out after an error: keep what was run, then stop

    def emit(self, event: str, flush: bool = True, **fields: Any) -> None:
        """Append one line; flushed unless the caller flushes a run of them (`flush()`), so
        that a killed rank loses nothing it finished."""
        # NaN and inf as Python's json writes them (the launcher's json reads them back)
        self.handle.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
        if flush:
            self.handle.flush()

    def flush(self) -> None:
        self.handle.flush()

    def start_case(self) -> None:
        self.cases += 1
        PROGRESS.pack_into(self.progress, 0, self.cases, -1)

    def at(self, batch: int) -> None:
        PROGRESS.pack_into(self.progress, 0, self.cases, batch)


def read_progress(path: Path) -> tuple[int, int] | None:
    """(cases started, batch in progress or -1) from a rank's progress file, None if absent."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < PROGRESS.size:
        return None
    cases, batch = PROGRESS.unpack_from(data)
    return int(cases), int(batch)


def why(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class PluginRaised(Exception):
    """A plugin raised on this rank; the message says which and where."""
