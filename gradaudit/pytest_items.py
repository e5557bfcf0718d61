"""The audits behind gradaudit's pytest items and fixtures: each spec planned once (by an
executor, as `gradaudit plan` does), each pass (device, spec dtype) run once per pytest
process by a supervisor and an executor, as `gradaudit run` does, so a pytest run gives the
verdicts `gradaudit run` gives, and plugin code that ends or crashes its process ends only
that pass, red (an xdist worker runs what its items need).

Imported only when pytest collects a gradaudit spec or a test asks for a gradaudit fixture,
so that loading the pytest plugin never imports torch (and this process never does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gradaudit.errors import GradauditError, UsageError

if TYPE_CHECKING:
    from gradaudit.plan import Plan, PlannedCase
    from gradaudit.results import GroupResult, TensorSummary

PassKey = tuple[str, str]  # (device, the spec dtype whose pass runs the case)
CaseKey = tuple[str, str, str]  # PlannedCase.key: (device, dtype, check)


def verdict(summary: TensorSummary, rerun: str = "") -> tuple[str, str]:
    """(pass | fail | error | skip, the text pytest shows). A tensor that compared nothing
    without a planned reason is an error: a green must mean something was compared."""
    from gradaudit.report.describe import detail, verdict_line

    status = summary.status
    if status == "skipped":
        if summary.skipped:
            return "skip", summary.skipped
        return "error", f"{summary.tensor}: no sample was compared\n{detail(summary, rerun)}"
    return status, f"{summary.tensor}: {verdict_line(summary)}\n{detail(summary, rerun)}"


class SpecAudit:
    """One spec in a pytest process: planned at collection, run pass by pass."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        from gradaudit.run.executor import Job
        from gradaudit.run.supervisor import Supervisor
        from gradaudit.spec import load_spec

        self.path = path
        self.timeout = timeout  # seconds a batch may take (--gradaudit-timeout)
        self.loaded = load_spec(path)
        outcome = Supervisor(Job(str(path), mode="plan", timeout=timeout)).run()
        if outcome.plan is None:
            reason = outcome.failed.message if outcome.failed else outcome.stopped
            raise GradauditError(f"{path}: the spec could not be planned: {reason}")
        self.plan: Plan = outcome.plan
        self._passes: dict[PassKey, dict[CaseKey, GroupResult] | Exception] = {}

    def groups(self, key: PassKey) -> dict[CaseKey, GroupResult]:
        """Every case of one pass, run on first use; a failure to run is re-raised for each
        of its items rather than run again."""
        if key not in self._passes:
            self._passes[key] = self._run(key)
        found = self._passes[key]
        if isinstance(found, Exception):
            raise found
        return found

    def _run(self, key: PassKey) -> dict[CaseKey, GroupResult] | Exception:
        from gradaudit.commands import verdict
        from gradaudit.run.executor import Job
        from gradaudit.run.supervisor import Supervisor

        cases = tuple(c.key for c in self.plan.cases if c.pass_key == key)
        job = Job(str(self.path), mode="run", cases=cases, timeout=self.timeout)
        outcome = Supervisor(job).run()
        if outcome.fold is None or outcome.failed is not None:
            why = outcome.failed.message if outcome.failed else outcome.stopped
            how = "could not start" if outcome.fold is None else "could not go on"
            return GradauditError(f"{'/'.join(key)}: the run {how}: {why}")
        summary = verdict(outcome)
        return {(g.device, g.dtype, g.check): g for g in summary.groups}

    def summary(self, case: PlannedCase, tensor: str) -> TensorSummary:
        group = self.groups(case.pass_key).get(case.key)
        hits = [s for s in group.tensors if s.tensor == tensor] if group else []
        if not hits:
            raise GradauditError(f"{'/'.join(case.key)} {tensor}: the run produced no result")
        return hits[0]

    def unplanned(self, case: PlannedCase) -> list[TensorSummary]:
        """Tensors a case reported that the plan did not have (a gradient for a tensor the
        model lacks): errors of the case's own item."""
        group = self.groups(case.pass_key).get(case.key)
        planned = {t.name for t in case.tensors}
        return [s for s in group.tensors if s.tensor not in planned] if group else []


@dataclass
class Store:
    """Spec audits of one pytest session, by resolved path."""

    specs: dict[Path, SpecAudit] = field(default_factory=dict)
    timeout: float | None = None

    def get(self, path: str | Path) -> SpecAudit:
        resolved = Path(path).resolve()
        if resolved not in self.specs:
            self.specs[resolved] = SpecAudit(Path(path), self.timeout)
        return self.specs[resolved]


@dataclass
class AuditResult:
    """What `gradaudit_audit` returns: every chosen group, and the tensors that did not pass."""

    groups: list[GroupResult]
    failures: list[tuple[GroupResult, TensorSummary, str]]
    skipped: list[str]
    passed: int

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        lines = [f"gradaudit: {len(self.failures)} tensor check(s) did not pass"]
        for group, s, text in self.failures:
            lines.append(f"--- {s.status.upper()} {group.device}/{group.dtype} {group.check}")
            lines += [f"  {line}" for line in text.splitlines()]
        return "\n".join(lines)


def audit(
    store: Store,
    spec: str | Path,
    devices: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    tensors: Sequence[str] | None = None,
) -> AuditResult:
    """Run (or reuse) the passes of `spec` on these devices and dtypes; the verdicts of the
    chosen tensors (all by default). Raises UsageError for a device, dtype or tensor the
    spec does not have: asking for what is not audited must never pass."""
    found = store.get(spec)
    plan = found.plan
    spec_devices = sorted({c.device for c in plan.cases})
    spec_dtypes = sorted({c.pass_key[1] for c in plan.cases})
    for option, chosen, allowed in (
        ("devices", devices, spec_devices),
        ("dtypes", dtypes, spec_dtypes),
        ("tensors", tensors, list(dict.fromkeys(t.name for c in plan.cases for t in c.tensors))),
    ):
        unknown = [c for c in chosen or () if c not in allowed]
        if unknown:
            raise UsageError(f"{spec}: {option}: {unknown[0]!r} is not audited; it has {allowed}")
    groups: list[GroupResult] = []
    failures: list[tuple[GroupResult, TensorSummary, str]] = []
    skipped: list[str] = []
    passed = 0
    for case in plan.cases:
        key = case.pass_key
        if (devices and key[0] not in devices) or (dtypes and key[1] not in dtypes):
            continue
        group = found.groups(key).get(case.key)
        if group is None:
            raise GradauditError(f"{spec}: {'/'.join(case.key)}: the run produced no result")
        groups.append(group)
        for s in group.tensors:
            if tensors and s.tensor not in tensors:
                continue  # extra checks name their own tensors (finite differences: manual)
            status, text = verdict(s, group.rerun)
            if status in ("fail", "error"):
                failures.append((group, s, text))
            elif status == "skip":
                skipped.append(f"{group.device}/{group.dtype} {s.tensor}: {text}")
            else:
                passed += 1
    return AuditResult(groups, failures, skipped, passed)
