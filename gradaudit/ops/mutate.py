"""`gradaudit mutate` on op specs: would the op audit catch realistic backward bugs?

The generic mutants of model audits (gradaudit.mutate: scale by 1 + δ, sign, transpose,
largest row zeroed, a factor of B or T, one element × 1.01) change the gradients the
candidate's backward returned — of every input that requires grad and every parameter of
a module candidate — after the engine obtained them and before comparison, on every variant
case of every device and dtype (each variant plays the part of a batch: the mutant is killed
when any variant fails it, and the systematic-error check folds over the variants). The
comparison is the real one: the same reference, truth, tolerance and batch scale.
Outputs and the invariance checks are not mutated (their cases still have to pass).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from gradaudit.compare import Comparison, Scratch, TensorSummary
from gradaudit.errors import EXIT_CHECK_FAILED, EXIT_OK, UsageError
from gradaudit.mutate import Gate, MutationReport, MutationRun, generic_mutants
from gradaudit.ops.variants import Variant

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

        from gradaudit.pass_parts import Step
        from gradaudit.types import Batch, Forward

        device, dtype, index, variant = where
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


def mutate(spec_path: str, options: Any, gate: Gate) -> int:
    """Run the op audit against the generic mutants of the candidate's gradients; report
    (console, JUnit) and exit as model mutate does: 1 when the audit itself is not green,
    or when the gate fails (a survivor under --fail-on-survivor, a score under --min-score)."""
    from gradaudit.commands import set_threads
    from gradaudit.ops.run import groups
    from gradaudit.ops.spec import load_op_spec
    from gradaudit.ops.variants import derive
    from gradaudit.report import mutation
    from gradaudit.results import RunSummary
    from gradaudit.write import check_writable

    start = time.perf_counter()
    if options.sets:  # ignoring it would score another audit than was asked
        raise UsageError("--set does not apply to an op spec yet")
    loaded = load_op_spec(spec_path)
    if options.junit_xml:
        if _same(options.junit_xml, spec_path):
            raise UsageError(f"{options.junit_xml}: is the spec of this run")
        check_writable(options.junit_xml)
    set_threads(options.threads)
    spec, op = loaded.spec, loaded.spec.op
    variants = derive(op.inputs, op.dims, op.variant_options, spec.seed)
    click.echo(
        f"gradaudit mutate: {spec.name} ({loaded.path}): generic mutants of the gradients of "
        f"{op.candidate}, {len(variants)} variants per device/dtype"
    )
    mutation_hook = OpMutation()
    summary = RunSummary()
    for group in groups(loaded, options.devices, options.dtypes, on_compared=mutation_hook):
        summary.add(group)
    why = mutation.not_green(summary)
    if why is not None:
        click.echo(f"gradaudit: {why}: run `gradaudit run {spec_path}` and fix that first")
        if options.junit_xml:
            mutation.write_not_green(options.junit_xml, loaded, why)
        return EXIT_CHECK_FAILED
    reports = mutation_hook.reports()
    if not reports:
        why = "no input or parameter gradient was compared: nothing to mutate"
        click.echo(f"gradaudit: {why}")
        if options.junit_xml:
            mutation.write_not_green(options.junit_xml, loaded, why)
        return EXIT_CHECK_FAILED
    seconds = time.perf_counter() - start
    for line in mutation.finish(
        reports, mutation_hook.tensors, loaded, options.junit_xml, gate, options.color, seconds
    ):
        click.echo(line)
    return EXIT_CHECK_FAILED if gate.fails(reports) else EXIT_OK


def _same(a: str, b: str) -> bool:
    from pathlib import Path

    return Path(a).resolve() == Path(b).resolve()
