"""Mutation testing of the audit itself: would this spec's tolerances catch realistic bugs?

Each mutant changes the manual gradient's *output* in a way a real bug would (a wrong
scale, sign, transpose, a lost row, swapped time steps, a missing 1/B or 1/T, one bad
element). The audit compares every mutant with the same reference as the real run; a
mutant is killed when any of its tensors fails on any batch. Survivors name the tolerance
that let them through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit.tolerance import Tol

if TYPE_CHECKING:
    import torch

    from gradaudit.runner import Step
    from gradaudit.types import Batch

Grads = Mapping[str, "torch.Tensor"]
Apply = Callable[[Grads, "Batch"], "dict[str, torch.Tensor] | None"]
SCALES = (1e-1, 1e-2, 1e-3)
_STEP = re.compile(r"^(.*\D)(\d+)$")  # h.3 -> ("h.", "3")


@dataclass(frozen=True)
class Mutant:
    """One output-level mutation of one tensor (or a pair, for swapped steps)."""

    operator: str
    tensor: str
    apply: Apply = field(compare=False, repr=False)
    delta: float | None = None  # the relative size, for scale mutants

    @property
    def name(self) -> str:
        return f"{self.operator}:{self.tensor}"


def _scale(tensor: str, delta: float) -> Apply:
    return lambda g, b: {tensor: g[tensor] * (1 + delta)}


def _sign(tensor: str) -> Apply:
    return lambda g, b: {tensor: -g[tensor]}


def _transpose(tensor: str) -> Apply:
    def apply(g: Grads, b: Batch) -> dict[str, torch.Tensor] | None:
        t = g[tensor]
        if t.dim() != 2 or t.shape[0] != t.shape[1]:
            return None
        return {tensor: t.T.contiguous()}

    return apply


def _zero_row(tensor: str) -> Apply:
    def apply(g: Grads, b: Batch) -> dict[str, torch.Tensor] | None:
        t = g[tensor]
        if t.dim() == 0:
            return None
        rows = t.reshape(t.shape[0], -1).abs().sum(dim=1)
        out = t.clone()
        out[int(rows.argmax())] = 0  # the row that matters most, so the mutant is not a no-op
        return {tensor: out}

    return apply


def _factor(tensor: str, which: str) -> Apply:
    def apply(g: Grads, b: Batch) -> dict[str, torch.Tensor] | None:
        axis = 0 if which == "B" else 1
        shape = next((t.shape for t in b.tensors.values() if t.dim() > axis), None)
        factor = 1 if shape is None else int(shape[axis])
        return None if factor == 1 else {tensor: g[tensor] * factor}

    return apply


def _element(tensor: str) -> Apply:
    def apply(g: Grads, b: Batch) -> dict[str, torch.Tensor] | None:
        t = g[tensor]
        if t.numel() == 0:
            return None
        out = t.clone().reshape(-1)
        i = int(out.abs().argmax())
        out[i] = out[i] * 1.01 if out[i] != 0 else 1e-3
        return {tensor: out.reshape(t.shape)}

    return apply


def _swap(first: str, second: str) -> Apply:
    """Two steps of one sequence swapped; tensors of different shapes (W1, W2 of two
    layers) are not steps of a sequence, so the mutant does not apply."""

    def apply(g: Grads, b: Batch) -> dict[str, torch.Tensor] | None:
        if g[first].shape != g[second].shape:
            return None
        return {first: g[second], second: g[first]}

    return apply


def generic_mutants(tensors: list[str]) -> list[Mutant]:
    """The generic, plugin-independent mutants for these tensor names."""
    mutants = []
    for name in tensors:
        mutants += [Mutant(f"scale({d:g})", name, _scale(name, d), d) for d in SCALES]
        mutants += [
            Mutant("sign", name, _sign(name)),
            Mutant("transpose", name, _transpose(name)),
            Mutant("zero-row", name, _zero_row(name)),
            Mutant("times-B", name, _factor(name, "B")),
            Mutant("times-T", name, _factor(name, "T")),
            Mutant("element", name, _element(name)),
        ]
        match = _STEP.match(name)
        if match:
            following = f"{match[1]}{int(match[2]) + 1}"
            if following in tensors:
                mutants.append(Mutant("swap-steps", f"{name},{following}", _swap(name, following)))
    return mutants


def sensitivity(tol: Tol, scale: float, reference_error: float, batch_scale: float = 0.0) -> float:
    """The smallest relative error this tolerance still catches (see Tol.sensitivity)."""
    return tol.sensitivity(scale, reference_error, batch_scale)


@dataclass
class MutantResult:
    """A mutant over the batches of one (device, dtype)."""

    mutant: Mutant
    applicable: bool = False
    changed: bool = False  # False on every batch: an equivalent mutant, excluded from the score
    killed: bool = False
    killed_by: str = ""  # the first failing tensor and batch
    budget: float = 0.0  # the largest budget any of its checks used

    @property
    def status(self) -> str:
        if not self.applicable:
            return "not-applicable"
        if not self.changed:
            return "equivalent"
        return "killed" if self.killed else "survived"


@dataclass
class MutationReport:
    """Every mutant and each tensor's sensitivity on one (device, dtype)."""

    device: str
    dtype: str
    results: list[MutantResult]
    sensitivity: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, Tol] = field(default_factory=dict)

    def counted(self, min_delta: float = 0.0) -> list[MutantResult]:
        """Mutants that count towards the score (scale mutants only from min_delta up)."""
        return [
            r
            for r in self.results
            if r.status in ("killed", "survived")
            and (r.mutant.delta is None or r.mutant.delta >= min_delta)
        ]

    def score(self, min_delta: float = 0.0) -> float:
        counted = self.counted(min_delta)
        return sum(r.killed for r in counted) / len(counted) if counted else 1.0

    @property
    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if r.status == "survived"]


