"""The audits behind gradaudit's pytest items and fixtures: each spec loaded and planned once,
each (device, dtype) pass run once, per pytest process (an xdist worker runs what it needs).

Imported only when pytest collects a gradaudit spec or a test asks for a gradaudit fixture,
so that loading the pytest plugin never imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gradaudit.errors import GradauditError, UsageError

if TYPE_CHECKING:
    from gradaudit.audit import Audit
    from gradaudit.compare import TensorSummary
    from gradaudit.plan import Plan, PlannedCase
    from gradaudit.results import GroupResult

PassKey = tuple[str, str]  # (device, the spec dtype whose pass runs the case)
CaseKey = tuple[str, str, str]  # PlannedCase.key: (device, dtype, check)


def verdict(summary: TensorSummary) -> tuple[str, str]:
    """(pass | fail | error | skip, the text pytest shows). A tensor that compared nothing
    without a planned reason is an error: a green must mean something was compared."""
    from gradaudit.report.describe import detail, verdict_line

    status = summary.status
    if status == "skipped":
        if summary.skipped:
            return "skip", summary.skipped
        return "error", f"{summary.tensor}: no batch was compared\n{detail(summary)}"
    return status, f"{summary.tensor}: {verdict_line(summary)}\n{detail(summary)}"


class SpecAudit:
    """One model spec in a pytest process: loaded and planned at collection, run by pass."""

    def __init__(self, path: Path) -> None:
        from gradaudit.api import plan_for
        from gradaudit.audit import Audit
        from gradaudit.spec import load_spec

        self.audit: Audit = Audit(load_spec(path))
        self.plan: Plan = plan_for(self.audit)
        self._passes: dict[PassKey, dict[CaseKey, GroupResult] | Exception] = {}

    def pass_of(self, case: PlannedCase) -> PassKey:
        return (case.device, case.group_dtype or case.dtype)

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
        from gradaudit.results import GroupResult
        from gradaudit.runner import run

        cases = tuple(c for c in self.plan.cases if self.pass_of(c) == key)
        checks = {name: kind() for name, kind in self.audit.registry.objects("check").items()}
        try:
            self.audit.check_memory([key[1]])
            events = run(self.audit, dataclasses.replace(self.plan, cases=cases), checks)
            done = [e for e in events if isinstance(e, GroupResult)]
        except Exception as exc:  # kept: each item of the pass reports it, none reruns it
            return exc
        return {(g.device, g.dtype, g.check): g for g in done}

    def summary(self, case: CaseKey, pass_key: PassKey, tensor: str) -> TensorSummary:
        group = self.groups(pass_key).get(case)
        hits = [s for s in group.tensors if s.tensor == tensor] if group else []
        if not hits:
            raise GradauditError(f"{'/'.join(case)} {tensor}: the run produced no result")
        return hits[0]


@dataclass
class Store:
    """Spec audits of one pytest session, by resolved path."""

    specs: dict[Path, SpecAudit] = field(default_factory=dict)
    ops: dict[Path, OpSpecAudit] = field(default_factory=dict)

    def get(self, path: str | Path) -> SpecAudit:
        resolved = Path(path).resolve()
        if resolved not in self.specs:
            self.specs[resolved] = SpecAudit(Path(path))
        return self.specs[resolved]

    def op(self, path: str | Path) -> OpSpecAudit:
        resolved = Path(path).resolve()
        if resolved not in self.ops:
            self.ops[resolved] = OpSpecAudit(Path(path))
        return self.ops[resolved]


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
    spec_dtypes = sorted({found.pass_of(c)[1] for c in plan.cases})
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
        key = found.pass_of(case)
        if (devices and key[0] not in devices) or (dtypes and key[1] not in dtypes):
            continue
        group = found.groups(key).get(case.key)
        if group is None:
            raise GradauditError(f"{spec}: {'/'.join(case.key)}: the run produced no result")
        groups.append(group)
        for s in group.tensors:
            if tensors and s.tensor not in tensors:
                continue  # extra checks name their own tensors (finite differences: manual)
            status, text = verdict(s)
            if status in ("fail", "error"):
                failures.append((group, s, text))
            elif status == "skip":
                skipped.append(f"{group.device}/{group.dtype} {s.tensor}: {text}")
            else:
                passed += 1
    return AuditResult(groups, failures, skipped, passed)


class OpSpecAudit:
    """One op spec in a pytest process: its candidate resolved at collection, each
    (device, dtype) run once."""

    def __init__(self, path: Path) -> None:
        from gradaudit.ops.run import audit_of
        from gradaudit.ops.spec import load_op_spec

        self.loaded = load_op_spec(path)
        self.spec = self.loaded.spec
        self.op = audit_of(self.loaded)
        self._runs: dict[PassKey, list[GroupResult] | Exception] = {}

    def groups(self, key: PassKey) -> list[GroupResult]:
        if key not in self._runs:
            from gradaudit.ops.engine import run

            try:
                self._runs[key] = list(run(self.op, [key[0]], [key[1]]))
            except Exception as exc:
                self._runs[key] = exc
        found = self._runs[key]
        if isinstance(found, Exception):
            raise found
        return found


def op_verdict(groups: list[GroupResult]) -> tuple[str, str]:
    """One (device, dtype) of an op spec: every variant and check folded into one verdict."""
    bad = [(g, s, verdict(s)) for g in groups for s in g.tensors]
    if not bad:
        return "error", "the op run produced no tensor check"
    failing = [(g, s, text) for g, s, (status, text) in bad if status in ("fail", "error")]
    if failing:
        status = "fail" if any(s.status == "fail" for _, s, _ in failing) else "error"
        lines = [f"{len(failing)} of {len(bad)} tensor checks did not pass"]
        for g, s, text in failing:
            lines += [f"--- {s.status.upper()} {g.check} {s.tensor}", *text.splitlines()[2:]]
        return status, "\n".join(lines)
    if not any(status == "pass" for _, _, (status, _) in bad):
        reasons = sorted({text for _, _, (status, text) in bad if status == "skip"})
        return "skip", "; ".join(reasons) or "nothing was compared"
    return "pass", ""
