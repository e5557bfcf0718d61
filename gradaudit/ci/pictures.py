"""`gradaudit run --html PATH`: the run's JSON report drawn as one self-contained page."""

from __future__ import annotations

import os

from gradaudit.ci import html
from gradaudit.ci.report import ReportError, load_report
from gradaudit.errors import ExitCode, UsageError
from gradaudit.write import write_atomic

PLACEHOLDER = (
    "<!doctype html><meta charset='utf-8'><title>gradaudit: did not finish</title>"
    "<p>gradaudit did not finish this run: this page is written again when it does.</p>\n"
)


def html_placeholder(path: str) -> None:
    """Before the run: an old page never survives as if it were this run's (exit 2 in one
    line when the page cannot be written)."""
    try:
        write_atomic(path, PLACEHOLDER)
    except OSError as exc:
        raise UsageError(f"--html {path}: cannot write: {exc.strerror or exc}") from None


def remove_placeholder(path: str) -> None:
    """A run refused as bad input (exit 2) leaves no page, as it leaves no other report: the
    placeholder goes, and a page that is not the placeholder stays."""
    import contextlib
    from pathlib import Path

    with contextlib.suppress(OSError):
        if Path(path).read_text(encoding="utf-8") == PLACEHOLDER:
            os.unlink(path)


def draw(report_path: str, html_path: str, code: int) -> int:
    """Write the page; `code` unless it could not be made (then at least exit 2, with one
    line on stderr)."""
    import sys

    try:
        report = load_report(report_path)
        write_atomic(html_path, html.render(report))
    except (ReportError, OSError) as exc:
        print(f"gradaudit: error: {exc}", file=sys.stderr)
        return max(code, int(ExitCode.USAGE))
    return code
