"""The tensor names of an op audit's checks, known before they run.

An op audit's samples are its variants: under `--shard K/N` the plan (gradaudit.plan) gives
each variant's cases to one shard and lists them as skipped ("run by shard J/N") in the
others, under the names they have where they run, so that every shard's report lists every
group with the same tensors and `gradaudit merge` folds them together. The invariance
checks (micro-batch, saved tensors) run on the base variant, so with its shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gradaudit.targets.op.call import OpAudit, output_names, reference_outputs

if TYPE_CHECKING:
    import torch


def case_checks(audit: OpAudit) -> list[str]:
    """The checks of one device and dtype, in run order: one per variant, then invariance."""
    checks = [f"variant:{v.name}" for v in audit.variants]
    if audit.checks.micro_batch is not None:
        checks.append("micro_batch")
    if audit.checks.saved_tensors is not None:
        checks.append("saved_tensors")
    return checks


class TensorNames:
    """The tensors of each check, as a case that runs reports them, known before it runs
    (for errors, skips and the other shards' cases): a float64 forward of the candidate on
    the base variant counts its outputs, once, when first asked."""

    def __init__(
        self,
        audit: OpAudit,
        drawn: Mapping[str, torch.Tensor],
        master: Any = None,
        reference_master: Any = None,
    ) -> None:
        self.audit, self.drawn, self.master = audit, drawn, master
        self.reference_master = reference_master
        self._outputs: int | None = None

    def outputs(self) -> int:
        if self._outputs is None:
            self._outputs = self._probe() or 1
        return self._outputs

    def _probe(self) -> int | None:
        """The reference's output count on the base variant: the candidate must match it,
        and the trusted side never crashes the run that plans (a kernel may). Shapes only
        (the meta device) where the reference runs there; float64 on the CPU otherwise."""
        import torch

        if self.audit.reference is None:
            return None
        for device in ("meta", "cpu"):
            try:
                return self._outputs_on(device, torch.float64)
            except Exception:  # the case itself will say why; its names fall back to one
                continue
        return None

    def _outputs_on(self, device: str, dtype: torch.dtype) -> int:
        base, masters = self.audit.variants[0], (self.master, self.reference_master)
        return len(reference_outputs(self.audit, base, self.drawn, masters, device, dtype))

    def params(self) -> list[str]:
        return [n for n, _ in self.master.named_parameters()] if self.master is not None else []

    def grads(self) -> list[str]:
        inputs = [f"grad.{k}" for k, d in self.audit.inputs.items() if d.grad]
        return inputs + [f"grad.{n}" for n in self.params()]

    def of(self, check: str) -> list[str]:
        """The names a `check` case reports (its error and skip cases too)."""
        if check == "saved_tensors":
            before = [f"input.{k}" for k in self.audit.inputs]
            return before + [f"param.{n}" for n in self.params()] + self.grads()
        if check == "micro_batch":
            return output_names(self.outputs()) + self.grads()
        outs = output_names(self.outputs()) if self.audit.reference is not None else []
        return outs + self.grads()
