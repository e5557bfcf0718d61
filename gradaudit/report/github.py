"""GitHub Actions: a job-summary table and `::error` annotations, only inside Actions."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from gradaudit.errors import OutputError
from gradaudit.report.base import EndOfRunReporter
from gradaudit.report.console import budget
from gradaudit.report.describe import fmt, verdict_line
from gradaudit.results import RunSummary
from gradaudit.text import clean
from gradaudit.write import check_writable

MAX_ANNOTATIONS = 10
MAX_TITLE = 200
MAX_TEXT = 2000


def _escape_data(text: str) -> str:
    """Workflow-command escaping for the message part."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


class GitHubReporter(EndOfRunReporter):
    """Active when GITHUB_ACTIONS=true (annotations) or GITHUB_STEP_SUMMARY is set (summary)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    @staticmethod
    def wanted() -> bool:
        return os.environ.get("GITHUB_ACTIONS") == "true" or bool(
            os.environ.get("GITHUB_STEP_SUMMARY")
        )

    @staticmethod
    def preflight() -> None:
        """Before any work: a step summary that cannot be appended to is an exit-2 error now,
        not an internal error (exit 3) after the run that hides its verdict."""
        path = os.environ.get("GITHUB_STEP_SUMMARY")
        if not path:
            return
        target = Path(path)
        if target.is_dir():
            raise OutputError(f"GITHUB_STEP_SUMMARY={path}: is a directory, not a file")
        if target.exists():
            if not os.access(target, os.W_OK):
                raise OutputError(f"GITHUB_STEP_SUMMARY={path}: cannot append: not writable")
            return
        try:
            check_writable(target)
        except OutputError as exc:
            raise OutputError(f"GITHUB_STEP_SUMMARY={exc}") from None

    def finish(self, summary: RunSummary) -> None:
        assert self.info is not None
        if os.environ.get("GITHUB_ACTIONS") == "true":
            for line in self.annotations(summary):
                print(line, file=self.out)
        path = os.environ.get("GITHUB_STEP_SUMMARY")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(self.markdown(summary))

    def annotations(self, summary: RunSummary) -> list[str]:
        """Failures first, one per tensor; then one per distinct error, naming the tensors it
        hit (a crash copied onto every tensor is one annotation, not ten); at most 10."""
        assert self.info is not None
        loaded = self.info.loaded
        where = (
            f"file={_escape_property(clean(str(loaded.path)))},line={loaded.line_of('gradients')}"
        )
        notes: list[tuple[str, str]] = []  # (title, message)
        errors: dict[str, list[str]] = {}
        for group in summary.groups:
            for s in group.tensors:
                place = f"{group.device}/{group.dtype} {s.tensor}"
                if s.status == "fail":
                    notes.append((f"gradaudit {place}: fail", verdict_line(s)))
                elif s.status == "error":
                    first = s.errors[0] if s.errors else "error"
                    errors.setdefault(first, []).append(place)
        for text, places in errors.items():
            hit = places[0] if len(places) == 1 else f"{places[0]} and {len(places) - 1} more"
            notes.append(
                (f"gradaudit {hit}: error", f"{text} ({_count(places)}: {', '.join(places)})")
            )
        if summary.stopped:
            notes.append(("gradaudit: run stopped early", summary.stopped))
        lines = [
            f"::error {where},title={_escape_property(clean(title, MAX_TITLE))}::"
            f"{_escape_data(clean(text, MAX_TEXT))}"
            for title, text in notes[:MAX_ANNOTATIONS]
        ]
        if len(notes) > MAX_ANNOTATIONS:
            lines.append(
                f"::warning::gradaudit: {len(notes) - MAX_ANNOTATIONS} more failing tensors or "
                "errors (see the job summary or the JUnit report)"
            )
        return lines

    def markdown(self, summary: RunSummary) -> str:
        assert self.info is not None
        name = _cell(self.info.loaded.spec.name)
        icon = "✅" if summary.ok else "❌"
        counts = summary.totals()
        lines = [
            f"### {icon} gradaudit `{name}` ({_cell(str(self.info.loaded.path))})",
            "",
            f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped",
            "",
            "| device | dtype | tensor | result | max abs diff | budget used |",
            "|---|---|---|---|---|---|",
        ]
        for group in summary.groups:
            if group.skipped:
                lines.append(f"| {group.device} | {group.dtype} | (all) | skipped | | |")
                continue
            for s in group.tensors:
                result = s.status
                lines.append(
                    f"| {group.device} | {group.dtype} | `{_cell(s.tensor)}` | {result} | "
                    f"{fmt(s.max_abs)} | {budget(s.budget)} |"
                )
        if summary.stopped:
            lines += ["", f"**Run stopped early:** {_cell(summary.stopped)}"]
        return "\n".join(lines) + "\n\n"


def _count(places: list[str]) -> str:
    return f"{len(places)} tensor{'s' if len(places) > 1 else ''}"


def _cell(text: str) -> str:
    """Cleaned, on one line, and unable to end a table cell or a code span."""
    return " ".join(clean(text, MAX_TEXT).split()).replace("|", "\\|").replace("`", "'")
