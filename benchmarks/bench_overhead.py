"""The overhead rows: `gradaudit run` against the bare loops a careful hand-written test runs.

Both sides run in lockstep, one batch of each in turn, and each batch is timed on its own.
On this shared 2-core machine the speed of a whole 200-batch run drifts by 15% from one run
to the next (measured: coefficient of variation 0.16 over 25 runs of the same bare loop),
more than the 10% targets; pairing batch with batch puts both sides under the same
conditions within milliseconds. Per-batch times are what the issue's targets are about
(marginal cost per batch): set-up on either side (copying the model, planning) is outside
the batches, and so are the first `WARM` batches.

The ratio reported is the median over blocks of `BLOCK` batches of sum(run) / sum(bare),
with the lowest and highest block.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from gradaudit_charrnn.bptt import charrnn_bptt

if TYPE_CHECKING:
    from gradaudit.plan import Plan
    from gradaudit.spec import LoadedSpec
    from gradaudit.targets.model.load import Audit
    from gradaudit.targets.model.target import ModelTarget

WARM = 10  # batches left out at the start of each side (allocations, caches)
BLOCK = 10  # batches per ratio

Ratio = tuple[float, float, float]  # median, lowest and highest of the per-block ratios
Pairs = list[tuple[float, float]]  # per batch: (the runner's seconds, the bare loops')


def bare_steps(audit: Audit, dtype: str, mode: str) -> Iterator[bool]:
    """What a careful hand-written test of one dtype does, a batch per step: forward and
    autograd.grad in the tested dtype and the manual BPTT, then per tensor the rule that
    gradaudit applies in `mode`, written out by hand:

    - allclose: `torch.allclose` with the dtype's default tolerances;
    - auto below float64 (baseline): the float64 truth's forward and backward, then
      |manual - truth| <= k max|autograd - truth| + floor ULPs of max|truth|;
    - auto in float64 (ulps): |manual - autograd| <= eps (floor max|autograd| + batch ULPs of
      the batch's largest entry).

    It leaves out what gradaudit adds to those rules (the systematic-error check, the
    cancellation allowance, the in-place guard, the report)."""
    from gradaudit.tolerance import (
        DEFAULT_BATCH_ULPS,
        DEFAULT_FLOOR_ULPS,
        DEFAULT_K,
        DEFAULT_TOLERANCES,
        EPS,
    )

    model = copy.deepcopy(audit.master).to(getattr(torch, dtype))
    rule = "allclose" if mode == "allclose" else ("ulps" if dtype == "float64" else "baseline")
    truth = copy.deepcopy(model).double() if rule == "baseline" else None
    rtol, atol = DEFAULT_TOLERANCES[dtype]
    floor, eps = DEFAULT_FLOOR_ULPS[dtype], EPS[dtype]
    names = audit.tensor_names
    for batch in audit.batches():
        f = model(batch.inputs, batch.targets)
        tensors = {**f.intermediates, **dict(model.named_parameters())}
        ref = torch.autograd.grad(f.loss, [tensors[n] for n in names])
        with torch.no_grad():
            manual = charrnn_bptt(model, batch, f.detached())
        ok = True
        if truth is not None:
            g = truth(batch.inputs, batch.targets)
            wide = {**g.intermediates, **dict(truth.named_parameters())}
            true = torch.autograd.grad(g.loss, [wide[n] for n in names])
            for n, r, t in zip(names, ref, true, strict=True):
                error = (r.double() - t).abs().amax()
                allowed = DEFAULT_K * error + floor * eps * t.abs().amax()
                ok &= bool(((manual[n].double() - t).abs() <= allowed).all())
        elif rule == "ulps":
            largest = [r.abs().amax() for r in ref]
            batch_scale = torch.stack(largest).amax()
            for n, r, own in zip(names, ref, largest, strict=True):
                allowed = eps * (floor * own + DEFAULT_BATCH_ULPS * batch_scale)
                ok &= bool(((manual[n] - r).abs() <= allowed).all())
        else:
            for n, r in zip(names, ref, strict=True):
                ok &= torch.allclose(manual[n], r, rtol=rtol, atol=atol)
        yield ok


def engine(loaded: LoadedSpec, dtypes: list[str]) -> tuple[ModelTarget, Plan]:
    """The spec's target and its plan for the CPU and `dtypes`, made before anything is timed
    (the target loads the plugins, the data and builds the model; the plan is
    `gradaudit.api.plan_loaded`'s)."""
    from gradaudit.api import plan_loaded
    from gradaudit.targets.model.target import ModelTarget

    return ModelTarget(loaded), plan_loaded(loaded, devices=["cpu"], dtypes=dtypes)


def run_plan_events(target: ModelTarget, plan: Plan, emit: Callable[[list[Any]], None]) -> None:
    """gradaudit's runner loop (the one `gradaudit run`'s executor runs) over the plan in this
    process, every event to `emit`."""
    from gradaudit.run.loop import run_plan
    from gradaudit.targets import Context

    run_plan(target, plan, emit, Context())


def run_lockstep(loaded: LoadedSpec, dtypes: list[str], bare: Callable[[], object]) -> Pairs:
    """gradaudit's runner over the spec's plan with `bare` called between its batches: per
    batch, (the runner's seconds, the bare step's seconds). A batch of the runner is what the
    loop does from its first `At` event for the batch (every dtype's pass steps through it,
    then hands out its events) to its first for the next; the bare step runs, timed on its
    own, in that gap. The last batch's time includes the passes' finish."""
    from gradaudit.run.events import At

    target, plan = engine(loaded, dtypes)
    pairs: Pairs = []
    current: int | None = None
    started = 0.0

    def step_bare(spent: float) -> None:
        start = time.perf_counter()
        bare()
        pairs.append((spent, time.perf_counter() - start))

    def emit(events: list[Any]) -> None:
        nonlocal current, started
        now = time.perf_counter()
        for event in events:
            if isinstance(event, At) and event.sample != current:
                if current is not None:  # the runner is done with the batch before
                    step_bare(now - started)
                current = event.sample
                started = time.perf_counter()

    run_plan_events(target, plan, emit)
    step_bare(time.perf_counter() - started)  # the last batch, with the passes' finish
    return pairs


def lockstep(pairs: Pairs) -> tuple[float, float, Ratio]:
    """Median seconds per batch of each side, and the per-block ratios."""
    warm = min(WARM, len(pairs) // 3)  # short runs (--quick) keep two thirds
    kept = pairs[warm:-1]  # the last run step includes the passes' finish
    block = min(BLOCK, len(kept))
    blocks = [kept[k : k + block] for k in range(0, len(kept) - block + 1, block)]
    ratios = [sum(p[0] for p in b) / sum(p[1] for p in b) for b in blocks]
    return (
        statistics.median(p[0] for p in kept),
        statistics.median(p[1] for p in kept),
        (statistics.median(ratios), min(ratios), max(ratios)),
    )


def overhead(loaded: LoadedSpec, dtypes: list[str], mode: str) -> tuple[float, float, Ratio]:
    """gradaudit's run of `dtypes` against the bare loops of each, a batch at a time."""
    from gradaudit.targets.model.load import Audit

    audit = Audit(loaded)  # the same seeded model and batches as the runner's own
    bares = [bare_steps(audit, dtype, mode) for dtype in dtypes]

    def one_batch_each() -> object:
        return [next(steps) for steps in bares]

    return lockstep(run_lockstep(loaded, dtypes, one_batch_each))
