"""Running an op audit: one group per device x dtype x variant, then the invariance checks.

Per case the candidate and the reference run in the case's dtype on the same rounded
inputs and the same random upstream gradients; where a tolerance is `baseline` the
reference runs again in float64 on float64 copies of those rounded values (the truth).
Without a reference, the truth is central finite differences of the candidate's own
forward in float64, and `baseline` falls back to `allclose` (there is no autograd in the
dtype to take a baseline from).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gradaudit.compare import Comparison, TensorSummary, Tol, check_all
from gradaudit.results import CaseListener, CaseResult, GroupResult
from gradaudit.targets.op.call import (
    OpAudit,
    Run,
    VariantError,
    case_module,
    constants,
    differentiate,
    forward,
    guarded,
    make_inputs,
    output_names,
    wrt_of,
)
from gradaudit.targets.op.errors import OpError
from gradaudit.targets.op.fd import finite_differences
from gradaudit.targets.op.shard import TensorNames
from gradaudit.targets.op.share import Shared
from gradaudit.targets.op.variants import Variant
from gradaudit.tolerance import EPS

if TYPE_CHECKING:
    import torch

    from gradaudit.compare import Check

Estimate = Callable[[], dict[str, float]]  # per tensor, the reference's estimated own error
# (device, dtype, variant index, variant), the variant's drawn inputs, its comparisons,
# their results and the case's batch scale: what mutation testing needs of a case
Compared = Callable[
    [
        tuple[str, str, int, Variant],
        Mapping[str, "torch.Tensor"],
        list[tuple[str, Comparison]],
        list["Check"],
        float,
    ],
    None,
]


def run_case(
    audit: OpAudit,
    where: tuple[str, str, int, Variant],
    drawn: Mapping[str, Mapping[str, torch.Tensor]],
    masters: Mapping[str, tuple[Any, Any]],
    names: TensorNames,
    on_case: CaseListener | None,
    shared: Shared,
    tol: Callable[[str], Tol],
    on_compared: Compared | None = None,
    beat: dict[str, float] | None = None,
) -> GroupResult:
    """One (device, dtype, variant) case: both sides, the truth, every comparison; each
    tensor's result to `on_case`; its tolerances are the plan's (`tol`). `beat`: each
    tensor's worst budget in the variants run so far in this (device, dtype), updated
    here; a passing tensor under it is not located (no worst element: see check_all), as
    a model's batch that is not its tensor's worst is not (None: every tensor located)."""
    device, dtype_name, index, variant = where
    import torch

    start = time.perf_counter()
    check = f"variant:{variant.name}"
    dtype = getattr(torch, dtype_name)

    try:
        items, estimate = _compare(
            audit, device, dtype, variant, drawn[variant.name], masters[variant.name], tol, shared
        )
        ordered = list(items)
        batch_scale = max(
            (
                float(c.truth.abs().max())
                for n, c in ordered
                if c.truth is not None and n.startswith("grad.") and c.truth.numel()
            ),
            default=0.0,
        )
        records = None if beat is None else [beat.get(n) for n, _ in ordered]
        results = check_all([c for _, c in ordered], batch_scale, audit.scratch, records)
        if estimate is not None and not all(r.passed for r in results):
            # float64 has no truth: before a red, allow for the reference's own error,
            # estimated only now (two more reference runs), so passing cases never pay it
            noise = estimate()
            ordered = [(n, dataclasses.replace(c, noise=noise.get(n, 0.0))) for n, c in ordered]
            results = check_all([c for _, c in ordered], batch_scale, audit.scratch, records)
    except VariantError as exc:
        text = f"{exc} (variant {variant.name}, seed {variant.seed}, {device} {dtype_name})"
        summaries = [TensorSummary(n, tol(n)) for n in names.of(check)]
        for s in summaries:
            s.add_error(text)
            if on_case:
                on_case(
                    CaseResult(
                        device,
                        dtype_name,
                        s.tensor,
                        index,
                        variant.seed,
                        error=text,
                        tol=s.tol,
                        kind=check,
                    )
                )
        return _group(device, dtype_name, summaries, check, start)
    if on_compared is not None:
        on_compared(where, drawn[variant.name], ordered, results, batch_scale)
    summaries = []
    for (name, comparison), result in zip(ordered, results, strict=True):
        if beat is not None and result.budget == result.budget:  # not NaN
            beat[name] = max(beat.get(name, result.budget), result.budget)
        summary = TensorSummary(name, comparison.tol)
        summary.add(result, index, variant.seed)
        summaries.append(summary)
        if on_case:
            on_case(
                CaseResult(
                    device,
                    dtype_name,
                    name,
                    index,
                    variant.seed,
                    check=result,
                    tol=comparison.tol,
                    kind=check,
                )
            )
    return _group(device, dtype_name, summaries, check, start)


def _compare(
    audit: OpAudit,
    device: str,
    dtype: torch.dtype,
    variant: Variant,
    drawn: Mapping[str, torch.Tensor],
    masters: tuple[Any, Any],
    tol: Callable[[str], Tol],
    shared: Shared,
) -> tuple[list[tuple[str, Comparison]], Estimate | None]:
    """Run both sides (and the truth) of one case; the comparisons, tensor by tensor, and
    in float64 how to estimate the reference's own error (see _noise) should one fail."""
    import torch

    args = constants(audit.args, variant)
    cand_module = case_module(masters[0], device, dtype)
    params = dict(cand_module.named_parameters()) if cand_module is not None else {}
    inputs = make_inputs(audit, variant, drawn, dtype, device)
    outs = guarded("candidate", lambda: forward(audit.candidate, cand_module, inputs, args))
    grads64 = shared.upstream(outs, variant)
    names = output_names(len(outs))
    if audit.reference is None:
        _check_detached(audit, variant, outs, None, bool(wrt_of(audit, inputs, params)))
        cand = differentiate(Run(outs, wrt_of(audit, inputs, params)), grads64, variant)
        fd_truth = finite_differences(audit, variant, drawn, device, dtype, cand_module, grads64)
        fd = [(n, tol(n)) for n in cand.grads]
        return [(n, Comparison(cand.grads[n], fd_truth[n].to(dtype), t)) for n, t in fd], None
    ref = _side(audit, variant, drawn, device, dtype, masters[1], params, args)
    _check_structure(audit, variant, outs, ref.outputs)
    _check_detached(audit, variant, outs, ref.outputs, bool(ref.grads))
    ref = differentiate(ref, grads64, variant, "reference")
    if dtype == torch.float64:
        shared.offer(device, variant, ref)
    cand = differentiate(Run(outs, wrt_of(audit, inputs, params)), grads64, variant)
    tols = {n: tol(n) for n in [*names, *cand.grads]}
    truth: Run | None = None
    if any(t.needs_truth for t in tols.values()):

        def compute() -> Run:
            run = _side(
                audit, variant, drawn, device, torch.float64, masters[1], params, args, dtype
            )
            return differentiate(run, grads64, variant, "reference", rounded_from=dtype)

        truth = shared.truth(device, variant, str(dtype).removeprefix("torch."), compute)
    estimate: Estimate | None = None
    if dtype == torch.float64 and any(t.takes_estimate for t in tols.values()):
        nudged = {k: _nudged(v, variant.seed) for k, v in drawn.items()}
        sides = [
            lambda: _side(audit, variant, drawn, device, torch.float32, masters[1], params, args),
            lambda: _side(audit, variant, nudged, device, dtype, masters[1], params, args),
        ]
        estimate = functools.partial(_noise, ref, sides, grads64, variant)
    items: list[tuple[str, Comparison]] = []
    for i, name in enumerate(names):
        manual, reference = outs[i].detach(), ref.outputs[i].detach()
        if not manual.is_floating_point():
            items.append((name, Comparison(manual, reference, Tol("exact"))))
            continue
        t = tols[name]
        exact = truth.outputs[i].detach() if truth and t.needs_truth else None
        items.append((name, Comparison(manual, reference, t, exact)))
    for name, grad in cand.grads.items():
        t = tols[name]
        exact = truth.grads[name] if truth and t.needs_truth else None
        items.append((name, Comparison(grad, ref.grads[name], t, exact)))
    return items, estimate


