"""Opt-in invariance checks of the candidate, on the base variant of each device and dtype.

micro_batch: the batch's outputs and gradients equal its micro-batches' (of unequal sizes,
split along dim 0 of the batch inputs) combined as the declared reduction says: rows
concatenated, parameter and other gradients summed, weighted by rows/N under `mean`.
Catches gradient-accumulation normalisation bugs that no single call shows.

saved_tensors: forward and backward leave the inputs (and parameters) bitwise unchanged,
and a second backward over the retained graph repeats the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from gradaudit.checks.micro_batch import split_sizes
from gradaudit.compare import Comparison, TensorSummary, Tol, check_all
from gradaudit.results import CaseListener, CaseResult, GroupResult
from gradaudit.spec.op import MicroBatch, SavedTensors
from gradaudit.targets.op.call import (
    OpAudit,
    Run,
    VariantError,
    backward,
    case_module,
    constants,
    differentiate,
    forward,
    guarded,
    make_inputs,
    output_names,
    upstream,
    wrt_of,
)
from gradaudit.targets.op.engine import _group
from gradaudit.targets.op.shard import TensorNames
from gradaudit.targets.op.variants import Variant

if TYPE_CHECKING:
    import torch


def invariance_group(
    kind: str,
    audit: OpAudit,
    device: str,
    dtype: str,
    base: Variant,
    drawn: Mapping[str, torch.Tensor],
    masters: tuple[Any, Any],
    on_case: CaseListener | None,
    tol: Callable[[str], Tol],
) -> GroupResult:
    """One invariance check (`micro_batch` or `saved_tensors`) on the base variant; its
    tolerances are the plan's (`tol`)."""
    return _run(kind, audit, device, dtype, base, drawn, masters[0], on_case, tol)


def _run(
    kind: str,
    audit: OpAudit,
    device: str,
    dtype_name: str,
    base: Variant,
    drawn: Mapping[str, torch.Tensor],
    master: Any,
    on_case: CaseListener | None,
    tol: Callable[[str], Tol],
) -> GroupResult:
    import torch

    start = time.perf_counter()
    dtype = getattr(torch, dtype_name)
    items: list[tuple[str, Comparison | str]]
    try:
        if kind == "micro_batch":
            assert audit.checks.micro_batch is not None
            options = audit.checks.micro_batch
            items = list(_micro_batch(audit, device, dtype, base, drawn, master, options, tol))
        else:
            assert audit.checks.saved_tensors is not None
            items = _saved(audit, device, dtype, base, drawn, master, audit.checks.saved_tensors)
    except VariantError as exc:
        text = f"{exc} ({kind.replace('_', ' ')} on variant base, seed {base.seed})"
        items = [(n, text) for n in TensorNames(audit, drawn, master).of(kind)]
    ready = [(n, c) for n, c in items if isinstance(c, Comparison)]
    scale = max(
        (float(c.truth.abs().max()) for _, c in ready if c.truth is not None and c.truth.numel()),
        default=0.0,
    )
    results = dict(
        zip(
            [n for n, _ in ready],
            check_all([c for _, c in ready], scale, audit.scratch),
            strict=True,
        )
    )
    summaries = []
    for name, item in items:
        held = item.tol if isinstance(item, Comparison) else tol(name)
        summary = TensorSummary(name, held)
        if isinstance(item, Comparison):
            summary.add(results[name], 0, base.seed)
        else:
            summary.add_error(item)
        summaries.append(summary)
        if on_case:
            on_case(
                CaseResult(
                    device,
                    dtype_name,
                    name,
                    0,
                    base.seed,
                    check=results.get(name),
                    tol=held,
                    kind=kind,
                    error=None if isinstance(item, Comparison) else item,
                )
            )
    return _group(device, dtype_name, summaries, kind, start)


