"""`--json PATH`: every metric of every (device, dtype, tensor, batch), streamed to disk.

The document (schema in docs/json-report.md) is written into a temp file as the run
goes, so memory stays flat over any number of batches, and renamed into place at
the end, also when the run stops early.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from gradaudit.report.base import RunInfo
from gradaudit.results import CaseResult, GroupResult, RunSummary
from gradaudit.write import temp_beside, write_atomic

SCHEMA = "gradaudit-run"
SCHEMA_VERSION = 1


def finite(value: Any) -> Any:
    """JSON has no inf or NaN: they are written as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and (value != value or abs(value) == float("inf")):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def unfinite(value: Any) -> Any:
    """The inverse of `finite`, for reading reports back."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: unfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unfinite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(finite(value), allow_nan=False, sort_keys=False)


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
    return record | {
        "status": "pass" if c.passed else "fail",
        "exact": c.exact,
        "max_abs": c.max_abs,
        "max_rel": c.max_rel,
        "budget": c.budget,
        "mismatched": c.mismatched,
        "nonfinite": c.nonfinite,
        "numel": c.numel,
        "worst_index": list(c.worst_index),
        "manual": c.manual_value,
        "reference": c.reference_value,
        "allowed": c.allowed,
        "reference_error": c.reference_error,
        "sym_rel": c.sym_rel,
        "cosine": c.cosine,
    }


def group_record(group: GroupResult) -> dict[str, Any]:
    return {
        "device": group.device,
        "dtype": group.dtype,
        "check": group.check,
        "device_name": group.device_name,
        "skipped": group.skipped,
        "complete": group.done,
        "seconds": round(group.seconds, 6),
        "tensors": [s.to_dict() for s in group.tensors],
    }


def totals(summary: RunSummary) -> dict[str, int]:
    return {
        "passed": summary.passed,
        "failed": summary.failed,
        "errors": summary.errors,
        "skipped": summary.skipped,
    }


class JsonReporter:
    """Streams case records into a temp file beside the target; renames it at the end."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.handle: IO[str] | None = None
        self.tmp = ""
        self.first_case = True
        self.header = ""

    def start(self, info: RunInfo) -> None:
        fd, self.tmp = temp_beside(self.path)
        self.handle = os.fdopen(fd, "w", encoding="utf-8")
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
        self.handle.close()
        os.replace(self.tmp, self.path)
        self.handle = None
