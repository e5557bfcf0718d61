"""Mutation testing of the audit itself: would this spec's tolerances catch realistic bugs?

Each mutant changes the manual gradient's *output* in a way a real bug would (a wrong
scale, sign, transpose, a lost row, swapped time steps, a missing 1/B or 1/T, one bad
element). The audit compares every mutant with the same reference as the real run; a
mutant is killed when any of its tensors fails on any batch. Survivors name the tolerance
that let them through; the systematic-error check (gradaudit.systematic) also kills a mutant
whose error, summed over the batches, is consistently along the true gradient.

Truthfulness: swapped steps are only tried between steps of one sequence (a stem with a
separator, like `h.1`, `h.2`, or one with at least three numbered members); a tensor whose
truth is rounding noise on every batch (zero by construction) has no mutants that count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit import systematic
from gradaudit.tolerance import Tol, is_noise

if TYPE_CHECKING:
    import torch

    from gradaudit.targets.model.parts import Step
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
    relative: float | None = None  # the relative change of the largest element, where known

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
        mutants += [Mutant(f"scale({d:g})", name, _scale(name, d), d, d) for d in SCALES]
        mutants += [
            Mutant("sign", name, _sign(name)),
            Mutant("transpose", name, _transpose(name)),
            Mutant("zero-row", name, _zero_row(name)),
            Mutant("times-B", name, _factor(name, "B")),
            Mutant("times-T", name, _factor(name, "T")),
            Mutant("element", name, _element(name), relative=0.01),
        ]
        match = _STEP.match(name)
        if match and _sequence(match[1], tensors):
            following = f"{match[1]}{int(match[2]) + 1}"
            if following in tensors:
                mutants.append(Mutant("swap-steps", f"{name},{following}", _swap(name, following)))
    return mutants


def _sequence(stem: str, tensors: list[str]) -> bool:
    """Whether names `stem<N>` are steps of one sequence, not layers: the stem ends in a
    separator (h.1, h_1, h[1) or it numbers at least three tensors."""
    if stem[-1] in "._[":
        return True
    members = [t for t in tensors if (m := _STEP.match(t)) and m[1] == stem]
    return len(members) >= 3


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
    zero: bool = False  # every tensor it changes is zero by construction
    # per tensor: the systematic-error sums (count, sum, sum of squares) of d over batches
    bias: dict[str, list[float]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.applicable or self.zero:
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
    # the smallest systematic relative error the bias check catches (its bound), per tensor
    bias_sensitivity: dict[str, float] = field(default_factory=dict)
    zero: set[str] = field(default_factory=set)  # tensors zero by construction

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


@dataclass(frozen=True)
class Gate:
    """When `gradaudit mutate` exits 1 on a green audit: a surviving mutant
    (--fail-on-survivor), or a device/dtype whose score is under `min_score` percent
    (--min-score; a device/dtype where no mutant counts is under any)."""

    fail_on_survivor: bool = False
    min_score: float | None = None

    def short(self, report: MutationReport) -> str | None:
        """Why this (device, dtype) misses --min-score, or None."""
        if self.min_score is None:
            return None
        if not report.counted():
            return "no mutant counts (all equivalent or not applicable): nothing was scored"
        score = 100 * report.score()
        if score < self.min_score:
            return f"mutation score {score:.1f}% is under --min-score {self.min_score:g}%"
        return None

    def fails(self, reports: list[MutationReport]) -> bool:
        survived = any(r.survivors for r in reports)
        return (self.fail_on_survivor and survived) or any(self.short(r) for r in reports)


class MutationRun:
    """Mutation testing on one (device, dtype) pass: every batch, every not-yet-killed
    mutant of the manual gradients, compared with the same reference as the real check."""

    def __init__(self, device: str, dtype: str, mutants: list[Mutant], run: Any) -> None:
        self.run = run  # the runner's pass: its tolerances, buffers and batch scale
        self._report = MutationReport(
            device,
            dtype,
            [MutantResult(m) for m in mutants],
            tolerances={name: s.tol for name, s in run.summaries.items()},
        )
        self.noise: dict[str, bool] = {}  # per tensor: rounding noise on every batch so far
        self.finished = False

    @property
    def report(self) -> MutationReport:
        """The report, with the verdicts that need every batch (the systematic-error check,
        zero by construction) settled on first access after the last batch."""
        if not self.finished:
            self.finished = True
            self._finish()
        return self._report

    def _finish(self) -> None:
        report = self._report
        report.zero = {name for name, noise in self.noise.items() if noise}
        for name, summary in self.run.summaries.items():
            if summary.tol.systematic and summary.bias_batches >= 2:
                report.bias_sensitivity[name] = summary.bias_bound
        for result in report.results:
            names = result.mutant.tensor.split(",")
            result.zero = all(name in report.zero for name in names)
            if result.killed or result.zero:
                continue
            for name, (n, total, squares) in result.bias.items():
                eps = report.tolerances[name].eps
                if systematic.verdict(int(n), total, squares, eps) == "fail":
                    bound = systematic.bound(int(n), total, squares, eps)
                    result.killed = True
                    result.killed_by = (
                        f"the systematic-error check on {name}: bias {total / n:.3g} "
                        f"beyond bound {bound:.2g} over {int(n)} batches"
                    )
                    break

    def batch(self, step: Step) -> None:
        import torch

        from gradaudit.compare import Comparison, GradientMismatch, check_all

        run, report = self.run, self._report
        index = {name: i for i, name in enumerate(step.names)}
        bases = [step.truth[i] if step.truth else step.reference[i] for i in index.values()]
        scales = [float(b.double().abs().max()) if b.numel() else 0.0 for b in bases]
        batch_scale = run.batch_scale or max(scales, default=0.0)
        for name, i in index.items():
            scale = scales[i]
            self.noise[name] = self.noise.get(name, True) and is_noise(scale, batch_scale)
            error = step.checks[name].reference_error if name in step.checks else 0.0
            found = run.summaries[name].tol.sensitivity(scale, error, batch_scale)
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
                    outcome = check_all([pair], batch_scale, run.scratch)[0]
                except GradientMismatch:
                    continue
                result.budget = max(result.budget, outcome.budget)
                if tol.systematic:
                    _fold_bias(result, name, outcome.bias, outcome.reference_bias)
                if not outcome.passed and not result.killed:
                    result.killed = True
                    result.killed_by = f"{name} on batch {batch.index} (seed {batch.seed})"


def _fold_bias(
    result: MutantResult, name: str, bias: float | None, reference: float | None
) -> None:
    """Add one batch's d = bias - reference to the mutant's sums for this tensor."""
    if bias is None or reference is None:
        return
    d = bias - reference
    sums = result.bias.setdefault(name, [0.0, 0.0, 0.0])
    sums[0] += 1
    sums[1] += d
    sums[2] += d * d
