"""`gradaudit diff BEFORE.json AFTER.json`: which tensors got worse between two runs.

A run is green as long as every element stays within its allowance, so a change that makes a
manual gradient four times less accurate, but still inside the tolerance, passes. The diff
compares each tensor's worst budget (`worst.budget`: the largest |diff| / allowed over its
elements and batches; above 1 fails) in two reports, per (device, dtype, check) case:

- new failure: red (fail or error) after, not red before; a tensor or case that is new and red
  counts too, and so does an AFTER run that stopped early when BEFORE did not;
- grew: green after, its budget more than `max_growth` times BEFORE's and above `floor`;
- fixed: red before, passing after; still failing: red in both;
- not compared: measured or red before, skipped or without a budget after (a device gone);
- added / removed: a tensor or a whole case in one report only.

Exit status (`run_diff`): 1 for a new failure or a growth, else 0; 2 for a file that is not a
report. The defaults (DEFAULT_MAX_GROWTH, DEFAULT_FLOOR) and the measurements behind them are
in docs/ci-native.md: runs of the same code on the same machine give identical budgets, other
seeds move a tensor's worst budget by up to 1.7x, so 2x is a change in the code; a budget
under 5% of the allowance is far from failing, and float64 budgets live there (0.01%-5%),
where a doubling is noise in the last bits rather than news.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gradaudit.ci import DEFAULT_FLOOR as DEFAULT_FLOOR
from gradaudit.ci import DEFAULT_MAX_GROWTH as DEFAULT_MAX_GROWTH
from gradaudit.ci.report import (
    RED,
    ReportError,
    groups,
    run_facts,
    tensor_label,
    text_or_none,
)

NEW_FAILURE = "new failure"
GREW = "grew"
FIXED = "fixed"
STILL_FAILING = "still failing"
NOT_COMPARED = "not compared"
ADDED = "added"
REMOVED = "removed"
UNCHANGED = "unchanged"
# The order of the table; everything but UNCHANGED is shown without -v.
KINDS = (NEW_FAILURE, GREW, FIXED, STILL_FAILING, NOT_COMPARED, ADDED, REMOVED, UNCHANGED)
ALARMS = frozenset({NEW_FAILURE, GREW})
# Run facts whose change can move budgets for reasons other than the code under test.
CONTEXT = (
    "spec_name", "spec_sha256", "torch_version", "gradaudit_version", "python_version",
    "seed", "batches", "variants", "tolerance_mode", "shard",
)  # fmt: skip
Key = tuple[str, str, str]


@dataclass(frozen=True)
class TensorDiff:
    """One tensor of one case in both reports (a side it is missing from is None)."""

    kind: str
    device: str
    dtype: str
    check: str
    tensor: str
    before_status: str | None
    after_status: str | None
    before_budget: float | None
    after_budget: float | None
    new_case: bool = False  # the whole case is in one report only

    @property
    def ratio(self) -> float | None:
        """after / before; inf from an exact 0 to anything; None when either is unknown."""
        if self.before_budget is None or self.after_budget is None:
            return None
        if self.before_budget == 0:
            return 1.0 if self.after_budget == 0 else math.inf
        return self.after_budget / self.before_budget

    @property
    def label(self) -> str:
        return tensor_label(self.tensor, self.check)


@dataclass
class ReportDiff:
    before: str
    after: str
    max_growth: float
    floor: float
    rows: list[TensorDiff] = field(default_factory=list)
    cases_added: list[Key] = field(default_factory=list)
    cases_removed: list[Key] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(r.kind in ALARMS for r in self.rows) else 0

    def count(self, kind: str) -> int:
        return sum(r.kind == kind for r in self.rows)

    def shown(self, verbose: bool = False) -> list[TensorDiff]:
        """The rows for a table, in KINDS order: UNCHANGED and the quiet rows of a case in
        one report only (all but new failures) need `verbose`."""
        rows = [r for r in self.rows if verbose or (r.kind != UNCHANGED and not _quiet(r))]
        return sorted(rows, key=_sort_key)


def diff_reports(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    max_growth: float = DEFAULT_MAX_GROWTH,
    floor: float = DEFAULT_FLOOR,
    before_name: str = "before",
    after_name: str = "after",
) -> ReportDiff:
    """Classify every tensor of two checked reports (`report.check_report`). ReportError when
    a report names a case or a tensor twice (the diff would have to pick one)."""
    if not max_growth >= 1.0 or math.isinf(max_growth):
        raise ValueError(f"max_growth must be a finite ratio >= 1, not {max_growth}")
    if not floor >= 0.0:
        raise ValueError(f"floor must be a budget >= 0, not {floor}")
    old, new = _cases(before, before_name), _cases(after, after_name)
    result = ReportDiff(before_name, after_name, max_growth, floor)
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key), new.get(key)
        if a is None:
            result.cases_added.append(key)
        if b is None:
            result.cases_removed.append(key)
        a, b = a or {}, b or {}
        for name in [*a, *(n for n in b if n not in a)]:
            result.rows.append(_row(key, name, a.get(name), b.get(name), result))
    stopped_before = text_or_none(before.get("stopped"))
    stopped_after = text_or_none(after.get("stopped"))
    if stopped_after and not stopped_before:
        result.rows.append(  # like JUnit's `<spec>[run]` error case
            TensorDiff(NEW_FAILURE, "", "", "", "[run]", "finished", "stopped", None, None)
        )
        result.notes.append(f"{after_name} stopped early: {stopped_after}")
    elif stopped_before and not stopped_after:
        result.notes.append(f"{before_name} stopped early: {stopped_before}")
    result.notes += _context_notes(before, after)
    return result


def _cases(report: Mapping[str, Any], source: str) -> dict[Key, dict[str, tuple[str, Any]]]:
    cases: dict[Key, dict[str, tuple[str, Any]]] = {}
    for group in groups(report):
        if group.key in cases:
            raise ReportError(f"{source}: case {group.title} appears twice")
        tensors: dict[str, tuple[str, Any]] = {}
        for t in group.tensors:
            if t.name in tensors:
                raise ReportError(f"{source}: tensor {t.name!r} appears twice in {group.title}")
            tensors[t.name] = (t.status, t.budget)
        cases[group.key] = tensors
    return cases


def _row(
    key: Key,
    name: str,
    old: tuple[str, Any] | None,
    new: tuple[str, Any] | None,
    limits: ReportDiff,
) -> TensorDiff:
    s0, b0 = old if old is not None else (None, None)
    s1, b1 = new if new is not None else (None, None)
    new_case = key in limits.cases_added or key in limits.cases_removed
    row = TensorDiff(UNCHANGED, *key, name, s0, s1, b0, b1, new_case)
    if s1 in RED and s0 not in RED:
        kind = NEW_FAILURE
    elif old is None:
        kind = ADDED
    elif new is None:
        kind = REMOVED
    elif s0 in RED:  # fixed only by passing: a red tensor now skipped is not compared
        kind = STILL_FAILING if s1 in RED else FIXED if s1 == "pass" else NOT_COMPARED
    elif _grew(row, limits):
        kind = GREW
    elif b0 is not None and b1 is None:
        kind = NOT_COMPARED
    else:
        kind = UNCHANGED
    return TensorDiff(kind, *key, name, s0, s1, b0, b1, new_case)


def _grew(row: TensorDiff, limits: ReportDiff) -> bool:
    ratio = row.ratio
    return (
        ratio is not None
        and row.after_budget is not None
        and row.after_budget > limits.floor
        and ratio > limits.max_growth
    )


def _quiet(row: TensorDiff) -> bool:
    return row.new_case and row.kind != NEW_FAILURE


def _sort_key(row: TensorDiff) -> tuple[int, float]:
    rank = KINDS.index(row.kind)
    if row.kind == GREW:
        return rank, -(row.ratio or 0.0)
    if row.kind in (NEW_FAILURE, STILL_FAILING):
        return rank, -(row.after_budget if row.after_budget is not None else math.inf)
    if row.kind == FIXED:
        return rank, -(row.before_budget or 0.0)
    return rank, 0.0  # stable: report order


def _context_notes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    a, b = run_facts(before), run_facts(after)

    def short(key: str, value: object) -> str:
        return str(value)[:12] if key == "spec_sha256" and value else str(value)

    changed = [
        f"{k} {short(k, a.get(k))} -> {short(k, b.get(k))}" for k in CONTEXT if a.get(k) != b.get(k)
    ]
    if not changed:
        return []
    return [
        f"the runs differ in {'; '.join(changed)}: budgets can move for that reason alone "
        "(compare runs of one configuration on one kind of machine)"
    ]
