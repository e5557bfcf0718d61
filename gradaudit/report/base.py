"""What every report writer receives: the run's facts, then cases and groups as they finish."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from gradaudit.results import CaseResult, GroupResult, RunSummary, Shard
from gradaudit.spec import LoadedSpec


@dataclass(frozen=True)
class RunInfo:
    """Facts about one run that every report records."""

    loaded: LoadedSpec
    tensors: list[str]
    versions: dict[str, str]
    shard: Shard | None = None
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    host: str = field(default_factory=platform.node)

    def metadata(self) -> dict[str, str]:
        """Flat string facts, for JUnit properties and the JSON header."""
        spec = self.loaded.spec
        b = spec.batches
        return {
            **self.versions,
            "spec": str(self.loaded.path),
            "spec_name": spec.name,
            "spec_sha256": self.loaded.sha256,
            "seed": str(b.seed),
            "batches": f"{b.split}: count={b.count} size={b.size} block_size={b.block_size}",
            "tolerance_mode": spec.tolerance.mode,
            "shard": str(self.shard) if self.shard else "",
            "started": self.started,
            "host": self.host,
        }


class EndOfRunReporter:
    """Base for formats written once at the end: keeps the run's facts, ignores progress."""

    info: RunInfo | None = None

    def start(self, info: RunInfo) -> None:
        self.info = info

    def case(self, result: CaseResult) -> None:
        """Per-case results are not needed by end-of-run formats."""

    def group(self, group: GroupResult) -> None:
        """Groups are read from the summary at the end."""


class Reporter(Protocol):
    """A report format. `finish` runs even when the run stops early (`summary.stopped`)."""

    def start(self, info: RunInfo) -> None: ...

    def case(self, result: CaseResult) -> None: ...

    def group(self, group: GroupResult) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...
