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
allowance) goes to the full measurement, gradaudit.compare.measure.

Verdicts are the full measurement's: the same elementwise steps in the same working dtype,
and for one-number tolerances (exact, baseline, ulps) max|d| / allowed, which is
max(|d| / allowed) because rounding a division by a positive number is monotonic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gradaudit.compare.measure import TRIAGE_MARGIN, Comparison, Scratch, cosine, second, unravel
from gradaudit.compare.syncs import Reads, counting, same_bytes
from gradaudit.results import Check
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
        self.allclose = any(item.tol.elementwise for item in items)
        self.baseline = any(item.tol.needs_truth for item in items)
        self.systematic = any(item.tol.systematic for item in items)
        self.exact_row = exact_row and self.baseline
        names = ["diff"]
        names += ["gap"] if self.baseline else []
        names += ["magnitude"]
        names += ["ratio"] if self.allclose else []
        names += ["vs_reference"] if self.exact_row else []
        self.row = {name: k for k, name in enumerate(names)}  # = its column in the table
        self.signed = self.row["magnitude"]  # the rows before it: second subtracted
        self.reduced = len(names)  # the table's sums follow the maxima (see _elementwise)


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
    table_at = reads.add(_elementwise(items, sizes, scratch, dtype, layout))
    scale_at = reads.add(batch_scale) if isinstance(batch_scale, torch.Tensor) else None
    reads.read()
    table = reads.rows(table_at, len(items))
    exact = _exact_on_cpu(items, table, layout) if on_cpu and layout.baseline else None
    if scale_at is not None:
        batch_scale = reads.value(scale_at)
    assert not isinstance(batch_scale, torch.Tensor)
    if batch_scale is None or (not batch_scale and any(i.tol.needs_batch_scale for i in items)):
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


def _exact_on_cpu(items: list[Comparison], table: list[list[float]], layout: _Layout) -> list[bool]:
    """Equality with autograd, where the manual gradient is measured against the truth.
    Equal values give equal differences to the truth, so a tensor whose max |d| and max
    |autograd - truth| differ is not exact, and costs nothing more; the others are asked
    for the same bytes (memcmp), else equal values (torch.equal: -0.0 equals 0.0)."""
    import torch

    diff, gap = layout.row["diff"], layout.row.get("gap", layout.row["diff"])
    return [
        row[diff] == row[gap]
        and (same_bytes(item.manual, item.reference) or torch.equal(item.manual, item.reference))
        for item, row in zip(items, table, strict=True)
    ]


def _elementwise(
    items: list[Comparison],
    sizes: list[int],
    scratch: Scratch,
    dtype: torch.dtype,
    layout: _Layout,
) -> torch.Tensor:
    """Per tensor, the maxima of its rows and (systematic) the sums that check needs:
    <d, t>, <autograd - t, t> (baseline; else 0) and <t, t>, t the second; one row each.

    Tensor by tensor, in one block of the scratch reused each time: the block stays in the
    CPU's cache while a tensor's steps run over it, and the gradients were just computed.
    (Laying a whole batch out end to end ran through memory, and took a third longer
    inside a run; so did chunks of about 16k elements.) The block's views for each shape
    are kept (`_Views`), and results go straight into the table (`out=`): at gradient
    sizes, making views and joining results cost as much as the arithmetic."""
    import torch

    count = len(layout.row)
    device = items[0].manual.device
    block = scratch.take("screen", count, max(sizes), device, dtype)
    table, maxima, sums = _table(scratch, layout, len(items), device, dtype)
    for i, item in enumerate(items):
        views = _views(scratch, block, layout, tuple(item.manual.shape))
        views.second.copy_(second(item))
        views.diff.copy_(item.manual)
        if views.gap is not None:  # autograd's own error
            views.gap.copy_(item.reference)
        if views.unequal is not None:  # 1 where manual and autograd differ (NaN too)
            views.unequal.copy_(torch.ne(item.manual, item.reference))
        views.subtracted.sub_(views.second_flat)
        if sums:  # <d, t>, [<autograd - t, t>], <t, t>: one mv
            torch.mv(views.signed, views.second_flat, out=sums[i])
        views.signed.abs_()
        if views.ratio is not None:
            _ratio(item, views.ratio, views.rows[0], views.second_flat)
        torch.amax(views.rows, dim=1, out=maxima[i])
    return table


