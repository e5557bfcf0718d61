"""What `gradaudit.check` returns and prints: the console's rows, JUnit's suites.

The table and the JUnit file are the CLI's own (report/console.py, report/junit.py), so a
notebook audit reads and gates exactly like `gradaudit run`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradaudit.compare import TensorSummary
from gradaudit.report.console import closing_line, group_rows, header
from gradaudit.report.describe import detail, verdict_line
from gradaudit.report.elements import document
from gradaudit.report.junit import group_suite
from gradaudit.results import RunSummary
from gradaudit.write import write_atomic


@dataclass(frozen=True)
class TensorResult:
    """One tensor in one (device, dtype): the verdict and the numbers behind it."""

    name: str
    device: str
    dtype: str
    status: str  # pass | fail | error
    max_abs: float
    budget: float  # max over elements of |diff| / allowed; above 1 fails
    message: str
    tolerance: str  # the rule it was held to, e.g. "baseline k=2 floor=2 ulps"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @classmethod
    def of(cls, device: str, dtype: str, s: TensorSummary) -> TensorResult:
        return cls(
            s.tensor,
            device,
            dtype,
            s.status,
            s.max_abs,
            s.budget,
            verdict_line(s),
            s.tol.describe(),
        )


@dataclass(frozen=True)
class CheckResult:
    """Every tensor's verdict. `ok` is True only when every tensor was compared and passed."""

    summary: RunSummary
    table: str

    @property
    def tensors(self) -> list[TensorResult]:
        return [
            TensorResult.of(g.device, g.dtype, s) for g in self.summary.groups for s in g.tensors
        ]

    @property
    def ok(self) -> bool:
        return self.summary.ok and bool(self.tensors) and all(t.passed for t in self.tensors)

    @property
    def failed(self) -> list[TensorResult]:
        return [t for t in self.tensors if not t.passed]

    def __getitem__(self, key: str | tuple[str, str]) -> TensorResult:
        """result["W1"], or result["W1", "bfloat16"] when several dtypes ran."""
        name, dtype = (key, None) if isinstance(key, str) else key
        found = [t for t in self.tensors if t.name == name and dtype in (None, t.dtype)]
        if len(found) != 1:
            more = " (give the dtype: result[name, dtype])" if found else ""
            raise KeyError(f"{len(found)} results for {key!r}{more}")
        return found[0]

    def failure_text(self) -> str:
        lines = [f"{t.name} [{t.device}, {t.dtype}]: {t.status}: {t.message}" for t in self.failed]
        return "gradaudit.check failed:\n" + "\n".join(lines)

    def __repr__(self) -> str:
        return self.table


def render(summary: RunSummary, seconds: float) -> str:
    """The console table, each failure's details, each error's reason, the closing line."""
    lines = [header()]
    for group in summary.groups:
        lines += [text for text, _ in group_rows(group)]
    for group in summary.groups:
        for s in group.tensors:
            where = f"{group.device}/{group.dtype} {s.tensor}"
            if s.status == "fail":
                lines += [f"--- FAIL {where}", detail(s)]
            elif s.status == "error":  # the row holds any numbers; the reason is one line
                lines.append(f"--- ERROR {where}: {verdict_line(s)}")
    lines.append(closing_line(summary, seconds))
    return "\n".join(lines)


def write_junit(path: str, name: str, summary: RunSummary) -> None:
    """One <testsuite> per (device, dtype), one <testcase> per tensor, as `gradaudit run`."""
    metadata = {"source": "gradaudit.check"}
    write_atomic(path, document(group_suite(name, g, metadata) for g in summary.groups))
