"""The one runner loop: every kind of target's planned cases, device by device, sample by
sample, each sample through every pass of the device under the time limit; one stream of
events out. It runs where plugin code runs: in an executor process, in a torchrun rank, or
in the caller's own process for the Python API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from gradaudit.deadline import Deadline, deadline
from gradaudit.errors import CaseTimeout, DrawTimeout
from gradaudit.plan import Plan, PlannedCase
from gradaudit.run.events import At, CaseStarted, Event
from gradaudit.targets import Context, Pass, Runnable

Emit = Callable[[list[Event]], None]
Key = tuple[str, str, str]


def run_plan(
    target: Runnable,
    plan: Plan,
    emit: Emit,
    context: Context,
    wanted: set[Key] | None = None,
    resume: Mapping[str, int] | None = None,
) -> None:
    """Run the plan's runnable cases (those in `wanted`, when given). `resume`: per device,
    the last sample already dealt with (a restarted executor goes on after it)."""
    cases = [c for c in plan.cases if c.skip is None and (wanted is None or c.key in wanted)]
    devices: dict[str, dict[str, list[PlannedCase]]] = {}
    for case in cases:
        devices.setdefault(case.device, {}).setdefault(case.pass_key[1], []).append(case)
    for device, by_dtype in devices.items():
        after = (resume or {}).get(device, -1)
        _device(target, device, by_dtype, emit, context, after)


def _device(
    target: Runnable,
    device: str,
    by_dtype: Mapping[str, list[PlannedCase]],
    emit: Emit,
    context: Context,
    after: int,
) -> None:
    """One device: its passes take each sample in turn (a lender before its borrowers); each
    pass's cases start with its first events, so a run cut short before reports them as
    never run rather than as empty."""
    passes: list[tuple[Pass, list[PlannedCase]]] = [
        (target.open(device, dtype, cases, context), cases) for dtype, cases in by_dtype.items()
    ]
    linked = target.link([p for p, _ in passes])
    dtypes = {id(p): cases[0].pass_key[1] for p, cases in passes}
    started: set[int] = set()

    def start(index: int, cases: Sequence[PlannedCase]) -> list[Event]:
        if index in started:
            return []
        started.add(index)
        return [CaseStarted(c.key) for c in cases]

    for sample in _drawn(target.samples(_wanted(by_dtype)), device, context.timeout):
        if sample.index <= after:
            continue
        linked.before(sample)
        for each in linked.order:
            emit([At(device, sample.index, dtypes[id(each)])])
            _step(each, sample, context.timeout)
        for i, (each, cases) in enumerate(passes):
            emit([*start(i, cases), *each.drain()])
    for i, (each, cases) in enumerate(passes):
        emit([*start(i, cases), *each.finish()])


def _drawn(samples: Iterable[Any], device: str, timeout: float | None) -> Iterator[Any]:
    """The samples, each drawn under the time limit: a data iterator that hangs between
    batches is plugin code too. It cannot go on after that (a generator the limit
    interrupted is closed): DrawTimeout, and every sample not drawn is reported not run."""
    iterator = iter(samples)
    while True:
        limit = Deadline()
        try:
            with deadline(timeout, limit):
                sample = next(iterator)
        except StopIteration:
            return
        except CaseTimeout:
            pass
        if limit.expired:
            raise DrawTimeout(
                f"drawing the next sample on {device} timed out after {timeout:g}s (--timeout)"
            )
        yield sample


def _step(each: Pass, sample: Any, timeout: float | None) -> None:
    """One pass on one sample under the time limit: a limit that fires is that sample's
    error for the pass, even when plugin code caught the exception."""
    limit = Deadline()
    try:
        with deadline(timeout, limit):
            each.step(sample)
    except CaseTimeout:
        pass
    if limit.expired:
        each.timed_out(sample, f"timed out after {timeout:g}s (--timeout)")


def _wanted(by_dtype: Mapping[str, Iterable[PlannedCase]]) -> tuple[int, ...] | None:
    """The samples any case of the device runs (None: as many as the data has)."""
    found: set[int] = set()
    for cases in by_dtype.values():
        for case in cases:
            if case.samples is None:
                return None
            found.update(case.samples)
    return tuple(sorted(found))
