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
from typing import TYPE_CHECKING

from gradaudit.compare import Tol, _floor_scale

if TYPE_CHECKING:
    import torch

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
        factor = b.inputs.shape[0 if which == "B" else 1]
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
    return lambda g, b: {first: g[second], second: g[first]}


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
    """The smallest relative error (1 + d) * g that this tolerance still catches on a tensor.

    allclose: d > rtol + atol / max|g|; baseline: d > (k * autograd's error + floor) / max|g|.
    """
    if scale == 0.0:
        return float("inf")
    if tol.mode == "exact":
        return tol.eps or 0.0
    if tol.mode == "baseline":
        floor_scale = _floor_scale(scale, reference_error, batch_scale)
        return (tol.k * reference_error + tol.floor_ulps * tol.eps * floor_scale) / scale
    return tol.rtol + tol.atol / scale


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
