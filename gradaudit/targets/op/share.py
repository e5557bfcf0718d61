"""What the cases of one variant compute identically across dtypes, computed once.

A run's floating inputs and upstream gradients are rounded to its narrowest dtype, so every
dtype of the run holds them exactly. The reference run in float64 on those values is then
the float64 truth of every case of the variant, and the float64 case's own reference run
is that truth: one reference run in float64 per variant instead of one per dtype. Where a
value is not exact in a dtype (a bfloat16 value below float16's normal range), that dtype
computes its own truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from gradaudit.targets.op.call import OpAudit, Run, upstream
from gradaudit.targets.op.variants import Variant

if TYPE_CHECKING:
    import torch

MANTISSA = {"bfloat16": 8, "float16": 11, "float32": 24, "float64": 53}


class Shared:
    def __init__(self, audit: OpAudit, dtypes: Sequence[str]) -> None:
        import torch

        sharing = len(dtypes) > 1 and audit.candidate.module_class is None
        narrowest = min(dtypes, key=MANTISSA.__getitem__) if sharing else None
        self.round_to = getattr(torch, narrowest) if narrowest else None
        self.floats = [k for k, d in audit.inputs.items() if d.dtype == "float"]
        self.exact: dict[str, set[str]] = {}  # variant -> dtypes that hold its values exactly
        self.dtypes = list(dtypes)
        self.ups: dict[str, list[torch.Tensor | None]] = {}
        self.truths: dict[tuple[str, str], Run] = {}

    def inputs(
        self, variant: Variant, drawn: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The drawn inputs, floats rounded to the run's narrowest dtype."""
        if self.round_to is None:
            return dict(drawn)
        out = dict(drawn)
        for k in self.floats:
            out[k] = drawn[k].to(self.round_to).double()
        self.exact[variant.name] = self._exact([out[k] for k in self.floats])
        return out

    def upstream(self, outs: Sequence[torch.Tensor], variant: Variant) -> list[torch.Tensor | None]:
        """The variant's upstream gradients: drawn once, rounded like the inputs."""
        if variant.name not in self.ups:
            grads = upstream(outs, variant)
            if self.round_to is not None:
                grads = [None if g is None else g.to(self.round_to).double() for g in grads]
                present = [g for g in grads if g is not None]
                self.exact[variant.name] &= self._exact(present)
            self.ups[variant.name] = grads
        return self.ups[variant.name]

    def truth(self, device: str, variant: Variant, dtype: str, compute: Callable[[], Run]) -> Run:
        """The float64 reference run for this case; shared where the values are exact."""
        key = (device, variant.name)
        if dtype not in self.exact.get(variant.name, set()):
            return compute()
        if key not in self.truths:
            self.offer(device, variant, compute())
        return self.truths[key]

    def offer(self, device: str, variant: Variant, run: Run) -> None:
        """The float64 case's reference run: the truth of the variant's other cases."""
        if self.round_to is not None:  # float64 holds every rounded value exactly
            self.truths[(device, variant.name)] = Run([o.detach() for o in run.outputs], run.grads)

    def _exact(self, values: Sequence[torch.Tensor]) -> set[str]:
        import torch

        return {
            name
            for name in self.dtypes
            if all(torch.equal(v.to(getattr(torch, name)).double(), v) for v in values)
        }
