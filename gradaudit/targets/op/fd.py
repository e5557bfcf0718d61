"""The truth for an op with no reference: central differences of the candidate's forward.

In float64, element by element, of sum(<output, upstream gradient>): 2 forward calls per
element, so it is for small shapes (FD_LIMIT elements per case).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gradaudit.targets.op.call import (
    OpAudit,
    VariantError,
    case_module,
    constants,
    forward,
    guarded,
    make_inputs,
    wrt_of,
)
from gradaudit.targets.op.variants import Variant

if TYPE_CHECKING:
    import torch

FD_LIMIT = 4096  # elements whose gradient finite differences may estimate in one case
FD_STEP = 1e-6


def finite_differences(
    audit: OpAudit,
    variant: Variant,
    drawn: Mapping[str, torch.Tensor],
    device: str,
    dtype: torch.dtype,
    cand_module: Any,
    grads64: Sequence[torch.Tensor | None],
) -> dict[str, torch.Tensor]:
    """Central differences of sum(<candidate output, upstream>) in float64, elementwise."""
    import torch

    f64 = torch.float64
    inputs = {
        k: v.detach().clone(memory_format=torch.contiguous_format)
        for k, v in make_inputs(audit, variant, drawn, f64, device, rounded_from=dtype).items()
    }
    module = None if cand_module is None else case_module(cand_module, device, f64)
    params = dict(module.named_parameters()) if module is not None else {}
    targets = {k: v for k, v in wrt_of(audit, inputs, params).items()}
    count = sum(t.numel() for t in targets.values())
    if count > FD_LIMIT:
        raise VariantError(
            f"finite differences would need {2 * count} forward calls "
            f"(limit {2 * FD_LIMIT}): give a reference or smaller shapes"
        )
    args = constants(audit.args, variant)
    ups: list[torch.Tensor | None] = [None if g is None else g.to(dtype).to(f64) for g in grads64]

    def value() -> float:
        outs = forward(audit.candidate, module, inputs, args)
        total = torch.zeros((), dtype=f64, device=device)
        for o, g in zip(outs, ups, strict=True):
            if g is not None:
                total += (o.to(f64) * g.expand(o.shape).to(device)).sum()
        return float(total)

    truth = {}
    with torch.no_grad():
        for name, t in targets.items():
            flat = t.view(-1)
            grad = torch.empty(t.numel(), dtype=f64)
            for j in range(t.numel()):
                x = float(flat[j])
                step = FD_STEP * max(1.0, abs(x))
                flat[j] = x + step
                up = guarded("candidate", value)
                flat[j] = x - step
                down = guarded("candidate", value)
                flat[j] = x
                grad[j] = (up - down) / (2 * step)
            truth[name] = grad.view(t.shape).to(device)
    return truth
