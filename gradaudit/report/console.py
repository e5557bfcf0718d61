"""The console table: the notebook's `cmp` line, one row per device / dtype / tensor."""

from __future__ import annotations

import click

from gradaudit.report.describe import detail, fmt
from gradaudit.runner import GroupResult, RunSummary

COLUMNS = (
    "device",
    "dtype",
    "tensor",
    "exact",
    "allclose",
    "max abs",
    "max rel",
    "budget",
    "mismatched",
    "result",
)
WIDTHS = (8, 9, 14, 6, 9, 9, 9, 8, 11, 6)
STYLES = {"PASS": "green", "FAIL": "red", "ERROR": "red", "SKIP": "yellow"}


def _row(cells: tuple[str, ...]) -> str:
    return " ".join(c.ljust(w) for c, w in zip(cells, WIDTHS, strict=True)).rstrip()


def header() -> str:
    return _row(COLUMNS)


def group_rows(group: GroupResult, color: bool) -> list[str]:
    """Rows for one (device, dtype); a skipped group is one row."""
    if group.skipped:
        cells = (
            group.device,
            group.dtype,
            f"({len(group.tensors)} tensors)",
            "",
            "",
            "",
            "",
            "",
            "",
            "SKIP",
        )
        return [_paint(_row(cells) + f"  {group.skipped}", "SKIP", color)]
    rows = []
    for s in group.tensors:
        result = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}[s.status]
        if s.status == "error" and s.worst is None:
            cells = (group.device, group.dtype, s.tensor, "-", "-", "-", "-", "-", "-", result)
        else:
            cells = (
                group.device,
                group.dtype,
                s.tensor,
                str(s.exact),
                str(not s.failed_batches),
                fmt(s.max_abs),
                fmt(s.max_rel),
                f"{100 * s.budget:.3g}%",
                f"{s.mismatched}/{s.numel}",
                result,
            )
        rows.append(_paint(_row(cells), result, color))
    return rows


def failure_details(summary: RunSummary) -> list[str]:
    """A block per failed or errored tensor, after the table."""
    blocks = []
    for group in summary.groups:
        for s in group.tensors:
            if not group.skipped and s.status != "pass":
                blocks.append(
                    f"--- {s.status.upper()} {group.device}/{group.dtype} {s.tensor}\n{detail(s)}"
                )
    return blocks


def closing_line(summary: RunSummary, seconds: float, color: bool) -> str:
    text = (
        f"{summary.passed} passed, {summary.failed} failed, {summary.errors} errors, "
        f"{summary.skipped} skipped in {seconds:.2f}s"
    )
    return _paint(text, "PASS" if summary.ok else "FAIL", color)


def _paint(text: str, result: str, color: bool) -> str:
    return click.style(text, fg=STYLES[result]) if color and result != "PASS" else text
