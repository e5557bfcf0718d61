"""What each CLI command does; cli.py only parses arguments and calls these."""

from __future__ import annotations

import platform
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from gradaudit.errors import EXIT_CHECK_FAILED, EXIT_OK, UsageError
from gradaudit.spec import load_spec
from gradaudit.write import check_writable

if TYPE_CHECKING:
    from gradaudit.results import CaseResult, Shard


@dataclass(frozen=True)
class RunOptions:
    junit_xml: str | None = None
    json_path: str | None = None
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    require_devices: tuple[str, ...] = ()
    shard: str | None = None
    timeout: float | None = None
    color: bool = False
    progress: bool = False
    verbosity: int = 0


class Interrupted(BaseException):
    """Raised from the SIGTERM handler (a cancelled CI job), like KeyboardInterrupt for SIGINT."""


EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def parse_shard(text: str) -> Shard:
    from gradaudit.results import Shard

    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return Shard(int(match[1]), int(match[2]))


def run(spec_path: str, options: RunOptions) -> int:
    """Audit one spec. Reports are written even when the run breaks or is interrupted."""
    loaded = load_spec(spec_path)
    shard = parse_shard(options.shard) if options.shard is not None else None
    for path in (options.junit_xml, options.json_path):
        if path:
            check_writable(path)
    import torch

    import gradaudit
    from gradaudit.report.base import Reporter, RunInfo
    from gradaudit.report.console import ConsoleReporter
    from gradaudit.report.github import GitHubReporter
    from gradaudit.results import RunSummary
    from gradaudit.runner import Audit, device_unavailable

    devices = _subset("--device", options.devices, loaded.spec.devices)
    dtypes = _subset("--dtype", options.dtypes, loaded.spec.dtypes)
    for device in options.require_devices:
        if device not in devices:
            raise UsageError(f"--require-device {device}: not among this run's devices {devices}")
        reason = device_unavailable(device)
        if reason:
            raise UsageError(f"--require-device {device}: {reason}")

    audit = Audit(loaded)
    audit.timeout = options.timeout
    audit.check_memory(dtypes)
    versions = {
        "gradaudit_version": gradaudit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    info = RunInfo(loaded, audit.tensor_names, versions, shard)
    reporters: list[Reporter] = [
        ConsoleReporter(options.verbosity, options.color, options.progress)
    ]
    if options.junit_xml:
        from gradaudit.report.junit import JUnitReporter

        reporters.append(JUnitReporter(options.junit_xml))
    if options.json_path:
        from gradaudit.report.jsonfile import JsonReporter

        reporters.append(JsonReporter(options.json_path))
    if GitHubReporter.wanted():
        reporters.append(GitHubReporter())

    def on_case(result: CaseResult) -> None:
        for reporter in reporters:
            reporter.case(result)

    for reporter in reporters:
        reporter.start(info)
    summary = RunSummary()
    exit_code: int | None = None
    internal: Exception | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        groups = audit.groups(devices, dtypes, on_case, shard)
        for group in groups:
            summary.add(group)
            for reporter in reporters:
                reporter.group(group)
    except (KeyboardInterrupt, Interrupted) as exc:
        sigterm = isinstance(exc, Interrupted)
        summary.stopped = f"interrupted by {'SIGTERM' if sigterm else 'SIGINT (Ctrl-C)'}"
        exit_code = EXIT_SIGTERM if sigterm else EXIT_SIGINT
    except Exception as exc:
        summary.stopped = f"internal error: {type(exc).__name__}: {exc}"
        internal = exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        unfinished = [g for g in audit.current if not g.done] if summary.stopped else []
        for group in unfinished:  # the batches they finished still count
            summary.add(group)
            for reporter in reporters:
                reporter.group(group)
        for reporter in reporters:
            reporter.finish(summary)
    if internal is not None:
        raise internal
    if exit_code is not None:
        return exit_code
    return EXIT_OK if summary.ok else EXIT_CHECK_FAILED


def _subset(option: str, chosen: tuple[str, ...], allowed: Sequence[str]) -> list[str]:
    """The spec's entries that the option picks (all when not given), in the spec's order."""
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise UsageError(f"{option} {unknown[0]}: not in the spec's list {allowed}")
    return [a for a in allowed if a in chosen] if chosen else list(allowed)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted()


def validate(spec_paths: tuple[str, ...]) -> int:
    """Validate specs without importing torch or any plugin."""
    for path in spec_paths:
        load_spec(path)
        _echo(f"{path}: ok")
    return EXIT_OK


def _echo(text: str) -> None:
    click.echo(text)


def list_plugins(spec_path: str | None, as_json: bool = False) -> int:
    """Print what every loaded plugin registers: name, kind, plugin, version, where from."""
    import json
    from pathlib import Path

    from gradaudit.plugins import plugin_manager

    loaded = load_spec(spec_path) if spec_path else None
    registry = plugin_manager(
        loaded.spec.plugins if loaded else (), loaded.base_dir if loaded else Path.cwd()
    )
    keys = ("name", "kind", "plugin", "version", "source")
    rows = [(r.name, r.kind, r.plugin, r.version, r.source) for r in registry.all()]
    rows.sort(key=lambda row: (row[1], row[0]))
    if as_json:
        _echo(json.dumps([dict(zip(keys, row, strict=True)) for row in rows], indent=2))
        return EXIT_OK
    table = [keys, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys) - 1)]
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        _echo("  ".join([*cells, row[-1]]))
    return EXIT_OK


