"""What every report writer receives: the run's facts, then cases and groups as they finish."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

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
    extra: dict[str, Any] = field(default_factory=dict)  # plugins' own options (--html PATH)


@dataclass(frozen=True)
class ReportOption:
    """A `gradaudit run` option of a reporter plugin, registered through the
    `register_report_options` hook as `register(NAME, ReportOption(help=...))`: `--NAME
    VALUE` (or `--NAME` alone with `is_flag`) reaches every reporter factory as
    `options.extra[NAME]` (absent when not given). Calling it converts the value given."""

    help: str
    metavar: str = "VALUE"
    is_flag: bool = False
    path: bool = False  # a report path: refused when it is the spec or another report's

    def __call__(self, value: Any) -> Any:
        return bool(value) if self.is_flag else str(value)


@dataclass(frozen=True)
class RunInfo:
    """Facts about one run that every report records: the spec it read, the plan it made
    (with the target's own facts), and where it ran."""

    loaded: LoadedSpec
    plan: Plan
    versions: dict[str, str]
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    host: str = field(default_factory=platform.node)
    clock: float = field(default_factory=time.perf_counter)  # when the run started

    @property
    def tensors(self) -> list[str]:
        return list(self.plan.tensors)

    @property
    def shard(self) -> Shard | None:
        return self.plan.shard

    def metadata(self) -> dict[str, str]:
        """Flat string facts, for JUnit properties and the JSON header."""
        return {
            **self.versions,
            "kind": self.plan.kind,
            "spec": str(self.loaded.path),
            "spec_name": self.plan.spec_name,
            "spec_sha256": self.loaded.sha256,
            **self.plan.facts,
            "shard": str(self.shard) if self.shard else "",
            "warnings": " | ".join(self.plan.warnings),
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


def wants_checkpoints(reporter: Reporter) -> bool:
    """Whether `checkpoint` does something for this reporter: False for one that says
    `checkpoints = False` (the console) or keeps EndOfRunReporter's. The run so far is
    folded for checkpoints only when some reporter wants them (a quarter of the CPU time of
    a small run's supervisor went to folding summaries nobody wrote)."""
    if getattr(reporter, "checkpoints", True) is False:
        return False
    return getattr(type(reporter), "checkpoint", None) is not EndOfRunReporter.checkpoint
