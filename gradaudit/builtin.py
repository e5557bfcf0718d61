"""gradaudit's own check kinds and report formats, registered through the same hooks a
third-party plugin uses (`register_checks`, `register_reporters`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gradaudit.hookspecs import hookimpl

if TYPE_CHECKING:
    from gradaudit.report.base import Reporter, ReportOptions


@hookimpl
def register_checks(register: Callable[[str, Any], None]) -> None:
    from gradaudit.checks.finite_difference import FiniteDifferenceCheck
    from gradaudit.checks.micro_batch import MicroBatchCheck
    from gradaudit.checks.repeat import RepeatCheck
    from gradaudit.checks.saved_tensors import SavedTensorsCheck

    register("repeat", RepeatCheck)
    register("finite_difference", FiniteDifferenceCheck)
    register("micro_batch", MicroBatchCheck)
    register("saved_tensors", SavedTensorsCheck)


def console(options: ReportOptions) -> Reporter:
    from gradaudit.report.console import ConsoleReporter

    return ConsoleReporter(options.verbosity, options.color, options.progress)


def junit(options: ReportOptions) -> Reporter | None:
    from gradaudit.report.junit import JUnitReporter

    return JUnitReporter(options.junit_xml) if options.junit_xml else None


def json(options: ReportOptions) -> Reporter | None:
    from gradaudit.report.jsonfile import JsonReporter

    return JsonReporter(options.json_path) if options.json_path else None


def github(options: ReportOptions) -> Reporter | None:
    """Annotations (GITHUB_ACTIONS=true) and a step summary (GITHUB_STEP_SUMMARY)."""
    from gradaudit.report.github import GitHubReporter

    return GitHubReporter() if GitHubReporter.wanted() else None


@hookimpl
def register_reporters(register: Callable[[str, Any], None]) -> None:
    register("console", console)
    register("junit", junit)
    register("json", json)
    register("github", github)
