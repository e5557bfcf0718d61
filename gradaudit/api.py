"""The Python API's run: a spec audited in the caller's own process (scripts, notebooks,
benchmarks, test suites that want no subprocess), with the plan, the loop and the fold the
command line uses. Plugin code runs in this process, so unlike `gradaudit run` nothing
guards the caller against it: `gradaudit run` and pytest's collected specs supervise.

    from gradaudit.api import run
    result = run("specs/charrnn.yaml", dtypes=["float32"])
    assert result.ok, result.report()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gradaudit.mutate import MutationReport
from gradaudit.plan import Plan
from gradaudit.results import GroupResult, RunSummary, TensorSummary
from gradaudit.run.events import Event, Failed, Planned
from gradaudit.run.executor import Job, run_job
from gradaudit.run.fold import Fold
from gradaudit.spec.common import LoadedSpec
from gradaudit.targets import Target


@dataclass
class Result:
    """A run's plan, its cases' results and totals: what `gradaudit.api.run`, `check_op` and
    `gradaudit.check` return. True when every tensor of every case passed."""

    plan: Plan | None
    summary: RunSummary
    mutations: list[MutationReport] = field(default_factory=list)

    @property
    def groups(self) -> list[GroupResult]:
        return self.summary.groups

    @property
    def ok(self) -> bool:
        return self.summary.ok and self.summary.passed > 0

    def __bool__(self) -> bool:
        return self.ok

    @property
    def failures(self) -> list[tuple[GroupResult, TensorSummary]]:
        return [(g, s) for g in self.groups for s in g.tensors if s.status in ("fail", "error")]

    def report(self) -> str:
        """Why it is not green, a block per failing tensor; empty when it is."""
        from gradaudit.report.console import failure_blocks

        if self.ok:
            return ""
        if not self.failures and not self.summary.stopped:
            return "nothing was compared (every case was skipped)"
        lines = [text for text, _ in failure_blocks(self.summary)]
        if self.summary.stopped:
            lines.append(f"the run stopped early: {self.summary.stopped}")
        return "\n".join(lines)


def run(
    spec: str | Path,
    *,
    devices: Sequence[str] = (),
    dtypes: Sequence[str] = (),
    sets: Sequence[str] = (),
    shard: str | None = None,
    batches: Sequence[int] = (),
    variants: Sequence[str] = (),
    timeout: float | None = None,
    mutate: bool = False,
) -> Result:
    """Plan and run a spec here; raises GradauditError for a spec that cannot run."""
    job = Job(
        str(spec),
        tuple(sets),
        tuple(devices),
        tuple(dtypes),
        shard,
        tuple(batches),
        tuple(variants),
        mode="mutate" if mutate else "run",
        timeout=timeout,
        threads=0,  # the caller's own torch settings
    )
    return run_in_process(job)


def run_loaded(
    loaded: LoadedSpec,
    *,
    devices: Sequence[str] = (),
    dtypes: Sequence[str] = (),
    shard: str | None = None,
    batches: Sequence[int] = (),
    mutate: bool = False,
    timeout: float | None = None,
    share: bool = True,
) -> Result:
    """`run` on a spec loaded (or changed) by the caller. `share=False`: a model audit
    computes every float64 truth afresh (the results are the same)."""
    job = Job(
        str(loaded.path),
        loaded.sets,
        tuple(devices),
        tuple(dtypes),
        shard,
        tuple(batches),
        mode="mutate" if mutate else "run",
        timeout=timeout,
        threads=0,
    )
    target = None
    if not share:
        from gradaudit.targets.model.target import ModelTarget

        target = ModelTarget(loaded, share=False)
    return run_in_process(job, loaded, target)


def plan_loaded(
    loaded: LoadedSpec,
    *,
    devices: Sequence[str] = (),
    dtypes: Sequence[str] = (),
    shard: str | None = None,
    batches: Sequence[int] = (),
) -> Plan:
    """The plan of a spec loaded by the caller, made here (no sample runs)."""
    job = Job(str(loaded.path), loaded.sets, tuple(devices), tuple(dtypes), shard, tuple(batches))
    found = run_in_process(dataclasses.replace(job, mode="plan"), loaded).plan
    assert found is not None
    return found


def run_in_process(
    job: Job, loaded: LoadedSpec | None = None, target: Target | None = None
) -> Result:
    """A job's events folded as a supervisor folds them, without an executor."""
    from gradaudit.commands import verdict
    from gradaudit.run.supervisor import Outcome

    outcome = Outcome()

    def emit(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Planned):
                outcome.plan, outcome.fold = event.plan, Fold(event.plan)
            elif isinstance(event, Failed):
                outcome.failed = event
            elif isinstance(event, MutationReport):
                outcome.mutations.append(event)
            elif outcome.fold is not None:
                outcome.fold.apply(event)

    run_job(job, emit, loaded, target)
    error = outcome.failure()
    if error is not None:
        raise error
    assert outcome.fold is not None
    outcome.fold.close("the run ended before it", finished=True)
    return Result(outcome.plan, verdict(outcome), outcome.mutations)