def _table(
    scratch: Scratch, layout: _Layout, count: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The read table, a row per tensor (its maxima, then its sums where the systematic
    check is on; zeros where a sum does not apply), with each row's views of its maxima
    and its sums. Kept in the scratch: indexing a tensor costs 4 us a view, as much as a
    small tensor's arithmetic."""
    import torch

    rows = len(layout.row)
    key = ("table", count, tuple(layout.row), layout.systematic, device, dtype)
    found: tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None
    found = scratch.views.get(key)
    if found is None:
        width = rows + (3 if layout.systematic else 0)
        table = torch.zeros(count, width, dtype=dtype, device=device)
        sums = []
        if layout.systematic:  # without autograd's own error, its sum stays 0
            sums = [row[rows:] if layout.baseline else row[rows::2] for row in table]
        found = scratch.views[key] = (table, [row[:rows] for row in table], sums)
    return found


@dataclass
class _Views:
    """One tensor shape's views of the screen's block (see _Layout for the rows)."""

    rows: torch.Tensor  # (rows, numel)
    diff: torch.Tensor  # shaped like the gradient
    gap: torch.Tensor | None
    second: torch.Tensor
    unequal: torch.Tensor | None  # the vs_reference row
    ratio: torch.Tensor | None  # flat
    second_flat: torch.Tensor
    subtracted: torch.Tensor  # the rows the second is subtracted from
    signed: torch.Tensor  # those and the second: the rows made |x|


def _views(
    scratch: Scratch, block: torch.Tensor, layout: _Layout, shape: tuple[int, ...]
) -> _Views:
    key = (block.data_ptr(), block.dtype, tuple(layout.row), shape)
    found: _Views | None = scratch.views.get(key)  # emptied when the block is replaced
    if found is not None:
        return found
    size = math.prod(shape)
    rows = block.reshape(-1).narrow(0, 0, len(layout.row) * size).view(len(layout.row), size)
    row = layout.row
    found = _Views(
        rows=rows,
        diff=rows[row["diff"]].view(shape),
        gap=rows[row["gap"]].view(shape) if "gap" in row else None,
        second=rows[layout.signed].view(shape),
        unequal=rows[row["vs_reference"]].view(shape) if "vs_reference" in row else None,
        ratio=rows[row["ratio"]] if "ratio" in row else None,
        second_flat=rows[layout.signed],
        subtracted=rows.narrow(0, 0, layout.signed),
        signed=rows.narrow(0, 0, layout.signed + 1),
    )
    scratch.views[key] = found
    return found


def _ratio(
    item: Comparison, out: torch.Tensor, diff: torch.Tensor, magnitude: torch.Tensor
) -> None:
    """|d| / (atol + rtol |autograd|) for an allclose tensor, as the full measurement does
    it; |d| for the others (their allowance is one number, applied after the read)."""
    import torch

    if not item.tol.elementwise:
        out.copy_(diff)
        return
    torch.mul(magnitude, item.tol.rtol, out=out).add_(item.tol.atol)
    torch.div(diff, out, out=out)
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
    baseline = tol.needs_truth
    diff, own = row[layout.row["diff"]], row[layout.row["magnitude"]]
    error = row[layout.row["gap"]] if baseline else item.noise
    cross, reference_cross, square = row[layout.reduced :] or [0.0, 0.0, 0.0]
    needed = (
        (diff, own, error, square, cross, reference_cross) if tol.systematic else (diff, own, error)
    )
    if not all(map(math.isfinite, needed)):
        return None
    allowed = math.nan  # allclose: elementwise, known once described
    if tol.elementwise:
        budget = row[layout.row["ratio"]]
    else:
        allowed = tol.allowed(own, error, batch_scale)
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
        if tol.elementwise:
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
            allowed=allowed_at if items[i].tol.elementwise else check.allowed,
            max_rel=max_rel,
            sym_rel=2.0 * half_sym,
            cosine=value,
            located=True,
        )
