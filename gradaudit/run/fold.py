"""The verdict's one source: the plan and the events received, folded into case results.

A case starts as the plan has it (a skipped case is complete as it is); its results fold in
as they arrive; `close` then gives every planned tensor of every case that is not complete
an error for each planned sample it never got, with the reason the run gives (the executor
died, a time limit, an interrupt, or a target that ran fewer samples than planned). So a
case is green only when every planned sample of every tensor arrived and passed, whatever
the process that ran plugin code did. Torch-free: the supervisor folds, and so does a run in
the caller's own process (the Python API).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from gradaudit.plan import Plan, PlannedCase
from gradaudit.results import CaseResult, GroupResult, RunSummary, TensorSummary
from gradaudit.run.events import CaseDone, CaseStarted
from gradaudit.tolerance import Tol

Key = tuple[str, str, str]


class Fold:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.cases: dict[Key, PlannedCase] = {case.key: case for case in plan.cases}
        self.groups: dict[Key, GroupResult] = {c.key: GroupResult.planned(c) for c in plan.cases}
        self._tensors: dict[tuple[Key, str], TensorSummary] = {
            (key, s.tensor): s for key, g in self.groups.items() for s in g.tensors
        }
        self.received: dict[tuple[Key, str], set[int]] = {}
        self.started: set[Key] = set()
        self.done: set[Key] = {c.key for c in plan.cases if c.skip is not None}
        self.summary = RunSummary()  # the cases done so far, in the order they finished
        self._counted: set[Key] = set()
        self.times: dict[Key, list[float]] = {}  # a case's first and latest event

    def apply(self, event: object) -> GroupResult | None:
        """Fold one event of the run; the case it completed, if it completed one."""
        if isinstance(event, CaseStarted):
            self.start(event.key)
        elif isinstance(event, CaseResult):
            self.result(event)
        elif isinstance(event, CaseDone):
            group = self.finish_case(event)
            return group if group.done else None
        return None

    def start(self, key: Key) -> GroupResult:
        self.started.add(key)
        self.times.setdefault(key, [time.monotonic(), time.monotonic()])
        return self.groups[key]

    def result(self, r: CaseResult) -> None:
        """Fold one tensor's result on one sample into its case (a tensor the plan does not
        have, like a gradient for a tensor the model lacks, becomes a row of its own)."""
        key = (r.device, r.dtype, r.kind)
        group = self.groups.get(key)
        if group is None:
            raise ValueError(f"a result for {'/'.join(key)}, which is not a planned case")
        summary = self._tensors.get((key, r.tensor))
        if summary is None:
            summary = self._tensors[(key, r.tensor)] = TensorSummary(r.tensor, Tol("allclose"))
            group.tensors.append(summary)
        if r.tol is None:
            r.tol = summary.tol  # the plan's: events carry none
        if r.check is not None:
            summary.add(r.check, r.batch, r.seed)
        else:
            summary.add_error(r.error or "no result")
        self.received.setdefault((key, r.tensor), set()).add(r.batch)
        if key in self.times:
            self.times[key][1] = time.monotonic()

    def finish_case(self, event: CaseDone) -> GroupResult:
        """A case the executor ended: complete, unless planned samples are missing (then
        `close` names them)."""
        group = self.groups[event.key]
        group.seconds, group.device_name = event.seconds, event.device_name or group.device
        group.zero_reference = list(event.zero_reference)
        for s in group.tensors:
            s.seconds = group.seconds / max(len(group.tensors), 1)
        self.done.add(event.key)
        if not self._missing(self.cases[event.key]):
            group.done = True
            self._count(event.key)
        return group

    def _missing(self, case: PlannedCase) -> dict[str, list[int]]:
        """Per planned tensor, the planned samples that never arrived."""
        if case.skip is not None:
            return {}
        if case.samples is None:  # the data decides how many: what came is all there is
            seen = {t.name: self.received.get((case.key, t.name), set()) for t in case.tensors}
            ran: set[int] = set().union(*seen.values())
            return {n: sorted(ran - samples) for n, samples in seen.items() if ran - samples}
        missing = {}
        for t in case.tensors:
            got = self.received.get((case.key, t.name), set())
            gone = [k for k in case.samples if k not in got]
            if gone:
                missing[t.name] = gone
        return missing

    def lost(self, device: str, sample: int, reason: str) -> None:
        """The executor died while it ran `sample` on `device`: every case of the device
        not complete that runs it gets, per tensor without a result there, that error."""
        noun = "variant" if self.plan.sample_names else "batch"
        what = _samples(noun, [sample], self.plan.sample_names)
        for case in self.pending():
            if case.device != device or (case.samples is not None and sample not in case.samples):
                continue
            for t in case.tensors:
                got = self.received.setdefault((case.key, t.name), set())
                if sample not in got:
                    self._tensors[(case.key, t.name)].add_error(f"{what.strip()}: {reason}")
                    got.add(sample)

    def close(self, reason: str, finished: bool) -> list[GroupResult]:
        """Every case not complete gets an error per tensor naming the samples it did not
        run and why; `finished`: the executor said it ran everything (then a missing sample
        is the target's: it ran fewer than planned). Returns the cases closed here."""
        closed = []
        noun = "variant" if self.plan.sample_names else "batch"
        for case in self.plan.cases:
            if case.key in self._counted:
                continue
            group = self.groups[case.key]
            missing = self._missing(case)
            if case.samples is None and case.key not in self.done:
                missing = {t.name: [] for t in case.tensors}
            why = reason
            if finished and case.key in self.done:
                why = f"the target ran fewer {_PLURAL[noun]} than planned ({reason})"
            for name, samples in missing.items():
                what = _samples(noun, samples, self.plan.sample_names)
                self._tensors[(case.key, name)].add_error(f"{what}not run: {why}")
            group.done = group.done or (case.key in self.done and not missing)
            if not group.seconds and case.key in self.times:  # cut short: its time so far
                first, last = self.times[case.key]
                group.seconds = last - first
                for s in group.tensors:
                    s.seconds = group.seconds / max(len(group.tensors), 1)
            self._count(case.key)
            closed.append(group)
        return closed

    def _count(self, key: Key) -> None:
        if key not in self._counted:
            self._counted.add(key)
            self.summary.add(self.groups[key])

    def provisional(self, reason: str) -> RunSummary:
        """The run so far for reports written while it goes: every case not complete yet is
        an error saying `reason` ("did not finish")."""
        copy = RunSummary()
        for group in self.summary.groups:
            copy.add(group)
        for case in self.plan.cases:
            if case.key not in self._counted:
                pending = GroupResult.planned(case)
                for s in pending.tensors:
                    s.add_error(f"not run: {reason}")
                copy.add(pending)
        copy.stopped = reason
        return copy

    def in_plan_order(self) -> list[GroupResult]:
        return [self.groups[c.key] for c in self.plan.cases]

    def pending(self) -> Iterable[PlannedCase]:
        """The runnable cases not complete yet, in plan order."""
        return (c for c in self.plan.cases if c.key not in self._counted and c.skip is None)


def _samples(noun: str, samples: list[int], names: tuple[str, ...]) -> str:
    """ "batches 3-7, 9 " / "variant lead2 " / "" for what did not run."""
    if not samples:
        return ""
    if names:
        shown = ", ".join(names[k] if k < len(names) else str(k) for k in samples)
    else:
        shown = ", ".join(_runs(sorted(samples)))
    return f"{_PLURAL[noun] if len(samples) > 1 else noun} {shown} "


_PLURAL = {"batch": "batches", "variant": "variants"}


def _runs(numbers: list[int]) -> list[str]:
    """Consecutive numbers as ranges: [3, 4, 5, 9] -> ["3-5", "9"]."""
    found: list[str] = []
    start = previous = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == previous + 1:
            previous = n
            continue
        found.append(str(start) if start == previous else f"{start}-{previous}")
        if n is not None:
            start = previous = n
    return found
