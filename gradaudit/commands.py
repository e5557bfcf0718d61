"""What `run`, `plan` and `mutate` do; cli.py only parses arguments and calls these.

Every kind of spec takes the same path: it is read and checked here (torch-free; a bad spec
or report path is exit 2 before any work), the report paths say "did not finish" first, and
a supervisor runs the plan in an executor process (gradaudit.run). Reporters listen to the
supervisor; the exit code comes from the plan and what arrived, never from the executor.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gradaudit.errors import ExitCode, GradauditError, Interrupted, UsageError
from gradaudit.plan import Plan, plan_lines
from gradaudit.results import CaseResult, GroupResult, RunSummary, Shard
from gradaudit.run.executor import Job
from gradaudit.run.supervisor import Outcome, Supervisor
from gradaudit.spec import LoadedSpec, load_spec
from gradaudit.version import __version__
from gradaudit.write import check_writable, refuse_overwriting

if TYPE_CHECKING:
    from gradaudit.mutate import Gate
    from gradaudit.report.base import Reporter

NOTHING_COMPARED = "gradaudit: no tensor was compared (every case skipped): nothing was proven"
ALL_ZERO = "every tensor's autograd gradient was zero on every batch: nothing was proven"


@dataclass(frozen=True)
class RunOptions:
    junit_xml: str | None = None
    json_path: str | None = None
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    require_devices: tuple[str, ...] = ()
    shard: str | None = None
    batches: tuple[int, ...] = ()  # --batch: only these batch indices
    variants: tuple[str, ...] = ()  # --variant: only these variants of an op
    timeout: float | None = None
    color: bool = False
    progress: bool = False
    verbosity: int = 0
    sets: tuple[str, ...] = ()
    threads: int | None = None  # None: 1, unless OMP_NUM_THREADS says; 0: torch's default
    extra: dict[str, Any] = field(default_factory=dict)  # reporter plugins' options
    alongside: tuple[str, ...] = ()  # the resolved paths of the other specs of this run


def job_of(spec_path: str, options: RunOptions, mode: str = "run") -> Job:
    shard = str(Shard.parse(options.shard)) if options.shard is not None else None
    return Job(
        spec=spec_path,
        sets=options.sets,
        devices=options.devices,
        dtypes=options.dtypes,
        shard=shard,
        batches=options.batches,
        variants=options.variants,
        mode=mode,
        timeout=options.timeout,
        threads=options.threads,
        require_devices=options.require_devices,
        alongside=options.alongside,
    )


def check_inputs(spec_path: str, options: RunOptions, loaded: LoadedSpec) -> None:
    """Refuse, before any work, a report path that would overwrite the spec, a plugin file
    or another report, or that cannot be written; and options the spec cannot take."""
    from gradaudit.plan import subset

    subset("--device", options.devices, loaded.spec.devices)
    subset("--dtype", options.dtypes, loaded.spec.dtypes)
    for device in options.require_devices:
        if options.devices and device not in options.devices:
            raise UsageError(f"--require-device {device}: not among this run's devices")
        if device not in loaded.spec.devices:
            raise UsageError(f"--require-device {device}: not in the spec's list")
    paths = {"--junit-xml": options.junit_xml, "--json": options.json_path}
    from gradaudit.plugins import report_registry

    declared = report_registry().objects("report-option")
    paths |= {
        f"--{k}": v
        for k, v in options.extra.items()
        if isinstance(v, str) and getattr(declared.get(k), "path", False)
    }
    inputs: list[str | Path] = [spec_path]
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


class Reports:
    """The reporters of one run, listening to its supervisor: started when the plan
    arrives, told every result and finished case, their files kept complete ("did not
    finish" for what is not done) as cases finish: when the plan arrives, then after a
    case at most once a second and never more than 5% of the time (each checkpoint
    rewrites whole documents: after every one of an op spec's 70 cases, they took 5 s of
    a 0.7 s run). A run that ends, even by a signal, writes its final reports in full."""

    def __init__(self, loaded: LoadedSpec, options: RunOptions) -> None:
        from datetime import datetime, timezone

        self.loaded, self.options = loaded, options
        self.reporters: list[Reporter] = []
        self.supervisor: Supervisor | None = None
        # The run starts now, not when the executor's plan arrives (after its imports).
        self.started = datetime.now(timezone.utc).isoformat()
        self.clock = time.perf_counter()
        self.written = (0.0, 0.0)  # the last checkpoint: when, and what it cost
        self.pending = False  # a checkpoint put off (too soon after the last)

    def planned(self, plan: Plan) -> None:
        from gradaudit.plugins import report_registry
        from gradaudit.report.base import ReportOptions, RunInfo

        o = self.options
        versions = {
            "gradaudit_version": __version__,
            "torch_version": plan.facts.get("torch_version", ""),
            "python_version": platform.python_version(),
        }
        info = RunInfo(self.loaded, plan, versions, started=self.started, clock=self.clock)
        chosen = ReportOptions(
            o.junit_xml, o.json_path, o.verbosity, o.color, o.progress, dict(o.extra)
        )
        for factory in report_registry().objects("reporter").values():
            reporter = factory(chosen)
            if reporter is not None:
                self.reporters.append(reporter)
                reporter.start(info)
        self.checkpoint(force=True)

    def case(self, result: CaseResult) -> None:
        for reporter in self.reporters:
            reporter.case(result)
        self.idle()

    def idle(self) -> None:
        """A checkpoint put off (too soon after the last) is written once due."""
        if self.pending:
            self.checkpoint()

    def group(self, group: GroupResult) -> None:
        for reporter in self.reporters:
            reporter.group(group)
        self.checkpoint()

    def checkpoint(self, force: bool = False) -> None:
        from gradaudit.report.base import NOT_FINISHED, wants_checkpoints

        start = time.perf_counter()
        last, cost = self.written
        if not force and start - last < max(1.0, 20 * cost):
            self.pending = True
            return
        self.pending = False
        fold = self.supervisor.outcome.fold if self.supervisor else None
        wanting = [r for r in self.reporters if wants_checkpoints(r)]
        if fold is not None and wanting:
            summary = fold.provisional(NOT_FINISHED)  # once, for every reporter
            for reporter in wanting:
                reporter.checkpoint(summary)
            end = time.perf_counter()
            self.written = (end, end - start)

    def finish(self, summary: RunSummary) -> None:
        for reporter in self.reporters:
            reporter.finish(summary)


@dataclass(frozen=True)
class SpecRun:
    """What one spec's run gave: its exit code, and its plan and summary when it planned."""

    code: int
    plan: Plan | None = None
    summary: RunSummary | None = None


def run(spec_path: str, options: RunOptions) -> int:
    """Audit one spec of any kind (the placeholders are written already: cli.py)."""
    return run_spec(spec_path, options).code


def run_spec(
    spec_path: str, options: RunOptions, restore: bool = False, loaded: LoadedSpec | None = None
) -> SpecRun:
    """`run`, telling what it planned and found too (a run of several specs sums them).
    `restore`: the signal handlers are put back afterwards (more specs follow); else a
    second signal is ignored while the reports are finished. `loaded`: the spec, when the
    caller has read it already."""
    from gradaudit.report.placeholder import remove_first, write_placeholders

    placeholders = (spec_path, options.junit_xml, options.json_path, options.sets)
    try:
        loaded = loaded or load_spec(spec_path, options.sets)
        check_inputs(spec_path, options, loaded)
        write_placeholders(*placeholders)
    except GradauditError:  # bad input, exit 2: nothing written, not even a placeholder
        remove_first([spec_path], options.junit_xml, options.json_path)
        raise
    except (Interrupted, KeyboardInterrupt) as exc:  # before the supervisor takes signals
        sigterm = isinstance(exc, Interrupted)
        how = "SIGTERM" if sigterm else "SIGINT (Ctrl-C)"
        write_placeholders(*placeholders, reason=f"the run did not finish: interrupted by {how}")
        return SpecRun(int(ExitCode.SIGTERM if sigterm else ExitCode.SIGINT))
    reports = Reports(loaded, options)
    supervisor = Supervisor(job_of(spec_path, options), reports, restore=restore)
    reports.supervisor = supervisor
    outcome = supervisor.run()
    if outcome.fold is None:  # it never planned: the reports say why
        why = _not_started(outcome)
        write_placeholders(*placeholders, reason=f"the run could not start: {why}")
        return SpecRun(_fail_to_start(outcome, why))
    summary = verdict(outcome)
    reports.finish(summary)
    if outcome.failed is not None:  # it planned, then could not go on: the reports say why too
        click.echo(f"gradaudit: error: {outcome.failed.message}", err=True)
    return SpecRun(exit_code(outcome, summary), outcome.plan, summary)


def verdict(outcome: Outcome) -> RunSummary:
    """The run's summary: every case folded, the stop if there was one, and a run whose
    every reference was zero red in every report."""
    assert outcome.fold is not None
    summary = outcome.fold.summary
    order = outcome.fold.plan.index()
    summary.groups.sort(key=lambda g: order.get((g.device, g.dtype, g.check), len(order)))
    summary.stopped = outcome.stopped
    if not summary.stopped:
        compared = [
            (g, s) for g in summary.groups if g.check == "gradients" for s in g.tensors if s.batches
        ]
        if compared and all(s.tensor in g.zero_reference for g, s in compared):
            for _, s in compared:
                summary.add_error(s, ALL_ZERO)
    return summary


def exit_code(outcome: Outcome, summary: RunSummary) -> int:
    fixed = outcome.exit_code
    if fixed is not None:
        return fixed
    if summary.ok and summary.passed == 0:
        click.echo(NOTHING_COMPARED)
        return int(ExitCode.NOTHING_COMPARED)
    return int(ExitCode.OK if summary.ok else ExitCode.FAILED)


def _not_started(outcome: Outcome) -> str:
    if outcome.failed is not None:
        return outcome.failed.message
    return outcome.stopped or "the process running plugin code ended before it planned the run"


def _fail_to_start(outcome: Outcome, why: str) -> int:
    """Exit 2 (or 3) with the executor's one-line error; 1 when plugin code ended it; the
    signal's code when interrupted."""
    code = outcome.exit_code
    error = outcome.failure()
    if error is not None:
        raise error
    if code is not None:
        return code
    click.echo(f"gradaudit: error: the run could not start: {why}", err=True)
    return int(ExitCode.FAILED)


def run_with_html(
    runner: Callable[[RunOptions], int], options: RunOptions, html_path: str | None
) -> int:
    """`runner` (the run of one spec or of several), then its HTML page drawn from its JSON
    report (a temporary one when no --json was asked for). The GitHub Action appends the
    budget charts to the job summary."""
    if not html_path:
        return runner(options)
    import tempfile

    from gradaudit.ci.pictures import draw, remove_placeholder

    with tempfile.TemporaryDirectory(prefix="gradaudit-") as scratch:
        report = options.json_path or os.path.join(scratch, "report.json")
        try:
            code = runner(dataclasses.replace(options, json_path=report))
        except GradauditError:
            remove_placeholder(html_path)
            raise
        if code == ExitCode.USAGE:
            remove_placeholder(html_path)
        if code == ExitCode.USAGE or not os.path.isfile(report):
            return code
        return draw(report, html_path, code)


def plan(spec_path: str, options: RunOptions, as_json: bool) -> int:
    """Print the plan without running a sample (the CI dry run); the plugins load in an
    executor, so this process imports no torch."""
    import json

    loaded = load_spec(spec_path, options.sets)
    check_inputs(spec_path, RunOptions(devices=options.devices, dtypes=options.dtypes), loaded)
    outcome = Supervisor(job_of(spec_path, options, "plan")).run()
    if outcome.plan is None:
        return _fail_to_start(outcome, _not_started(outcome))
    if as_json:
        click.echo(json.dumps(outcome.plan.to_dict(), indent=2))
    else:
        for line in plan_lines(outcome.plan):
            click.echo(line)
    return int(ExitCode.OK)


def mutate(spec_path: str, options: RunOptions, gate: Gate) -> int:
    """Run the audit against generic mutants of the manual gradients (a model's) or of the
    candidate's backward (an op's); report who survived."""
    from gradaudit.report import mutation

    start = time.perf_counter()
    loaded = load_spec(spec_path, options.sets)
    check_inputs(spec_path, options, loaded)
    if options.junit_xml:  # never an old report, whatever happens next
        mutation.write_not_green(options.junit_xml, loaded, "gradaudit mutate did not finish")
    supervisor = Supervisor(job_of(spec_path, options, "mutate"))
    outcome = supervisor.run()
    if outcome.fold is None or outcome.plan is None:
        cause = _not_started(outcome)
        if options.junit_xml:
            reason = f"the run could not start: {outcome.failure() or cause}"
            mutation.write_not_green(options.junit_xml, loaded, reason)
        return _fail_to_start(outcome, cause)
    summary = verdict(outcome)
    why = mutation.not_green(summary)
    if why is not None:
        click.echo(f"gradaudit: {why}: run `gradaudit run {spec_path}` and fix that first")
        if options.junit_xml:
            mutation.write_not_green(options.junit_xml, loaded, why)
        return outcome.exit_code or int(ExitCode.FAILED)
    plan_ = outcome.plan
    samples = len(_samples(plan_)) if not plan_.sample_names else len(plan_.samples or ())
    what = "variants" if plan_.sample_names else "batches"
    click.echo(
        f"gradaudit mutate: {plan_.spec_name} ({loaded.path}): generic mutants of the gradients of "
        f"{plan_.header.split(',')[0]}, {samples} {what} per device/dtype"
    )
    mutated = [t for t in plan_.tensors if any(t in r.tolerances for r in outcome.mutations)]
    seconds = time.perf_counter() - start
    lines = mutation.finish(
        outcome.mutations, mutated, loaded, options.junit_xml, gate, options.color, seconds
    )
    for line in lines:
        click.echo(line)
    return int(ExitCode.FAILED if gate.fails(outcome.mutations) else ExitCode.OK)


def _samples(plan: Plan) -> Sequence[int]:
    return next((c.samples or () for c in plan.runnable), ())
