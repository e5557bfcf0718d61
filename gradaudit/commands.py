"""What each CLI command does; cli.py only parses arguments and calls these.

`run` is plan, then run, then report: the plan is made before any batch, the runner's
events go to every registered reporter, and the exit code comes from the fold of them.
"""

from __future__ import annotations

import os
import platform
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gradaudit.errors import EXIT_CHECK_FAILED, EXIT_OK, GradauditError, Interrupted, UsageError
from gradaudit.spec import LoadedSpec, load_spec
from gradaudit.write import check_writable, refuse_overwriting

if TYPE_CHECKING:
    from gradaudit.audit import Audit
    from gradaudit.mutate import Gate
    from gradaudit.plan import Plan
    from gradaudit.report.base import Reporter
    from gradaudit.results import RunSummary, Shard

EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_NOTHING_COMPARED = 5  # pytest's "no tests ran"


@dataclass(frozen=True)
class RunOptions:
    junit_xml: str | None = None
    json_path: str | None = None
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    require_devices: tuple[str, ...] = ()
    shard: str | None = None
    batches: tuple[int, ...] = ()  # --batch: only these batch indices
    timeout: float | None = None
    color: bool = False
    progress: bool = False
    verbosity: int = 0
    sets: tuple[str, ...] = ()
    threads: int | None = None  # None: 1, unless OMP_NUM_THREADS says; 0: torch's default


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads for a run: 1 by default, since audit-sized batches gain
    nothing reliable from a second thread and lose up to 40x when other work shares the
    cores (benchmarks/README.md); OMP_NUM_THREADS, when set, is the user's choice."""
    import torch

    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    if threads:
        torch.set_num_threads(threads)


def parse_shard(text: str) -> Shard:
    from gradaudit.results import Shard

    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return Shard(int(match[1]), int(match[2]))


def _report_paths(spec_path: str, options: RunOptions, loaded: LoadedSpec | None) -> None:
    """Refuse, before any work, a report path that would overwrite the spec, a plugin
    file or another report, or that cannot be written."""
    paths = {"--junit-xml": options.junit_xml, "--json": options.json_path}
    inputs: list[str | Path] = [spec_path]
    if loaded is not None:
        inputs += [loaded.base_dir / p for p in loaded.spec.plugins if p.endswith(".py")]
    refuse_overwriting(paths, inputs)
    for written in paths.values():
        if written:
            check_writable(written)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            check_writable(summary)
        except Exception as exc:
            raise UsageError(f"GITHUB_STEP_SUMMARY: {exc}") from None


def prepare(
    spec_path: str, options: RunOptions, before_loading: Callable[[], None] | None = None
) -> tuple[Audit, Plan, dict[str, Any]]:
    """Load the spec, its plugins, data and model, and plan the run (no batch runs).

    `before_loading` runs once the spec and the report paths are known to be good."""
    loaded = load_spec(spec_path, options.sets)
    shard = parse_shard(options.shard) if options.shard is not None else None
    _report_paths(spec_path, options, loaded)
    if before_loading is not None:
        before_loading()
    from gradaudit.audit import Audit
    from gradaudit.plan import device_unavailable, make_plan

    devices = _subset("--device", options.devices, loaded.spec.devices)
    dtypes = _subset("--dtype", options.dtypes, loaded.spec.dtypes)
    for device in options.require_devices:
        if device not in devices:
            raise UsageError(f"--require-device {device}: not among this run's devices {devices}")
        reason = device_unavailable(device)
        if reason:
            raise UsageError(f"--require-device {device}: {reason}")
    set_threads(options.threads)
    audit = Audit(loaded)
    audit.check_memory(dtypes)
    checks = {name: kind() for name, kind in audit.registry.objects("check").items()}
    return audit, make_plan(audit, devices, dtypes, shard, checks, options.batches), checks


def plan(spec_path: str, options: RunOptions, as_json: bool) -> int:
    """Print the plan without running a batch (the CI dry run)."""
    import json

    from gradaudit.ops import command as ops
    from gradaudit.plan import plan_lines

    if ops.is_op_spec(spec_path):
        return ops.plan(spec_path, options, as_json)
    loaded = load_spec(spec_path, options.sets)
    if loaded.spec.distributed is not None:
        from gradaudit.distributed.command import plan_spec

        return plan_spec(
            loaded,
            _subset("--device", options.devices, loaded.spec.devices),
            _subset("--dtype", options.dtypes, loaded.spec.dtypes),
            as_json,
        )
    _, made, _ = prepare(spec_path, options)
    if as_json:
        _echo(json.dumps(made.to_dict(), indent=2))
    else:
        for line in plan_lines(made):
            _echo(line)
    return EXIT_OK


