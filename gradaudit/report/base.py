"""What every report writer receives: the run's facts, then cases and groups as they finish."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from gradaudit.results import CaseResult, GroupResult, RunSummary, Shard
from gradaudit.spec import LoadedSpec

if TYPE_CHECKING:
    from gradaudit.plan import Plan


@dataclass(frozen=True)
class ReportOptions:
    """What a run asked of its reports (from the CLI, pytest or a Python call); each
    registered reporter factory reads what concerns it and returns None when not asked."""

    junit_xml: str | None = None
    json_path: str | None = None
    verbosity: int = 0
    color: bool = False
    progress: bool = False


@dataclass(frozen=True)
class RunInfo:
    """Facts about one run that every report records."""

    loaded: LoadedSpec
    tensors: list[str]
    versions: dict[str, str]
    shard: Shard | None = None
    plan: Plan | None = None
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
            "batches": f"{b.split}: count={b.count} size={b.size}",
            "tolerance_mode": spec.tolerance.mode,
            "shard": str(self.shard) if self.shard else "",
            "warnings": " | ".join(self.plan.warnings) if self.plan else "",
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

    def checkpoint(self, summary: RunSummary) -> None:
        """Files that must exist while the run goes on override this (see Reporter)."""


class Reporter(Protocol):
    """A report format: the run's events in order. `checkpoint` gets the run so far with
    every planned case not yet done as an error ("the run did not finish"): a file report
    writes it, so a run killed at any point leaves a report that says so. `finish` runs
    even when the run stops early (`summary.stopped`)."""

    def start(self, info: RunInfo) -> None: ...

    def case(self, result: CaseResult) -> None: ...

    def group(self, group: GroupResult) -> None: ...

    def checkpoint(self, summary: RunSummary) -> None: ...

    def finish(self, summary: RunSummary) -> None: ...


NOT_FINISHED = "the run did not finish (killed, or still running)"


def provisional(summary: RunSummary, plan: Plan) -> RunSummary:
    """The run so far, with every planned case not done yet as an error."""
    copy = RunSummary(groups=[])
    for group in summary.groups:
        copy.add(group)
    copy.stopped = NOT_FINISHED
    copy.complete(plan, NOT_FINISHED)
    return copy
