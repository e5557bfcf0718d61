"""The full measurement of a batch's comparisons: every diagnostic, down to the worst
element and the count of mismatched elements. compare.check_all runs it for what the screen
(compare.screen) cannot settle on its own, and for callers that want every batch located."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradaudit.results import Check
from gradaudit.tolerance import Tol, is_noise

if TYPE_CHECKING:
    import torch

TRIAGE_MARGIN = 1e-4  # float32 measurements this close to the allowance are redone in float64


class Scratch:
    """Float64 work buffers kept from one batch to the next.

    The comparison's buffers run to megabytes; allocating them afresh for every batch costs
    page faults that took longer than the arithmetic (W.weight's check ran twice as long).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str, str], torch.Tensor] = {}
        self.views: dict[object, Any] = {}  # views of the buffers, kept by their users

    def take(
        self, name: str, rows: int, numel: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """A (rows, numel) tensor with arbitrary contents."""
        import torch

        key = (name, str(device), str(dtype))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < rows * numel:
            buffer = torch.empty(rows * numel, dtype=dtype, device=device)
            self._buffers[key] = buffer
            self.views.clear()  # they may be of the buffer replaced
        return buffer[: rows * numel].view(rows, numel)


@dataclass(slots=True)
class Comparison:
    """One tensor's manual gradient, autograd's, and (baseline mode) the float64 truth.
    (A value; slots, not frozen: one is made per tensor and batch, see Check.)"""

    manual: torch.Tensor
    reference: torch.Tensor
    tol: Tol
    truth: torch.Tensor | None = None
    # Where no truth measures autograd's own error, an estimate of it (0: none): the op
    # audit's float64 cases scale the float32 reference's error by eps64 / eps32.
    noise: float = 0.0


def working_dtype(items: list[Comparison]) -> torch.dtype:
    """float32 where that is enough to decide (see measure), else float64."""
    import torch

    narrow = {torch.float32, torch.float16, torch.bfloat16}
    if any(item.tol.needs_truth or item.manual.dtype not in narrow for item in items):
        return torch.float64
    return torch.float32


def measure(items: list[Comparison], batch_scale: float, scratch: Scratch) -> list[Check]:
    """Float32 first where that is enough to decide, float64 where it is not.

    allclose and exact tolerances on float32 or narrower gradients are measured in float32
    (half the memory traffic of float64). Its rounding moves a ratio by under 1e-6, so a
    tensor whose worst element stays more than TRIAGE_MARGIN under its allowance passes in
    float64 too; any other (and any non-finite norm) is measured again in float64, so
    every verdict and mismatch count is float64's, and the other numbers of a passing
    tensor carry float32's precision (about 1e-6 relative). Baseline compares with the
    float64 truth, so it is float64 throughout.
    """
    import torch

    if working_dtype(items) == torch.float64:
        return _Flat(items, batch_scale, scratch, torch.float64).results()
    checks = _Flat(items, batch_scale, scratch, torch.float32).results()
    again = [
        i
        for i, c in enumerate(checks)
        if not c.budget < 1.0 - TRIAGE_MARGIN or not math.isfinite(c.cosine + c.max_abs)
    ]
    if again:
        redone = _Flat([items[i] for i in again], batch_scale, scratch, torch.float64).results()
        for i, result in zip(again, redone, strict=True):
            checks[i] = result
    return checks


class _Flat:
    """The tensors of one check_all call, end to end in buffers of one dtype.

    `pair` holds manual and reference (the truth, in baseline mode). `rows` holds, per
    element, |diff| divided by [allowed, |m| + |r|, |r|] (the `bounds`), then |diff|, |m|
    and |r|: so one amax per tensor over the first four rows gives the budget, half the
    symmetric relative error, the relative error and the max abs diff, and one norm over
    the last three gives what the cosine needs.
    """

    def __init__(
        self,
        items: list[Comparison],
        batch_scale: float,
        scratch: Scratch,
        dtype: torch.dtype,
    ) -> None:
        import torch

        self.items = items
        self.sizes = [item.manual.numel() for item in items]
        self.offsets = [0, *itertools.accumulate(self.sizes)][:-1]
        numel = sum(self.sizes)
        device = items[0].manual.device
        self.pair = scratch.take("pair", 2, numel, device, dtype)
        torch.cat([item.manual.reshape(-1) for item in items], out=self.pair[0])
        torch.cat([second(item).reshape(-1) for item in items], out=self.pair[1])
        m, r = self.pair.unbind(0)
        self.rows = scratch.take("rows", 6, numel, device, dtype)
        _, _, _, diff, _, magnitude = self.rows.unbind(0)
        torch.sub(m, r, out=diff)
        self.dots = self._dots(items, diff, r) if any(i.tol.systematic for i in items) else None
        self.diff = diff.abs_()
        magnitudes = self.rows.narrow(0, 4, 2)
        torch.abs(self.pair, out=magnitudes)
        self.disagree: torch.Tensor | None = None  # one side NaN/Inf, or different ones
        self.norm_rows = self.rows.narrow(0, 3, 3)  # |diff|, |m|, |r|
        if not math.isfinite(float(diff.max())):
            self.disagree, finite = _nonfinite(m, r, diff, magnitudes)
            self.norm_rows = torch.stack([diff.masked_fill(~finite, 0.0), *magnitudes])
        self.bounds = scratch.take("bounds", 3, numel, device, dtype)
        allowed, both, own = self.bounds.unbind(0)
        own.copy_(magnitude)
        torch.add(magnitudes[0], magnitude, out=both)
        self.batch_scale = batch_scale
        measured = _reference_errors(items, scratch)
        self.reference_errors = [error for error, _ in measured]
        self.reference_cross = [cross for _, cross in measured]
        self.allowed: list[float | None] = []  # per tensor: one number, or None (elementwise)
        tols = {item.tol for item in items}
        if len(tols) == 1 and items[0].tol.elementwise:  # the usual case: one call
            tol = items[0].tol
            torch.mul(magnitude, tol.rtol, out=allowed).add_(tol.atol)
            self.allowed = [None] * len(items)
        else:
            for item, error, row, scale in zip(
                items,
                self.reference_errors,
                allowed.split_with_sizes(self.sizes),
                magnitude.split_with_sizes(self.sizes),
                strict=True,
            ):
                self.allowed.append(_fill_allowed(item.tol, row, scale, error, batch_scale))
        ratios = self.rows.narrow(0, 0, 3)
        torch.div(self.diff, self.bounds, out=ratios).nan_to_num_(nan=0.0, posinf=math.inf)

    def _dots(self, items: list[Comparison], diff: torch.Tensor, r: torch.Tensor) -> list[Any]:
        """Per tensor, <m - r, r> and <r, r> (the systematic-error check's numbers), in the
        two first rows, which hold nothing yet."""
        import torch

        products = self.rows.narrow(0, 0, 2)
        torch.mul(diff, r, out=products[0])
        torch.mul(r, r, out=products[1])
        pieces = products.split_with_sizes(self.sizes, dim=1)
        return torch.stack([p.sum(dim=1) for p in pieces]).tolist()

    def _bias(self, i: int, own: float) -> tuple[float | None, float | None]:
        """(manual's, autograd's) error along the truth, or None where the tensor carries no
        direction: zero by construction, or not resolved by autograd in the tested dtype."""
        if self.dots is None or not self.items[i].tol.systematic:
            return None, None
        cross, square = self.dots[i]
        if not (square > 0.0 and math.isfinite(cross + square)):
            return None, None
        if own <= self.reference_errors[i] or is_noise(own, self.batch_scale):
            return None, None
        return cross / square, self.reference_cross[i] / square

    def results(self) -> list[Check]:
        import torch

        maxima = self.rows.split_with_sizes(self.sizes, dim=1)
        worst = torch.stack([piece.amax(dim=1) for piece in maxima]).tolist()
        budget_row = self.rows[0].split_with_sizes(self.sizes)
        where = torch.stack([row.argmax() for row in budget_row])
        at = where + torch.tensor(self.offsets, device=where.device)
        flat_index = where.tolist()
        values = self.pair[:, at].tolist()
        allowed_at = self.bounds[0, at].tolist()
        pieces = self.norm_rows.split_with_sizes(self.sizes, dim=1)
        norms = torch.stack([torch.linalg.vector_norm(p, dim=1) for p in pieces]).tolist()
        # bitwise equality with autograd, for every tensor in one read (not a torch.equal each)
        unequal = [(item.manual != item.reference).any() for item in self.items]
        differs: list[bool] = torch.stack(unequal).tolist()
        checks = []
        for i, item in enumerate(self.items):
            budget, half_sym, max_rel, max_abs, _, own = worst[i]
            bias, reference_bias = self._bias(i, own)
            mismatched, nonfinite = self._mismatched(i, budget)
            allowed = self.allowed[i]
            checks.append(
                Check(
                    exact=not differs[i],
                    passed=mismatched == 0,
                    max_abs=max_abs,
                    max_rel=max_rel,
                    budget=budget,
                    worst_index=unravel(flat_index[i], tuple(item.manual.shape)),
                    manual_value=values[0][i],
                    reference_value=values[1][i],
                    mismatched=mismatched,
                    nonfinite=nonfinite,
                    numel=self.sizes[i],
                    allowed=allowed_at[i] if allowed is None else allowed,
                    reference_error=self.reference_errors[i],
                    sym_rel=2.0 * half_sym,
                    # no element comparable (all NaN/Inf where the other is not): undefined
                    cosine=math.nan if nonfinite == self.sizes[i] else cosine(*norms[i]),
                    bias=bias,
                    reference_bias=reference_bias,
                    largest=own,
                )
            )
        return checks

    def _mismatched(self, i: int, budget: float) -> tuple[int, int]:
        """Elements beyond the allowed difference, and NaN/Inf disagreements among them.

        diff/allowed rounds monotonically, so a worst ratio under 1 means no diff > allowed.
        """
        if budget < 1.0 and self.disagree is None:
            return 0, 0
        start, size = self.offsets[i], self.sizes[i]
        bad = self.diff.narrow(0, start, size) > self.bounds[0].narrow(0, start, size)
        if self.disagree is None:
            return int(bad.sum()), 0
        disagree = self.disagree.narrow(0, start, size)
        return int((bad | disagree).sum()), int(disagree.sum())


def _fill_allowed(
    tol: Tol, row: torch.Tensor, magnitude: torch.Tensor, error: float, batch_scale: float
) -> float | None:
    """Write one tensor's allowed differences into `row`; return it when it is one number."""
    import torch

    if tol.elementwise:
        torch.mul(magnitude, tol.rtol, out=row).add_(tol.atol)
        return None
    value = tol.allowed(float(magnitude.max()) if magnitude.numel() else 0.0, error, batch_scale)
    row.fill_(value)
    return value


def second(item: Comparison) -> torch.Tensor:
    """What the manual gradient is measured against: the truth in baseline mode."""
    if item.tol.needs_truth and item.truth is not None:
        return item.truth.to(item.manual.device)
    return item.reference


def _reference_errors(items: list[Comparison], scratch: Scratch) -> list[tuple[float, float]]:
    """Per tensor, max |autograd in the tested dtype - float64 truth| over the finite entries
    and <autograd - truth, truth> (0 where the systematic check is off): every baseline
    tensor laid end to end in float64 and read once, not twice per tensor."""
    import torch

    chosen = [i for i, item in enumerate(items) if item.tol.needs_truth]
    found = [(0.0 if item.tol.needs_truth else item.noise, 0.0) for item in items]
    if not chosen:
        return found
    sizes = [items[i].reference.numel() for i in chosen]
    device = items[chosen[0]].reference.device
    rows = scratch.take("gap", 2, sum(sizes), device, torch.float64)
    gap, truth = rows.unbind(0)
    torch.cat([items[i].reference.reshape(-1) for i in chosen], out=gap)
    torch.cat([second(items[i]).reshape(-1) for i in chosen], out=truth)  # the truths
    gap.sub_(truth)
    crosses = [
        torch.dot(g, t)
        for g, t in zip(gap.split_with_sizes(sizes), truth.split_with_sizes(sizes), strict=True)
    ]
    gap.abs_()
    maxima = [g.max() for g in gap.split_with_sizes(sizes)]
    read = torch.stack([*crosses, *maxima]).tolist()
    for k, i in enumerate(chosen):
        cross, error = read[k], read[len(chosen) + k]
        if not math.isfinite(error):
            error = _max_finite(gap.split_with_sizes(sizes)[k])
        found[i] = (error, cross if items[i].tol.systematic else 0.0)
    return found


def largest(items: list[Comparison]) -> float:
    """The largest entry among the references (or truths): the batch's scale."""
    values = [float(second(item).abs().max()) for item in items if item.manual.numel()]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite, default=0.0)


def _nonfinite(
    m: torch.Tensor, r: torch.Tensor, diff: torch.Tensor, magnitudes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite |m - r| in place so that NaN in both, or the same infinity, agrees (0) and
    any other non-finite element differs infinitely; zero `magnitudes` (|m| and |r|)
    wherever either side is not finite. Returns the masks of the disagreements and of the
    elements finite on both sides."""
    import torch

    finite = torch.isfinite(m) & torch.isfinite(r)
    agree = (m.isnan() & r.isnan()) | (torch.isinf(m) & (m == r))
    disagree = ~finite & ~agree
    magnitudes.masked_fill_(~finite, 0.0)
    diff.masked_fill_(agree, 0.0).masked_fill_(disagree, math.inf)
    return disagree, finite


def _max_finite(values: torch.Tensor) -> float:
    finite = values[values.isfinite()]
    return float(finite.max()) if finite.numel() else 0.0


def unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index of element `flat` of a row-major tensor of this shape."""
    index = []
    for size in reversed(shape):
        flat, position = divmod(flat, size)
        index.append(position)
    return tuple(reversed(index))


def cosine(diff_norm: float, m_norm: float, r_norm: float) -> float:
    """Cosine similarity of m and r from the norms of m - r, m and r (law of cosines); NaN
    where a norm overflowed, so that it is measured again in float64 (see measure)."""
    if not math.isfinite(diff_norm + m_norm + r_norm):
        return math.nan
    if m_norm == 0.0 or r_norm == 0.0:
        return 1.0 if m_norm == r_norm else 0.0
    cosine = (m_norm * m_norm + r_norm * r_norm - diff_norm * diff_norm) / (2 * m_norm * r_norm)
    return max(-1.0, min(1.0, cosine))