def run(spec_path: str, options: RunOptions) -> int:
    """Audit one spec. Reports exist from before the first batch to the end, whatever
    happens: they say "did not finish" until the run replaces them with its results."""
    interrupts = _Interrupts()
    interrupts.install()  # first: a cancelled job in the first seconds still writes reports
    try:
        from gradaudit.ops import command as ops

        if ops.is_op_spec(spec_path):
            return ops.run(spec_path, options)
        if load_spec(spec_path, options.sets).spec.distributed is not None:
            return _run_distributed(spec_path, options)
        return _run(spec_path, options, interrupts)
    except (KeyboardInterrupt, Interrupted) as exc:
        return EXIT_SIGTERM if isinstance(exc, Interrupted) else EXIT_SIGINT
    finally:
        interrupts.uninstall()


def _run_distributed(spec_path: str, options: RunOptions) -> int:
    """A spec with `distributed:`: ranks launched by torchrun (docs/distributed.md)."""
    for option, given in (
        ("--shard", options.shard),
        ("--set", options.sets),
        ("--batch", options.batches),
    ):
        if given:
            raise UsageError(f"{option} does not apply to a distributed spec yet")
    from gradaudit.distributed.command import run_spec

    _report_paths(spec_path, options, load_spec(spec_path))
    return run_spec(
        spec_path,
        options.junit_xml,
        options.json_path,
        options.timeout,
        list(options.devices),
        list(options.dtypes),
        options.verbosity,
    )