def _micro_batch(
    audit: OpAudit,
    device: str,
    dtype: torch.dtype,
    base: Variant,
    drawn: Mapping[str, torch.Tensor],
    master: Any,
    options: MicroBatch,
    tol: Callable[[str], Tol],
) -> Iterator[tuple[str, Comparison]]:
    import torch

    if not base.batch_inputs:
        raise VariantError("no batch inputs: the first input has no dimension to split")
    rows = base.shapes[base.batch_inputs[0]][0]
    if rows < options.splits:
        raise VariantError(f"{rows} rows cannot make {options.splits} micro-batches")
    sizes = split_sizes(rows, options.splits)
    full = _candidate(audit, device, dtype, base, drawn, master)
    ups = upstream(full.outputs, base)
    full = differentiate(full, ups, base)
    combined_out: list[list[torch.Tensor]] = [[] for _ in full.outputs]
    combined_grads: dict[str, list[torch.Tensor]] = {k: [] for k in full.grads}
    start = 0
    for size in sizes:
        part = {
            k: v.narrow(0, start, size) if k in base.batch_inputs else v for k, v in drawn.items()
        }
        shapes = {
            k: (size, *s[1:]) if k in base.batch_inputs else s for k, s in base.shapes.items()
        }
        variant = Variant(
            base.name, base.seed, shapes, base.sizes, base.layout, base.scale, base.batch_inputs
        )
        micro = _candidate(audit, device, dtype, variant, part, master)
        if len(micro.outputs) != len(full.outputs):
            raise VariantError("a micro-batch gives another number of outputs than the batch")
        micro_ups = [
            None if g is None else (g.narrow(0, start, size) if options.reduction == "none" else g)
            for g in ups
        ]
        grads = guarded("candidate", backward, micro.outputs, micro_ups, micro.grads, variant)
        weight = size / rows if options.reduction == "mean" else 1.0
        for i, o in enumerate(micro.outputs):
            combined_out[i].append(
                o.detach().double() * (1.0 if options.reduction == "none" else weight)
            )
        for k, g in grads.items():
            combined_grads[k].append(g.double() * weight)
        start += size
    truth = None
    tols = {n: tol(n) for n in [*output_names(len(full.outputs)), *full.grads]}
    if any(t.needs_truth for t in tols.values()):
        truth = _candidate(audit, device, torch.float64, base, drawn, master, rounded_from=dtype)
        truth = differentiate(truth, ups, base, rounded_from=dtype)
    for i, name in enumerate(output_names(len(full.outputs))):
        parts = combined_out[i]
        together = torch.cat(parts) if options.reduction == "none" else sum(parts[1:], parts[0])
        reference = full.outputs[i].detach()
        exact = truth.outputs[i].detach() if truth and tols[name].needs_truth else None
        yield name, Comparison(together.to(reference.dtype), reference, tols[name], exact)
    for name, parts in combined_grads.items():
        batch = name.removeprefix("grad.") in base.batch_inputs
        together = torch.cat(parts) if batch else sum(parts[1:], parts[0])
        reference = full.grads[name]
        exact = truth.grads[name] if truth and tols[name].needs_truth else None
        yield name, Comparison(together.to(reference.dtype), reference, tols[name], exact)


def _candidate(
    audit: OpAudit,
    device: str,
    dtype: torch.dtype,
    variant: Variant,
    drawn: Mapping[str, torch.Tensor],
    master: Any,
    rounded_from: torch.dtype | None = None,
) -> Run:
    """The candidate's forward; `grads` holds the tensors to differentiate (not yet done)."""
    module = case_module(master, device, rounded_from or dtype)
    if module is not None:
        module = module.to(dtype)
    inputs = make_inputs(audit, variant, drawn, dtype, device, rounded_from)
    params = dict(module.named_parameters()) if module is not None else {}
    args = constants(audit.args, variant)
    outs = guarded("candidate", lambda: forward(audit.candidate, module, inputs, args))
    return Run(outs, wrt_of(audit, inputs, params))


def _saved(
    audit: OpAudit,
    device: str,
    dtype: torch.dtype,
    base: Variant,
    drawn: Mapping[str, torch.Tensor],
    master: Any,
    options: SavedTensors,
) -> list[tuple[str, Comparison | str]]:
    module = case_module(master, device, dtype)
    inputs = make_inputs(audit, base, drawn, dtype, device)
    params = dict(module.named_parameters()) if module is not None else {}
    before = {f"input.{k}": v.detach().clone() for k, v in inputs.items()}
    before |= {f"param.{k}": p.detach().clone() for k, p in params.items()}
    args = constants(audit.args, base)
    outs = guarded("candidate", lambda: forward(audit.candidate, module, inputs, args))
    ups = upstream(outs, base)
    wrt = wrt_of(audit, inputs, params)
    first = guarded("candidate", lambda: backward(outs, ups, wrt, base, retain_graph=True))
    first = {k: g.detach().clone() for k, g in first.items()}
    try:
        second: dict[str, torch.Tensor] | str = backward(outs, ups, wrt, base)
    except Exception as exc:
        second = f"a second backward over the retained graph raised {_one(exc)}"
    after = {f"input.{k}": v.detach() for k, v in inputs.items()}
    after |= {f"param.{k}": p.detach() for k, p in params.items()}
    exact = Tol("exact")
    items: list[tuple[str, Comparison | str]] = [
        (k, Comparison(after[k], before[k], exact)) for k in before
    ]
    again = Tol("allclose", options.rtol, options.atol) if options.rtol or options.atol else exact
    for k, g in first.items():
        items.append((k, second if isinstance(second, str) else Comparison(second[k], g, again)))
    return items


def _one(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