def schema() -> int:
    """Print the JSON Schema of a spec file."""
    from gradaudit.spec import json_schema

    click.echo(json_schema(), nl=False)
    return EXIT_OK


def merge(out: str, inputs: list[str]) -> int:
    """Merge shard reports; print the merged totals; exit code as for `run`."""
    from gradaudit import merge as merging
    from gradaudit.report.console import closing_line

    check_writable(out)
    as_json = out.endswith(".json")
    summary = (merging.merge_json if as_json else merging.merge_junit)(out, inputs)
    _echo(closing_line(summary, sum(g.seconds for g in summary.groups)))
    _echo(f"merged {len(inputs)} reports into {out}")
    return EXIT_OK if summary.ok else EXIT_CHECK_FAILED


def mutate(spec_path: str, options: RunOptions, fail_on_survivor: bool) -> int:
    """Run the audit against generic mutants of the manual gradients; report who survived."""
    import time

    from gradaudit.mutate import generic_mutants
    from gradaudit.report import mutation
    from gradaudit.results import RunSummary
    from gradaudit.runner import Audit

    loaded = load_spec(spec_path)
    if options.junit_xml:
        check_writable(options.junit_xml)
    devices = _subset("--device", options.devices, loaded.spec.devices)
    dtypes = _subset("--dtype", options.dtypes, loaded.spec.dtypes)
    start = time.perf_counter()
    audit = Audit(loaded)
    audit.mutants = generic_mutants(audit.tensor_names)
    spec = loaded.spec
    _echo(
        f"gradaudit mutate: {spec.name} ({loaded.path}): {len(audit.mutants)} generic mutants "
        f"of {spec.gradients.plugin}, {spec.batches.count or 'all'} batches per device/dtype"
    )
    summary = RunSummary()
    for group in audit.groups(devices, dtypes):
        summary.add(group)
    if not summary.ok:
        _echo(
            f"gradaudit: the audit itself is not green ({summary.failed} failed, "
            f"{summary.errors} errors): run `gradaudit run {spec_path}` and fix that first"
        )
        return EXIT_CHECK_FAILED
    reports = audit.mutation_reports
    for line in mutation.console_lines(reports, audit.tensor_names):
        _echo(line)
    if options.junit_xml:
        mutation.write_junit(options.junit_xml, loaded, reports, fail_on_survivor)
    survivors = sum(len(r.survivors) for r in reports)
    _echo(f"{survivors} survivors in {time.perf_counter() - start:.1f}s")
    return EXIT_CHECK_FAILED if survivors and fail_on_survivor else EXIT_OK
