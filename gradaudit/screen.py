"""The screen: a batch's comparisons settled in one pass over their elements and one read.

Most tensors of most batches pass and are not their tensor's worst batch so far. Like
torch.testing.assert_close, which explains only a failure, the screen computes for them only
what a verdict and the running folds need: the budget, the max abs difference, exactness,
the largest entry (the batch's scale, whether the gradient is ever nonzero), autograd's own
error and the systematic check's dot products. It does so for all of a batch's tensors at
once and reads the results in one transfer. The rest is found only where a report shows it:
a passing tensor that beats its worst budget so far is described in full (worst element,
relative and symmetric errors, cosine; one more read for all of them), and anything the
screen cannot settle (a failure, NaN or Inf, a float32 ratio within TRIAGE_MARGIN of its
allowance) goes to the full measurement, gradaudit.measure.

Verdicts are the full measurement's: the same elementwise steps in the same working dtype,
and for one-number tolerances (exact, baseline, ulps) max|d| / allowed, which is
max(|d| / allowed) because rounding a division by a positive number is monotonic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gradaudit.measure import TRIAGE_MARGIN, Comparison, Scratch, cosine, second, unravel
from gradaudit.summary import Check
from gradaudit.syncs import Reads, counting, same_bytes
from gradaudit.tolerance import is_noise

if TYPE_CHECKING:
    import torch


@dataclass
class Screened:
    """Per item, its Check, or None where the full measurement must decide; and the batch's
    scale (its largest truth entry) as read."""

    checks: list[Check | None]
    batch_scale: float


class _Layout:
    """The rows of the screen's one buffer, in this order: d = manual - second (autograd, or
    the truth), [autograd - truth: baseline], |second|, [the allclose ratio], [manual !=
    autograd: baseline, off the CPU]; one amax per tensor over all of them gives the read
    table's columns. The second is laid out signed in its row first: the differences and
    the systematic check's dot products use it before it becomes |second|."""

    def __init__(self, items: list[Comparison], exact_row: bool) -> None:
        self.allclose = any(item.tol.mode == "allclose" for item in items)
        self.baseline = any(item.tol.mode == "baseline" for item in items)
        self.systematic = any(item.tol.systematic for item in items)
        self.exact_row = exact_row and self.baseline
        names = ["diff"]
        names += ["gap"] if self.baseline else []
        names += ["magnitude"]
        names += ["ratio"] if self.allclose else []
        names += ["vs_reference"] if self.exact_row else []
        self.row = {name: k for k, name in enumerate(names)}  # = its column in the table
        self.signed = self.row["magnitude"]  # the rows before it: second subtracted
        self.reduced = len(names)  # the table's sums follow the maxima


def screen(
    items: list[Comparison],
    batch_scale: float | torch.Tensor | None,
    scratch: Scratch,
    dtype: torch.dtype,
    beat: Sequence[float | None],
    reads: Reads | None = None,
) -> Screened:
    """Settle what can be settled; `beat[i]` is item i's worst budget so far (None: none
    yet), which a passing batch must exceed to be described in full. `reads` may hold other
    values to read in the same transfer (it is read here)."""
    import torch

    reads = reads if reads is not None else Reads()
    sizes = [item.manual.numel() for item in items]
    on_cpu = items[0].manual.device.type == "cpu" and not counting()
    layout = _Layout(items, exact_row=not on_cpu)
    rows, sums = _elementwise(items, sizes, scratch, dtype, layout)
    maxima = torch.stack([p.amax(dim=1) for p in rows.split_with_sizes(sizes, dim=1)])
    table_at = reads.add(torch.cat([maxima, sums], dim=1) if sums is not None else maxima)
    scale_at = reads.add(batch_scale) if isinstance(batch_scale, torch.Tensor) else None
    exact = _exact_on_cpu(items) if on_cpu and layout.baseline else None
    reads.read()
    table = reads.rows(table_at, len(items))
    if scale_at is not None:
        batch_scale = reads.value(scale_at)
    assert not isinstance(batch_scale, torch.Tensor)
    if batch_scale is None or (not batch_scale and any(i.tol.mode == "ulps" for i in items)):
        own = [row[layout.row["magnitude"]] for row in table]
        batch_scale = max((v for v in own if math.isfinite(v)), default=0.0)
    narrow = dtype != torch.float64
    checks = [
        _settle(item, row, layout, size, batch_scale, narrow, None if exact is None else exact[i])
        for i, (item, row, size) in enumerate(zip(items, table, sizes, strict=True))
    ]
    wanted = [
        i
        for i, (check, record) in enumerate(zip(checks, beat, strict=True))
        if check is not None and (record is None or check.budget > record)
    ]
    if wanted:
        _describe(items, checks, wanted, dtype)
    return Screened(checks, batch_scale)


