"""The console: the notebook's `cmp` line grown into a table, one row per device/dtype/tensor."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import click

from gradaudit.compare import TensorSummary
from gradaudit.report.base import RunInfo
from gradaudit.report.describe import detail, fmt
from gradaudit.results import CaseResult, GroupResult, RunSummary

COLUMNS = (
    ("device", 8),
    ("dtype", 9),
    ("tensor", 20),
    ("exact", 6),
    ("within", 7),
    ("max abs", 9),
    ("worst rel", 9),  # the worst batch's max relative difference
    ("budget", 8),
    ("mismatched", 14),
    ("result", 6),
)
STYLES = {"PASS": "green", "FAIL": "red", "ERROR": "red", "SKIP": "yellow"}
RESULTS = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skipped": "SKIP"}


def _row(cells: tuple[str, ...]) -> str:
    return " ".join(c.ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)).rstrip()


def header() -> str:
    return _row(tuple(name for name, _ in COLUMNS))


def budget(value: float) -> str:
    percent = 100 * value
    return "<0.01%" if 0 < percent < 0.01 else f"{percent:.3g}%"


def tensor_row(device: str, dtype: str, s: TensorSummary, check: str) -> tuple[str, str]:
    """(row text, result word) for one tensor; extra checks are named after the tensor."""
    result = RESULTS[s.status]
    label = s.tensor if check == "gradients" else f"{s.tensor} [{check.replace('_', ' ')}]"
    if s.worst is None:
        blank = "-" if result != "SKIP" else ""
        cells = (device, dtype, label, blank, blank, blank, blank, blank, blank, result)
    else:
        cells = (
            device,
            dtype,
            label,
            str(s.exact),
            str(not s.failed_batches),
            fmt(s.max_abs),
            fmt(s.max_rel),
            budget(s.budget),
            f"{s.mismatched}/{s.numel}",
            result,
        )
    text = _row(cells)
    if result == "SKIP" and s.skipped:
        text += f"  {s.skipped}"
    return text, result


def group_rows(group: GroupResult) -> list[tuple[str, str]]:
    """Rows for one (device, dtype); a group skipped as a whole is one row."""
    if group.skipped:
        what = "tensors" if group.check == "gradients" else group.check.replace("_", " ")
        count = f"({len(group.tensors)} {what})"
        cells = (group.device, group.dtype, count, "", "", "", "", "", "", "SKIP")
        return [(_row(cells) + f"  {group.skipped}", "SKIP")]
    rows = [tensor_row(group.device, group.dtype, s, group.check) for s in group.tensors]
    warned = [(f"  warning: {group.device}/{group.dtype} {w}", "SKIP") for w in group.warnings]
    return rows + warned


def closing_line(summary: RunSummary, seconds: float) -> str:
    """The counts every report gives (a stopped run's stop is one more error)."""
    t = summary.totals()
    return (
        f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
        f"{t['skipped']} skipped in {seconds:.2f}s"
    )


def failure_blocks(summary: RunSummary) -> list[tuple[str, str]]:
    """A block per failing tensor; tensors that only errored, with the same errors (one crash
    hits every tensor of a batch), share one block naming them all and the batches hit."""
    blocks: list[tuple[str, str]] = []
    shared: dict[tuple[str, ...], tuple[list[str], set[str]]] = {}
    for group in summary.groups:
        where = f"{group.device}/{group.dtype}"
        if group.check != "gradients":
            where += f" [{group.check.replace('_', ' ')}]"
        for s in group.tensors:
            if s.status == "fail" or (s.status == "error" and s.worst is not None):
                title = f"--- {s.status.upper()} {where} {s.tensor}"
                blocks.append((f"{title}\n{detail(s, group.rerun)}", RESULTS[s.status]))
            elif s.status == "error":
                unique = dict.fromkeys(_without_batch(e) for e in s.errors)
                key = (where, str(s.error_count), *unique)
                names, batches = shared.setdefault(key, ([], set()))
                names.append(s.tensor)
                batches.update(_batch_of(e) for e in s.errors)
    for (where, count, *errors), (names, batches) in shared.items():
        title = f"--- ERROR {where} {_names(names)}"
        body = "\n".join(f"  {e}" for e in errors)
        more = f" and others ({count} errors each)" if int(count) > len(batches) else ""
        blocks.append((f"{title}\nin batch {', '.join(sorted(batches))}{more}:\n{body}", "ERROR"))
    return blocks


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} tensors: {', '.join(names)}"