def _run(spec_path: str, options: RunOptions, interrupts: _Interrupts) -> int:
    from gradaudit.report.placeholder import write_placeholders

    placeholders = (spec_path, options.junit_xml, options.json_path, options.sets)
    written = []

    def before_loading() -> None:
        write_placeholders(*placeholders)
        written.append(True)

    try:
        audit, made, checks = prepare(spec_path, options, before_loading)
    except GradauditError as exc:  # a setup error: the reports say so instead of "not finished"
        if written:
            write_placeholders(*placeholders, reason=f"the run could not start: {exc}")
        raise
    import torch

    import gradaudit
    from gradaudit.report.base import NOT_FINISHED, ReportOptions, RunInfo, provisional
    from gradaudit.results import CaseResult, GroupResult, RunSummary
    from gradaudit.runner import CaseStarted
    from gradaudit.runner import run as run_plan

    versions = {
        "gradaudit_version": gradaudit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    info = RunInfo(audit.loaded, audit.tensor_names, versions, made.shard, made)
    report_options = ReportOptions(
        options.junit_xml, options.json_path, options.verbosity, options.color, options.progress
    )
    reporters: list[Reporter] = []
    for factory in audit.registry.objects("reporter").values():
        reporter = factory(report_options)
        if reporter is not None:
            reporters.append(reporter)
            reporter.start(info)
    summary = RunSummary()

    def checkpoint() -> None:
        for reporter in reporters:
            reporter.checkpoint(provisional(summary, made))

    live: list[GroupResult] = []  # cases started and not yet done

    def finish() -> None:
        if not summary.stopped:
            _all_zero_is_red(summary)
        if summary.stopped:
            for group in live:  # cut short: the batches they finished still count
                if not group.done:
                    summary.add(group)
            summary.complete(made, summary.stopped)
        for reporter in reporters:
            reporter.finish(summary)

    def finish_now() -> None:
        summary.stopped = "interrupted by SIGTERM (twice: plugin code caught the first)"
        finish()

    interrupts.on_second = finish_now
    checkpoint()
    exit_code: int | None = None
    internal: Exception | None = None
    try:
        for event in run_plan(audit, made, checks, options.timeout):
            if isinstance(event, CaseResult):
                for reporter in reporters:
                    reporter.case(event)
            elif isinstance(event, GroupResult):
                summary.add(event)
                for reporter in reporters:
                    reporter.group(event)
                checkpoint()
            elif isinstance(event, CaseStarted):
                live.append(event.group)
            else:
                raise TypeError(f"unexpected event {type(event).__name__}")
    except (KeyboardInterrupt, Interrupted) as exc:
        sigterm = isinstance(exc, Interrupted)
        summary.stopped = f"interrupted by {'SIGTERM' if sigterm else 'SIGINT (Ctrl-C)'}"
        exit_code = EXIT_SIGTERM if sigterm else EXIT_SIGINT
    except Exception as exc:
        summary.stopped = f"internal error: {type(exc).__name__}: {exc}"
        internal = exc
    finally:
        if exit_code is None and internal is None and interrupts.count:
            summary.stopped = "interrupted by SIGTERM (plugin code caught it; the run went on)"
            exit_code = EXIT_SIGTERM
        if exit_code is None and internal is None and len(summary.groups) < len(made.cases):
            summary.stopped = NOT_FINISHED  # never reached: every case yields a group
        finish()
    if internal is not None:
        raise internal
    if exit_code is not None:
        return exit_code
    if summary.ok and summary.passed == 0:
        _echo("gradaudit: no tensor was compared (every case skipped): nothing was proven")
        return EXIT_NOTHING_COMPARED
    return EXIT_OK if summary.ok else EXIT_CHECK_FAILED


ALL_ZERO = "every tensor's autograd gradient was zero on every batch: nothing was proven"


def _all_zero_is_red(summary: RunSummary) -> None:
    """A run whose every compared gradient had a zero reference compared nothing real: each
    of those tensors becomes an error, so every report is as red as the exit code."""
    compared = [
        (g, s) for g in summary.groups if g.check == "gradients" for s in g.tensors if s.batches
    ]
    if compared and all(s.tensor in g.zero_reference for g, s in compared):
        for _, s in compared:
            summary.add_error(s, ALL_ZERO)


class _Interrupts:
    """SIGTERM raises Interrupted (like Ctrl-C's KeyboardInterrupt); a second SIGTERM, when
    plugin code swallowed the first, writes the reports and exits at once."""

    def __init__(self) -> None:
        self.count = 0
        self.previous: Any = None
        self.on_second: Any = None

    def install(self) -> None:
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count > 1:
            try:
                if self.on_second is not None:
                    self.on_second()
            finally:
                os._exit(EXIT_SIGTERM)
        raise Interrupted()


def _subset(option: str, chosen: tuple[str, ...], allowed: Sequence[str]) -> list[str]:
    """The spec's entries that the option picks (all when not given), in the spec's order."""
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise UsageError(f"{option} {unknown[0]}: not in the spec's list {allowed}")
    return [a for a in allowed if a in chosen] if chosen else list(allowed)


def _echo(text: str) -> None:
    click.echo(text)


def mutate(spec_path: str, options: RunOptions, gate: Gate) -> int:
    """Run the audit against generic mutants of the manual gradients; report who survived."""
    import time

    from gradaudit.mutate import MutationReport, generic_mutants
    from gradaudit.ops import command as ops
    from gradaudit.ops import mutate as op_mutate
    from gradaudit.report import mutation
    from gradaudit.results import GroupResult, RunSummary
    from gradaudit.runner import run as run_plan

    if ops.is_op_spec(spec_path):
        return op_mutate.mutate(spec_path, options, gate)
    start = time.perf_counter()
    audit, made, _ = prepare(
        spec_path,
        RunOptions(
            devices=options.devices,
            dtypes=options.dtypes,
            sets=options.sets,
            junit_xml=options.junit_xml,
        ),
    )
    mutants = generic_mutants(audit.tensor_names)
    spec = audit.loaded.spec
    _echo(
        f"gradaudit mutate: {spec.name} ({audit.loaded.path}): {len(mutants)} generic mutants "
        f"of {spec.gradients.plugin}, {spec.batches.count or 'all'} batches per device/dtype"
    )
    summary = RunSummary()
    reports: list[MutationReport] = []
    for event in run_plan(audit, made, {}, options.timeout, mutants):
        if isinstance(event, GroupResult):
            summary.add(event)
        elif isinstance(event, MutationReport):
            reports.append(event)
    why = mutation.not_green(summary)
    if why is not None:
        _echo(f"gradaudit: {why}: run `gradaudit run {spec_path}` and fix that first")
        if options.junit_xml:
            mutation.write_not_green(options.junit_xml, audit.loaded, why)
        return EXIT_CHECK_FAILED
    seconds = time.perf_counter() - start
    for line in mutation.finish(
        reports, audit.tensor_names, audit.loaded, options.junit_xml, gate, options.color, seconds
    ):
        _echo(line)
    return EXIT_CHECK_FAILED if gate.fails(reports) else EXIT_OK
