"""`gradaudit mutate` on op specs: would the op audit catch realistic backward bugs?

The generic mutants of model audits (gradaudit.mutate: scale by 1 + δ, sign, transpose,
largest row zeroed, a factor of B or T, one element × 1.01) change the gradients the
candidate's backward returned — of every input that requires grad and every parameter of
a module candidate — after the engine obtained them and before comparison, on every variant
case of every device and dtype (each variant plays the part of a batch: the mutant is killed
when any variant fails it, and the systematic-error check folds over the variants). The
comparison is the real one: the same reference, truth, tolerance and batch scale.
Outputs, the invariance checks and the `zeros` variant (finiteness only) are not mutated
(their cases still have to pass).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gradaudit.compare import Comparison, Scratch, TensorSummary
from gradaudit.mutate import MutationReport, MutationRun, generic_mutants
from gradaudit.targets.op.variants import Variant

if TYPE_CHECKING:
    import torch

    from gradaudit.compare import Check


_BATCH = re.compile(r"on batch (\d+) \(seed")


class _Pass:
    """What MutationRun reads of a model audit's pass: each tensor's summary (its tolerance,
    and the systematic-error sums over the variants so far), the batch scale, buffers."""

    def __init__(self, summaries: dict[str, TensorSummary], scratch: Scratch) -> None:
        self.summaries = summaries
        self.batch_scale = 0.0
        self.scratch = scratch


class OpMutation:
    """The engine's `on_compared` hook: every variant case's gradient comparisons, mutated."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], MutationRun] = {}
        self.scratch = Scratch()
        self.tensors: list[str] = []
        self.variants: dict[int, str] = {}  # index -> name

    def __call__(
        self,
        where: tuple[str, str, int, Variant],
        drawn: Mapping[str, torch.Tensor],
        items: list[tuple[str, Comparison]],
        results: list[Check],
        batch_scale: float,
    ) -> None:
        import torch

        from gradaudit.targets.model.parts import Step
        from gradaudit.types import Batch, Forward

        device, dtype, index, variant = where
        if variant.zeros:  # compared for finiteness only: a scaled gradient stays finite
            return
        self.variants[index] = variant.name
        grads = [(n, c, r) for (n, c), r in zip(items, results, strict=True) if _grad(n)]
        if not grads:
            return
        run = self.runs.get((device, dtype))
        if run is None:
            names = [n for n, _, _ in grads]
            self.tensors = self.tensors or names
            summaries = {n: TensorSummary(n, c.tol) for n, c, _ in grads}
            run = MutationRun(device, dtype, generic_mutants(names), _Pass(summaries, self.scratch))
            self.runs[(device, dtype)] = run
        state: _Pass = run.run
        state.batch_scale = batch_scale
        for name, _, result in grads:
            state.summaries[name].add(result, index, variant.seed)
        truths = [c.truth for _, c, _ in grads]
        truth = (
            None
            if all(t is None for t in truths)
            else [c.reference if c.truth is None else c.truth for _, c, _ in grads]
        )
        step = Step(
            batch=Batch(dict(drawn), index, variant.seed),
            forward=Forward(torch.zeros(())),  # not read by mutation testing
            manual={n: c.manual for n, c, _ in grads},
            names=[n for n, _, _ in grads],
            reference=[c.reference for _, c, _ in grads],
            truth=truth,
            checks={n: r for n, _, r in grads},
        )
        run.batch(step)

    def reports(self) -> list[MutationReport]:
        """Each device and dtype's report; a kill names its variant (the model's batch)."""
        reports = [run.report for run in self.runs.values()]
        for report in reports:
            for result in report.results:
                match = _BATCH.search(result.killed_by)
                if match and int(match[1]) in self.variants:
                    name = self.variants[int(match[1])]
                    result.killed_by = _BATCH.sub(f"on variant {name} (seed", result.killed_by)
        return reports


def _grad(name: str) -> bool:
    return name.startswith("grad.")
