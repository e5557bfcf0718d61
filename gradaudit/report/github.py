"""GitHub Actions: a job-summary table and `::error` annotations, only inside Actions."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from gradaudit.report.base import EndOfRunReporter
from gradaudit.report.console import budget
from gradaudit.report.describe import fmt, verdict_line
from gradaudit.results import RunSummary

MAX_ANNOTATIONS = 10


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

    def finish(self, summary: RunSummary) -> None:
        assert self.info is not None
        if os.environ.get("GITHUB_ACTIONS") == "true":
            self._annotate(summary)
        path = os.environ.get("GITHUB_STEP_SUMMARY")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(self.markdown(summary))

    def _annotate(self, summary: RunSummary) -> None:
        assert self.info is not None
        loaded = self.info.loaded
        line = loaded.line_of("gradients")
        bad = [(g, s) for g in summary.groups for s in g.tensors if s.status in ("fail", "error")]
        for group, s in bad[:MAX_ANNOTATIONS]:
            title = f"gradaudit {group.device}/{group.dtype} {s.tensor}: {s.status}"
            print(
                f"::error file={_escape_property(str(loaded.path))},line={line},"
                f"title={_escape_property(title)}::{_escape_data(verdict_line(s))}",
                file=self.out,
            )
        if len(bad) > MAX_ANNOTATIONS:
            print(
                f"::warning::gradaudit: {len(bad) - MAX_ANNOTATIONS} more failing tensors "
                "(see the job summary or the JUnit report)",
                file=self.out,
            )

    def markdown(self, summary: RunSummary) -> str:
        assert self.info is not None
        name = self.info.loaded.spec.name
        icon = "✅" if summary.ok else "❌"
        lines = [
            f"### {icon} gradaudit `{name}` ({self.info.loaded.path})",
            "",
            f"{summary.passed} passed, {summary.failed} failed, {summary.errors} errors, "
            f"{summary.skipped} skipped",
            "",
            "| device | dtype | tensor | result | max abs diff | budget used |",
            "|---|---|---|---|---|---|",
        ]
        for group in summary.groups:
            if group.skipped:
                lines.append(f"| {group.device} | {group.dtype} | (all) | skipped | | |")
                continue
            for s in group.tensors:
                lines.append(
                    f"| {group.device} | {group.dtype} | `{s.tensor}` | {s.status} | "
                    f"{fmt(s.max_abs)} | {budget(s.budget)} |"
                )
        if summary.stopped:
            lines += ["", f"**Run stopped early:** {summary.stopped}"]
        return "\n".join(lines) + "\n\n"