def _exact_on_cpu(items: list[Comparison]) -> list[bool]:
    """Equality with autograd, where the manual gradient is measured against the truth:
    the same bytes (memcmp), else equal values (torch.equal; -0.0 equals 0.0). Both stop
    at the first difference and read nothing from a device."""
    import torch

    return [
        same_bytes(item.manual, item.reference) or torch.equal(item.manual, item.reference)
        for item in items
    ]


def _elementwise(
    items: list[Comparison],
    sizes: list[int],
    scratch: Scratch,
    dtype: torch.dtype,
    layout: _Layout,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fill the rows; returns them and per tensor the sums the systematic check needs:
    <t, t>, <d, t> and (baseline) <autograd - t, t>, t the second. Every input is laid out
    end to end in the working dtype (cast, then subtracted: as the full measurement does),
    so each step is one call over all tensors, not one per tensor."""
    import torch

    numel = sum(sizes)
    device = items[0].manual.device
    rows = scratch.take("screen", len(layout.row), numel, device, dtype)
    row = layout.row
    signed = rows.narrow(0, 0, layout.signed)  # d [and autograd - t], then - t
    second_row = rows[layout.signed]
    torch.cat([second(item).reshape(-1) for item in items], out=second_row)
    torch.cat([item.manual.reshape(-1) for item in items], out=rows[row["diff"]])
    if layout.baseline:  # autograd's own error
        torch.cat([item.reference.reshape(-1) for item in items], out=rows[row["gap"]])
        if layout.exact_row:  # 1 where manual and autograd differ (NaN differs from itself)
            for item, out in zip(
                items, rows[row["vs_reference"]].split_with_sizes(sizes), strict=True
            ):
                out.copy_(torch.ne(item.manual.reshape(-1), item.reference.reshape(-1)))
    signed.sub_(second_row)
    sums = None
    if layout.systematic:  # <d, t>, [<autograd - t, t>], <t, t> per tensor: one mv each
        with_second = rows.narrow(0, 0, layout.signed + 1)
        found = [
            torch.mv(piece, t)
            for piece, t in zip(
                with_second.split_with_sizes(sizes, dim=1),
                second_row.split_with_sizes(sizes),
                strict=True,
            )
        ]
        sums = torch.stack(found)
        # the table's order: <t, t>, <d, t>, <autograd - t, t> (0 without a baseline)
        square = sums[:, -1:]
        cross = (
            sums[:, :-1]
            if layout.baseline
            else torch.cat([sums[:, :1], torch.zeros_like(square)], 1)
        )
        sums = torch.cat([square, cross], dim=1)
    rows.narrow(0, 0, layout.signed + 1).abs_()
    if layout.allclose:
        _ratios(items, sizes, rows[row["ratio"]], rows[row["diff"]], second_row)
    return rows, sums


def _ratios(
    items: list[Comparison],
    sizes: list[int],
    ratio: torch.Tensor,
    diff: torch.Tensor,
    magnitude: torch.Tensor,
) -> None:
    """|d| / (atol + rtol |autograd|) for allclose tensors, as the full measurement does it;
    |d| elsewhere (their allowance is one number, applied after the read)."""
    import torch

    tols = {item.tol for item in items}
    if len(tols) == 1:
        spans = [(items[0], ratio, diff, magnitude)]
    else:
        spans = list(
            zip(
                items,
                ratio.split_with_sizes(sizes),
                diff.split_with_sizes(sizes),
                magnitude.split_with_sizes(sizes),
                strict=True,
            )
        )
    for item, out, d, r in spans:
        if item.tol.mode != "allclose":
            out.copy_(d)
            continue
        torch.mul(r, item.tol.rtol, out=out).add_(item.tol.atol)
        torch.div(d, out, out=out)
        if not item.tol.atol > 0.0:
            out.nan_to_num_(nan=0.0, posinf=math.inf)


def _settle(
    item: Comparison,
    row: list[float],
    layout: _Layout,
    size: int,
    batch_scale: float,
    narrow: bool,
    exact_on_cpu: bool | None,
) -> Check | None:
    """The Check of a clean pass, not described (see module doc); None for anything the
    full measurement must see."""
    tol = item.tol
    baseline = tol.mode == "baseline"
    diff, own = row[layout.row["diff"]], row[layout.row["magnitude"]]
    error = row[layout.row["gap"]] if baseline else 0.0
    square, cross, reference_cross = row[layout.reduced :] or [0.0, 0.0, 0.0]
    needed = [diff, own, error, *((square, cross, reference_cross) if tol.systematic else ())]
    if not all(math.isfinite(v) for v in needed):
        return None
    allowed = math.nan  # allclose: elementwise, known once described
    if tol.mode == "allclose":
        budget = row[layout.row["ratio"]]
    else:
        allowed = 0.0 if tol.mode == "exact" else tol.allowed(own, error, batch_scale)
        budget = diff / allowed if allowed > 0.0 else (0.0 if diff == 0.0 else math.inf)
    if not budget < (1.0 - TRIAGE_MARGIN if narrow else 1.0):
        return None
    bias, reference_bias = None, None
    if tol.systematic and square > 0.0 and not (own <= error or is_noise(own, batch_scale)):
        bias, reference_bias = cross / square, (reference_cross if baseline else 0.0) / square
    if not baseline:
        exact = diff == 0.0
    elif exact_on_cpu is not None:
        exact = exact_on_cpu
    else:
        exact = row[layout.row["vs_reference"]] == 0.0
    return Check(
        exact=exact,
        passed=True,
        max_abs=diff,
        max_rel=math.nan,
        budget=budget,
        worst_index=(),
        manual_value=math.nan,
        reference_value=math.nan,
        mismatched=0,
        nonfinite=0,
        numel=size,
        allowed=allowed,
        reference_error=error,
        sym_rel=math.nan,
        cosine=math.nan,
        bias=bias,
        reference_bias=reference_bias,
        located=False,
        largest=own,
    )


def _describe(
    items: list[Comparison],
    checks: list[Check | None],
    wanted: list[int],
    dtype: torch.dtype,
) -> None:
    """Complete the Checks of passing tensors that are a new worst batch: worst element and
    values, relative and symmetric errors, cosine, taken as the full measurement takes them
    (same dtype, same steps), and read together. A cosine whose norms overflowed leaves the
    tensor to the full measurement (float64)."""
    import torch

    reads = Reads()
    found = []
    for i in wanted:
        tol = items[i].tol
        m = items[i].manual.reshape(-1).to(dtype)
        t = second(items[i]).reshape(-1).to(dtype)
        d, s = (m - t).abs_(), t.abs()
        allowed = s * tol.rtol + tol.atol
        if tol.mode == "allclose":
            ratio = torch.div(d, allowed)
            where = (ratio if tol.atol > 0.0 else ratio.nan_to_num_(nan=0.0)).argmax()
        else:
            where = d.argmax()
        rel = torch.div(d, s).nan_to_num_(nan=0.0, posinf=math.inf).amax()
        half = torch.div(d, m.abs().add_(s)).nan_to_num_(nan=0.0, posinf=math.inf).amax()
        norms = torch.stack([torch.linalg.vector_norm(v) for v in (d, m, t)])
        values = [where, m[where], t[where], allowed[where], rel, half, norms]
        found.append(reads.add(torch.cat([v.reshape(-1).double() for v in values])))
    reads.read()
    for i, handle in zip(wanted, found, strict=True):
        got = reads.row(handle)
        index, manual, reference, allowed_at, max_rel, half_sym = got[:6]
        check = checks[i]
        assert check is not None
        value = cosine(*got[6:9])
        if not math.isfinite(value):
            checks[i] = None
            continue
        checks[i] = replace(
            check,
            worst_index=unravel(int(index), tuple(items[i].manual.shape)),
            manual_value=manual,
            reference_value=reference,
            allowed=allowed_at if items[i].tol.mode == "allclose" else check.allowed,
            max_rel=max_rel,
            sym_rel=2.0 * half_sym,
            cosine=value,
            located=True,
        )