def _noise(
    ref: Run,
    sides: Sequence[Callable[[], Run]],
    grads64: Sequence[torch.Tensor | None],
    variant: Variant,
) -> dict[str, float]:
    """Per tensor, an estimate of the float64 reference's own rounding error, the larger of
    two: the float32 reference's error (max |float32 - float64| over finite entries, on the
    same inputs) times eps64 / eps32, since rounding errors scale with epsilon; and how far
    the float64 reference moves when every input moves by one ULP, its rounding noise made
    visible. A LayerNorm at D = 1 divides its rounding noise by sqrt(eps): torch's float64
    gradient is 4e-14 where the truth is 0, past a fixed ULP floor. A side that fails
    gives no estimate."""
    import torch

    names = output_names(len(ref.outputs))
    found: dict[str, float] = {}
    for k, side in enumerate(sides):
        scale = EPS["float64"] / EPS["float32"] if k == 0 else 1.0
        try:
            run = differentiate(side(), grads64, variant, "reference")
        except Exception:
            continue
        pairs = [
            (names[i], a, b) for i, (a, b) in enumerate(zip(run.outputs, ref.outputs, strict=True))
        ]
        pairs += [(n, run.grads[n], g) for n, g in ref.grads.items() if n in run.grads]
        for name, other, mine in pairs:
            if not (other.is_floating_point() and mine.is_floating_point()):
                continue
            gap = (other.detach().double() - mine.detach()).abs()
            gap = gap[torch.isfinite(gap)]
            if gap.numel():
                found[name] = max(found.get(name, 0.0), float(gap.max()) * scale)
    return found


