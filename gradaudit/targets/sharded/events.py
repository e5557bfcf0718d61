"""How a rank tells its launcher what it does, through files in the run's folder:

- `rank<R>.events`: the engine's events (gradaudit.run.events), a line each, appended;
- `rank<R>.progress`: the batch in progress, two integers mapped into the rank's memory
  (updating it is a store, not a system call: a flushed line a batch slowed the collectives
  of a small model by several per cent);
- `rank<R>.state`: `ready PID`, then `finished`, or `abort` with why (JSON).
The launcher reads them all.
"""

from __future__ import annotations

import json
import mmap
import struct
import time
from pathlib import Path
from typing import IO, Any

from gradaudit.run.events import Event, encode

PROGRESS = struct.Struct("<qq")  # (passes opened on this rank, batch in progress or -1)


class RankFiles:
    """A rank's event file, progress record and state."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.folder, self.rank = folder, rank
        self.handle: IO[bytes] = open(folder / f"rank{rank}.events", "ab")  # noqa: SIM115
        progress = folder / f"rank{rank}.progress"
        progress.write_bytes(bytes(PROGRESS.size))
        with open(progress, "r+b") as handle:
            self.progress = mmap.mmap(handle.fileno(), PROGRESS.size)
        self.batch = -1
        self.leaving = False  # on the way out after an error: keep what was run, then stop

    def emit(self, events: list[Event]) -> None:
        """Append events, flushed: a killed rank loses nothing it wrote."""
        if events:
            self.handle.write(encode(events))
            self.handle.flush()

    def at(self, batch: int) -> None:
        self.batch = batch
        PROGRESS.pack_into(self.progress, 0, 0, batch)

    def state(self, word: str, **fields: Any) -> None:
        """`ready`, `finished` or `abort`: the last line of rank<R>.state is the rank's."""
        line = json.dumps({"state": word, "t": time.time(), **fields})
        with open(self.folder / f"rank{self.rank}.state", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def read_progress(path: Path) -> int | None:
    """The batch in progress from a rank's progress file (-1 before the first), or None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < PROGRESS.size:
        return None
    return int(PROGRESS.unpack_from(data)[1])


def read_state(path: Path) -> list[dict[str, Any]]:
    """Every state line a rank wrote (ready, then finished or abort)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
