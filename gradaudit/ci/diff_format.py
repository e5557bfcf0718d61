"""`gradaudit diff` as a command: the reports read, compared (gradaudit.ci.diff), printed as
a console table and appended as a Markdown section."""

from __future__ import annotations

import math
import os
import sys
from typing import TextIO

from gradaudit.ci.diff import (
    ALARMS,
    DEFAULT_FLOOR,
    DEFAULT_MAX_GROWTH,
    FIXED,
    GREW,
    NEW_FAILURE,
    ReportDiff,
    TensorDiff,
    diff_reports,
)
from gradaudit.ci.report import ReportError, load_report, md_cell, percent, printable


def ratio_text(row: TensorDiff) -> str:
    ratio = row.ratio
    if ratio is None:
        return "-"
    return "from 0" if math.isinf(ratio) else f"{ratio:.3g}x"


def status_text(row: TensorDiff) -> str:
    return f"{row.before_status or 'absent'} -> {row.after_status or 'absent'}"


def headline(diff: ReportDiff) -> str:
    counts = ", ".join(f"{k}: {diff.count(k)}" for k in (NEW_FAILURE, GREW, FIXED))
    return (
        f"gradaudit diff {diff.before} -> {diff.after}: {counts} "
        f"({len(diff.rows)} tensors; growth alarm above {diff.max_growth:g}x and "
        f"{percent(diff.floor)} of the allowance)"
    )


def format_console(diff: ReportDiff, *, verbose: bool = False) -> str:
    """A fixed-width table: new failures, growth, fixes, the other changes; with `verbose`
    also the unchanged tensors."""
    header = ("change", "device", "dtype", "tensor", "before", "after", "ratio", "status")
    cells = [
        (r.kind, r.device, r.dtype, printable(r.label), percent(r.before_budget),
         percent(r.after_budget), ratio_text(r), status_text(r))
        for r in diff.shown(verbose)
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    lines = [headline(diff)]
    lines += [f"case added: {' '.join(k)}" for k in diff.cases_added]
    lines += [f"case removed: {' '.join(k)}" for k in diff.cases_removed]
    lines += [f"note: {printable(n)}" for n in diff.notes]
    if cells:
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  for row in [header, *cells]]  # fmt: skip
    hidden = len(diff.rows) - len(cells)
    if hidden:
        lines.append(f"({hidden} unchanged tensors not shown; -v shows them)")
    return "\n".join(lines) + "\n"


MAX_MARKDOWN_ROWS = 300  # a job summary holds at most 1 MiB


def format_markdown(diff: ReportDiff, *, verbose: bool = False) -> str:
    """A GitHub-flavoured Markdown section for `$GITHUB_STEP_SUMMARY`."""
    icon = "❌" if diff.exit_code else "✅"
    lines = [f"### {icon} {_cell(headline(diff))}", ""]
    lines += [f"- case added: `{_cell(' '.join(k))}`" for k in diff.cases_added]
    lines += [f"- case removed: `{_cell(' '.join(k))}`" for k in diff.cases_removed]
    lines += [f"- note: {_cell(n)}" for n in diff.notes]
    rows = diff.shown(verbose)
    if rows:
        lines += [
            "",
            "| change | device | dtype | tensor | before | after | ratio | status |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for r in rows[:MAX_MARKDOWN_ROWS]:
            change = f"**{r.kind}**" if r.kind in ALARMS else r.kind
            lines.append(
                f"| {change} | {_cell(r.device)} | {_cell(r.dtype)} | `{_cell(r.label)}` | "
                f"{percent(r.before_budget)} | {percent(r.after_budget)} | {ratio_text(r)} | "
                f"{_cell(status_text(r))} |"
            )
        if len(rows) > MAX_MARKDOWN_ROWS:
            lines.append(f"\n{len(rows) - MAX_MARKDOWN_ROWS} more rows: see the console output")
    hidden = len(diff.rows) - len(rows)
    if hidden:
        lines += ["", f"{hidden} unchanged tensors not shown."]
    return "\n".join(lines) + "\n\n"


def _cell(text: str) -> str:
    """A Markdown cell, with arrows that need no escaping."""
    return md_cell(text.replace(" -> ", " → "))


def run_diff(
    before: str | os.PathLike[str],
    after: str | os.PathLike[str],
    *,
    max_growth: float = DEFAULT_MAX_GROWTH,
    floor: float = DEFAULT_FLOOR,
    verbose: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    summary_path: str | None = None,
) -> int:
    """The whole command: 0 no alarm, 1 a new failure or a growth, 2 a file that is not a
    report (one line on `err`). Appends the Markdown to `summary_path` when given (pass
    `os.environ.get("GITHUB_STEP_SUMMARY")`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        old, new = load_report(before), load_report(after)
        diff = diff_reports(
            old, new, max_growth=max_growth, floor=floor,
            before_name=os.fspath(before), after_name=os.fspath(after),
        )  # fmt: skip
    except ReportError as exc:
        print(f"gradaudit diff: error: {exc}", file=err)
        return 2
    out.write(format_console(diff, verbose=verbose))
    if summary_path:
        with open(summary_path, "a", encoding="utf-8") as handle:
            handle.write(format_markdown(diff, verbose=verbose))
    return diff.exit_code
