"""Running a plan: per device, batch by batch, every dtype pass; one stream of events out.

Events, in order, per device: `CaseStarted` for each of its planned cases, a `CaseResult`
per tensor and batch (a comparison, or the error that prevented it; within a batch in
plan order), then a `MutationReport` per pass when mutants are given and a `GroupResult`
per case. Nothing else leaves the runner: reports, summaries and the mutation score are
folds over these events.

The passes of a device take each batch in turn so that work two cases would do alike is
done once: a float32 case's float64 truth is the float64 case's autograd gradient, bit for
bit, when the weights agree after the cast and the inputs cast exactly (checked, never
assumed; see `_Sharing`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from gradaudit.audit import Audit
from gradaudit.checks import CheckKind
from gradaudit.dtype_pass import DtypePass
from gradaudit.mutate import Mutant, MutationReport
from gradaudit.pass_parts import Step, device_name, float64_device
from gradaudit.plan import Plan, PlannedCase
from gradaudit.results import CaseResult, GroupResult
from gradaudit.syncs import same_bits_all
from gradaudit.types import Batch

__all__ = ["CaseStarted", "Event", "Step", "device_name", "float64_device", "run"]

# Float dtypes whose values float32 holds exactly: inputs in these cast to float32 and then
# to float64 give what a direct cast to float64 gives.
_EXACT_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class CaseStarted:
    """A case begins; `group` fills batch by batch, so a run cut short can still report
    what the case had done (the group's `done` stays False)."""

    case: PlannedCase
    group: GroupResult


Event = CaseStarted | CaseResult | GroupResult | MutationReport


def run(
    audit: Audit,
    plan: Plan,
    checks: Mapping[str, CheckKind] | None = None,
    timeout: float | None = None,
    mutants: list[Mutant] | None = None,
    share: bool = True,
) -> Iterator[Event]:
    """Every planned case, device by device. `share=False` computes every truth afresh
    (the results are the same; tests compare the two)."""
    devices: dict[str, dict[str, list[PlannedCase]]] = {}
    for case in plan.cases:
        passes = devices.setdefault(case.device, {})
        passes.setdefault(case.group_dtype or case.dtype, []).append(case)
    for device, passes in devices.items():
        groups = {case: GroupResult.planned(case) for cases in passes.values() for case in cases}
        runners = []
        for dtype, cases in passes.items():
            runnable = [(c, groups[c]) for c in cases if c.skip is None]
            if runnable:
                runners.append(
                    DtypePass(audit, plan, device, dtype, runnable, checks or {}, timeout, mutants)
                )
        for case, group in groups.items():
            if case.skip is not None:
                yield CaseStarted(case, group)
        if runners:
            yield from _device(audit, plan, runners, share)
        for group in groups.values():
            group.done = True
            yield group


def _device(audit: Audit, plan: Plan, passes: list[DtypePass], share: bool) -> Iterator[Event]:
    """The batches of one device, each through every pass (a lender before its borrowers),
    each batch's events in plan order. A pass's cases start (`CaseStarted`) with its first
    results: a run cut short before then reports them as never run, not as empty."""
    sharing = _Sharing(passes) if share else None
    order = sharing.order if sharing is not None else passes
    started: set[int] = set()

    def start(each: DtypePass) -> Iterator[Event]:
        if id(each) not in started:
            started.add(id(each))
            for case, group in each.cases:
                yield CaseStarted(case, group)

    for batch in audit.batches():
        if plan.batches is not None and batch.index not in plan.batches:
            continue
        if sharing is not None:
            sharing.before(batch)
        for each in order:
            each.step(batch)
        for each in passes:
            yield from start(each)
            yield from each.drain()
    for each in passes:
        yield from start(each)
        yield from each.finish()


class _Sharing:
    """Which pass may take its float64 truth from which: a pass whose truth model is a
    float64 copy of weights that equal, bit for bit, the float64 pass's model computes
    the very reference that pass computes, given the same inputs, seed and device."""

    def __init__(self, passes: list[DtypePass]) -> None:
        lender = next((p for p in passes if _can_lend(p)), None)
        self.borrowers = [
            p
            for p in passes
            if lender is not None
            and p.truth_model is not None
            and p.setup_error is None
            and p.dtype in ("float32", "float64")
        ]
        if lender is not None and self.borrowers:
            lender.lends = True
            for p in self.borrowers:
                p.lender = lender
            self.order = [lender, *(p for p in passes if p is not lender)]
        else:
            self.order = passes

    def before(self, batch: Batch) -> None:
        """Decide, for this batch, which borrowers take the lender's reference: their truth
        model's weights and buffers must equal the lender model's now (one read for all),
        and the inputs must cast exactly."""
        if not self.borrowers:
            return
        exact32 = all(
            not t.is_floating_point() or t.dtype in _EXACT_IN_FLOAT32
            for t in batch.tensors.values()
        )
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        spans: list[tuple[int, int]] = []
        for p in self.borrowers:
            assert p.truth_model is not None and p.lender is not None
            mine, theirs = _state(p.truth_model), _state(p.lender.model)
            if mine.keys() != theirs.keys() or not (exact32 or p.dtype == "float64"):
                spans.append((len(pairs), -1))
                continue
            spans.append((len(pairs), len(mine)))
            pairs += [(mine[k], theirs[k]) for k in mine]
        same = same_bits_all(pairs) if pairs else []
        for p, (start, count) in zip(self.borrowers, spans, strict=True):
            p.borrow = count >= 0 and all(same[start : start + count])


def _can_lend(p: DtypePass) -> bool:
    """A float64 pass on a device that computes float64 itself, deterministically."""
    return (
        p.dtype == "float64"
        and p.setup_error is None
        and float64_device(p.device) == p.device
        and (p.device == "cpu" or torch.are_deterministic_algorithms_enabled())
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {f"p {n}": t.detach() for n, t in model.named_parameters()}
    return state | {f"b {n}": t for n, t in model.named_buffers()}