def _batch_of(error: str) -> str:
    head, sep, _ = error.partition("): ")
    return head.removeprefix("batch ") + ")" if sep and head.startswith("batch ") else "-"


def _without_batch(error: str) -> str:
    head, sep, rest = error.partition("): ")
    return rest if sep and head.startswith("batch ") else error


class ConsoleReporter:
    """Table on stdout as groups finish; progress on stderr (terminal only); details at the end.

    verbosity: -1 summary line only, 0 table, 1 also a line per batch and tensor.
    """

    checkpoints = False  # nothing on disk to keep current (report.base.wants_checkpoints)

    def __init__(
        self,
        verbosity: int = 0,
        color: bool = False,
        progress: bool = False,
        out: TextIO | None = None,
    ) -> None:
        self.verbosity = verbosity
        self.color = color
        self.progress = progress and verbosity == 0
        self.out = out or sys.stdout
        self.start_time = time.perf_counter()
        self.last_progress = 0.0
        self.cases = 0
        self.total_cases = 0

    def _echo(self, text: str, result: str = "PASS") -> None:
        if self.color and result != "PASS":
            text = click.style(text, fg=STYLES[result])
        click.echo(text, file=self.out, color=self.color)

    def start(self, info: RunInfo) -> None:
        self.start_time = info.clock
        plan = info.plan
        shard = f", shard {info.shard}" if info.shard else ""
        self.total_cases = sum(len(c.samples or ()) * len(c.tensors) for c in plan.runnable)
        if self.verbosity >= 0:
            self._echo(f"gradaudit: {plan.spec_name} ({info.loaded.path}): {plan.header}{shard}")
            for warning in plan.warnings:
                self._echo(f"gradaudit: warning: {warning}", "SKIP")
            self._echo(header())

    def case(self, result: CaseResult) -> None:
        self.cases += 1
        if self.verbosity >= 1:
            where = f"  {result.device} {result.dtype} batch {result.batch} (seed {result.seed})"
            if result.error:
                self._echo(f"{where} {result.tensor}: ERROR {result.error}", "ERROR")
            elif result.check:
                c = result.check
                word = "ok" if c.passed else "FAIL"
                line = f"{where} {result.tensor}: max abs {fmt(c.max_abs)}"
                self._echo(
                    f"{line} budget {budget(c.budget)} {word}", "PASS" if c.passed else "FAIL"
                )
        elif self.progress:
            now = time.perf_counter()
            if now - self.last_progress > 0.2:
                self.last_progress = now
                total = f"/{self.total_cases}" if self.total_cases else ""
                click.echo(
                    f"\r{result.device} {result.dtype} batch {result.batch}: "
                    f"{self.cases}{total} checks",
                    file=sys.stderr,
                    nl=False,
                )

    def _clear_progress(self) -> None:
        if self.progress and self.last_progress:
            click.echo("\r\x1b[2K", file=sys.stderr, nl=False)
            self.last_progress = 0.0

    def group(self, group: GroupResult) -> None:
        self._clear_progress()
        if self.verbosity >= 0:
            for text, result in group_rows(group):
                self._echo(text, result)

    def checkpoint(self, summary: RunSummary) -> None:
        """The table is printed as groups finish; nothing to keep on disk."""

    def finish(self, summary: RunSummary) -> None:
        self._clear_progress()
        if self.verbosity >= 0:
            for text, result in failure_blocks(summary):
                self._echo(text, result)
        if summary.stopped:
            self._echo(f"gradaudit: run stopped early: {summary.stopped}", "ERROR")
        seconds = time.perf_counter() - self.start_time
        self._echo(closing_line(summary, seconds), "PASS" if summary.ok else "FAIL")