def _nudged(values: torch.Tensor, seed: int) -> torch.Tensor:
    """Floating values each moved by one ULP up or down (seeded); others as they are."""
    import torch

    if not values.is_floating_point():
        return values
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, values.shape, generator=gen, dtype=values.dtype) * 2 - 1
    return values * (1 + signs * EPS["float64"])


def _side(
    audit: OpAudit,
    variant: Variant,
    drawn: Mapping[str, torch.Tensor],
    device: str,
    dtype: torch.dtype,
    master: Any,
    cand_params: Mapping[str, torch.Tensor],
    args: Mapping[str, Any],
    rounded_from: torch.dtype | None = None,
) -> Run:
    """The reference's forward on fresh inputs (and its own copy of the candidate's
    parameters); `grads` holds the tensors to differentiate."""
    assert audit.reference is not None
    module = case_module(master, device, rounded_from or dtype)
    if module is not None and rounded_from is not None:
        module = module.to(dtype)
    inputs = make_inputs(audit, variant, drawn, dtype, device, rounded_from)
    params = {k: p.detach().to(dtype).clone().requires_grad_() for k, p in cand_params.items()}
    if module is not None:
        params = dict(module.named_parameters())
    callee = audit.reference
    call_params = None if module is not None else params
    outs = guarded("reference", forward, callee, module, inputs, args, call_params)
    return Run(outs, wrt_of(audit, inputs, params))


def _problem(audit: OpAudit, variant: Variant, key: str, text: str) -> Exception:
    """Wrong as declared (base variant): a usage error; on a derived variant: its error."""
    if variant.name == "base":
        return OpError(f"{audit.where(key)}: op.{key}: {text}")
    return VariantError(text)


def _check_structure(
    audit: OpAudit, variant: Variant, outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]
) -> None:
    if len(outs) != len(refs):
        raise _problem(
            audit, variant, "candidate", f"returns {len(outs)} outputs, the reference {len(refs)}"
        )
    for name, o, r in zip(output_names(len(outs)), outs, refs, strict=True):
        if o.shape != r.shape or o.dtype != r.dtype:
            raise _problem(
                audit,
                variant,
                "candidate",
                f"{name} is {tuple(o.shape)} {o.dtype}, the reference's {tuple(r.shape)} {r.dtype}",
            )


def _check_detached(
    audit: OpAudit,
    variant: Variant,
    outs: Sequence[torch.Tensor],
    refs: Sequence[torch.Tensor] | None,
    has_wrt: bool,
) -> None:
    """A floating output with no graph (where the reference's has one) would give zero
    gradients that look like results."""
    if not has_wrt:
        return
    for i, (name, o) in enumerate(zip(output_names(len(outs)), outs, strict=True)):
        differentiable = refs[i].requires_grad if refs is not None else True
        if o.is_floating_point() and not o.requires_grad and differentiable:
            if refs is None and any(x.requires_grad for x in outs):
                continue
            raise _problem(
                audit,
                variant,
                "candidate",
                f"{name} is detached from the inputs: its gradients would be silently zero",
            )


def _group(
    device: str, dtype: str, summaries: list[TensorSummary], check: str, start: float
) -> GroupResult:
    seconds = time.perf_counter() - start
    for s in summaries:
        s.seconds = seconds / max(len(summaries), 1)
    return GroupResult(device, dtype, summaries, seconds=seconds, done=True, check=check)
