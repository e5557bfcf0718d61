"""`--json PATH`: every metric of every (device, dtype, tensor, batch), streamed to disk.

The document (schema in docs/json-report.md) is written into a temp file as the run
goes, so memory stays flat over any number of batches, and renamed into place at
the end, also when the run stops early.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from gradaudit.compare import TensorSummary
from gradaudit.report.base import RunInfo
from gradaudit.report.jsonvalues import SCHEMA, SCHEMA_VERSION, dumps
from gradaudit.results import CaseResult, GroupResult, RunSummary
from gradaudit.text import clean
from gradaudit.write import temp_beside, write_atomic


def case_record(result: CaseResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "device": result.device,
        "dtype": result.dtype,
        "check": result.kind,
        "tensor": result.tensor,
        "batch": result.batch,
        "seed": result.seed,
    }
    if result.tol is not None:
        record["tolerance"] = asdict(result.tol)
    if result.error is not None:
        return record | {"status": "error", "error": result.error}
    assert result.check is not None
    c = result.check
    # A passing batch that was not its tensor's worst so far is settled without locating its
    # worst element or measuring relative errors (gradaudit.compare.screen): those are null.
    located = c.located

    def shown(value: float) -> float | None:
        return value if located else None

    return record | {
        "status": "pass" if c.passed else "fail",
        "exact": c.exact,
        "max_abs": c.max_abs,
        "max_rel": shown(c.max_rel),
        "budget": c.budget,
        "mismatched": c.mismatched,
        "nonfinite": c.nonfinite,
        "numel": c.numel,
        "located": located,
        "worst_index": list(c.worst_index) if located else None,
        "manual": shown(c.manual_value),
        "reference": shown(c.reference_value),
        "allowed": c.allowed if located or c.allowed == c.allowed else None,
        "reference_error": c.reference_error,
        "sym_rel": shown(c.sym_rel),
        "cosine": shown(c.cosine),
    }


def tensor_seconds(group: GroupResult) -> list[float]:
    """Each tensor's share of the group's time. A group cut short by an interrupt has its
    time only on the group (tensors get theirs when it ends): spread it evenly, so that an
    interrupted run's reports do not claim that nothing took any time."""
    own = [s.seconds for s in group.tensors]
    if group.tensors and not any(own) and group.seconds > 0:
        return [group.seconds / len(group.tensors)] * len(group.tensors)
    return own


def summary_record(s: TensorSummary) -> dict[str, Any]:
    """A tensor's summary without its time: two runs of a spec differ only in times."""
    return {k: v for k, v in s.to_dict().items() if k != "seconds"}


def group_record(group: GroupResult) -> dict[str, Any]:
    seconds = tensor_seconds(group)
    return {
        "device": group.device,
        "dtype": group.dtype,
        "check": group.check,
        "device_name": group.device_name,
        "skipped": group.skipped,
        "complete": group.done,
        "warnings": [clean(w) for w in group.warnings],
        "rerun": clean(group.rerun),
        "seconds": round(max(group.seconds, sum(seconds)), 6),
        "tensors": [
            {**s.to_dict(), "seconds": t} for s, t in zip(group.tensors, seconds, strict=True)
        ],
    }


def totals(summary: RunSummary) -> dict[str, int]:
    """The run's counts; a stopped run has one more error (see RunSummary.totals)."""
    return summary.totals()


class JsonReporter:
    """Streams case records into an anonymous temp file (the OS removes it whatever happens
    to the run, SIGKILL included), and copies it beside the target then renames it at the
    end; meanwhile `checkpoint` keeps a complete "did not finish" document at the target."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.handle: IO[str] | None = None
        self.first_case = True
        self.header = ""

    def start(self, info: RunInfo) -> None:
        self.handle = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - lives until finish
        run = info.metadata() | {"tensors": info.tensors}
        self.header = (
            f'{{"schema": "{SCHEMA}", "schema_version": {SCHEMA_VERSION},\n'
            f' "run": {dumps(run)},\n "cases": [\n'
        )
        self.handle.write(self.header)

    def case(self, result: CaseResult) -> None:
        assert self.handle is not None
        self.handle.write(("" if self.first_case else ",\n") + "  " + dumps(case_record(result)))
        self.first_case = False

    def group(self, group: GroupResult) -> None:
        pass

    def checkpoint(self, summary: RunSummary) -> None:
        """A complete document at the target (without case records) while cases stream
        into the temp file, so a killed run leaves a report that says it did not finish."""
        write_atomic(self.path, self.header + self.closing(summary))

    def closing(self, summary: RunSummary) -> str:
        groups = ",\n  ".join(dumps(group_record(g)) for g in summary.groups)
        return (
            f'\n ],\n "groups": [\n  {groups}\n ],\n'
            f' "totals": {dumps(totals(summary))},\n'
            f' "stopped": {dumps(summary.stopped)}\n}}\n'
        )

    def finish(self, summary: RunSummary) -> None:
        if self.handle is None:
            return
        self.handle.write(self.closing(summary))
        self.handle.seek(0)
        fd, tmp = temp_beside(self.path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                shutil.copyfileobj(self.handle, out)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            self.handle.close()
            self.handle = None