class MutationRun:
    """Mutation testing on one (device, dtype) pass: every batch, every not-yet-killed
    mutant of the manual gradients, compared with the same reference as the real check."""

    def __init__(self, device: str, dtype: str, mutants: list[Mutant], run: Any) -> None:
        self.run = run  # the runner's pass: its tolerances, buffers and batch scale
        self.report = MutationReport(
            device,
            dtype,
            [MutantResult(m) for m in mutants],
            tolerances={name: s.tol for name, s in run.summaries.items()},
        )

    def batch(self, step: Step) -> None:
        import torch

        from gradaudit.compare import Comparison, GradientMismatch, check_all

        run, report = self.run, self.report
        index = {name: i for i, name in enumerate(step.names)}
        for name, i in index.items():
            base = step.truth[i] if step.truth else step.reference[i]
            scale = float(base.double().abs().max()) if base.numel() else 0.0
            error = step.checks[name].reference_error if name in step.checks else 0.0
            found = run.summaries[name].tol.sensitivity(scale, error, run.batch_scale)
            report.sensitivity[name] = min(report.sensitivity.get(name, float("inf")), found)
        batch = step.batch
        for result in report.results:
            if result.killed:
                continue
            try:
                changed = result.mutant.apply(step.manual, batch)
            except (KeyError, RuntimeError, IndexError):
                changed = None
            if changed is None:
                continue
            result.applicable = True
            for name, mutated in changed.items():
                i = index[name]
                if torch.equal(mutated, step.manual[name]):
                    continue
                result.changed = True
                tol = run.summaries[name].tol
                truth = step.truth[i] if step.truth else None
                try:
                    pair = Comparison(mutated, step.reference[i], tol, truth)
                    outcome = check_all([pair], run.batch_scale, run.scratch)[0]
                except GradientMismatch:
                    continue
                result.budget = max(result.budget, outcome.budget)
                if not outcome.passed and not result.killed:
                    result.killed = True
                    result.killed_by = f"{name} on batch {batch.index} (seed {batch.seed})"
