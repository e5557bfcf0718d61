"""The screen for many batches at once: comparisons whose tensors hold one batch per row.

A distributed rank settles a chunk of batches together (gradaudit.targets.sharded.case), and every
batch has the same tensors in the same shapes. Screening them batch by batch ran each of the
screen's elementwise steps once per tensor and batch, a few microseconds of dispatch each on
gradients of a few hundred elements; stacked, each step runs once per tensor for the chunk.
The verdicts are the screen's (gradaudit.compare.screen): the same elementwise steps in the same
working dtype, reduced per row instead of per tensor, and the same `_settle` and `_describe`
turning each row's numbers into its Check. What the screen cannot settle goes, row by row, to
the full measurement, as in `check_all`.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from gradaudit.compare import comparable
from gradaudit.compare.measure import Comparison, Scratch, measure, second, working_dtype
from gradaudit.compare.screen import _describe, _Layout, _ratio, _settle
from gradaudit.compare.syncs import counting, same_bytes
from gradaudit.results import Check

if TYPE_CHECKING:
    import torch


def row_of(item: Comparison, row: int) -> Comparison:
    """Row `row` of a stacked comparison: one batch's tensors."""
    truth = None if item.truth is None else item.truth[row]
    return Comparison(item.manual[row], item.reference[row], item.tol, truth)


def check_rows(
    items: list[Comparison],
    scales: Sequence[float],
    scratch: Scratch,
    beat: Sequence[float | None],
    skip: Sequence[Container[int]] = (),
) -> list[list[Check]]:
    """Per item, per row, what `check_all` gives for that row's batch when called batch after
    batch: every item's tensors are (rows, *shape), row b being batch b. `scales[b]` is
    batch b's scale as `check_all` takes it (0.0: in ulps mode, the largest reference entry
    among the row's items); `beat` is each item's worst budget before these batches, which
    a row must exceed to be described in full, and which each row's budget then raises.
    `skip[i]` holds item i's rows that need no verdict (their caller has a problem to report
    for them): they are neither described nor counted in the worst."""
    import torch

    comparable(items)

    rows = items[0].manual.shape[0]
    sized = [i for i, item in enumerate(items) if math.prod(item.manual.shape[1:])]
    if len(sized) < len(items):  # as check_all: a tensor without entries passes
        empty = Check(True, True, 0.0, 0.0, 0.0, (), 0.0, 0.0, 0, 0, 0)
        by_item = dict.fromkeys(range(len(items)), [empty] * rows)
        if sized:
            pick = [skip[i] for i in sized] if skip else ()
            checked = check_rows(
                [items[i] for i in sized], scales, scratch, [beat[i] for i in sized], pick
            )
            by_item.update(zip(sized, checked, strict=True))
        return [by_item[i] for i in range(len(items))]
    dtype = working_dtype(items)
    on_cpu = items[0].manual.device.type == "cpu" and not counting()
    layout = _Layout(items, exact_row=not on_cpu)
    table = _reduce(items, rows, scratch, dtype, layout).tolist()  # the one read
    magnitude = layout.row["magnitude"]
    ulps = any(item.tol.needs_batch_scale for item in items)
    narrow = dtype != torch.float64
    found: list[list[Check | None]] = [[] for _ in items]
    worst = list(beat)
    for b in range(rows):
        scale = scales[b]
        if not scale and ulps:
            own = (table[i][magnitude][b] for i in range(len(items)))
            scale = max((v for v in own if math.isfinite(v)), default=0.0)
        for i, item in enumerate(items):
            values = [column[b] for column in table[i]]
            exact = None
            if on_cpu and layout.baseline:
                exact = _exact_on_cpu(item, b, values, layout)
            size = math.prod(item.manual.shape[1:])
            found[i].append(_settle(item, values, layout, size, scale, narrow, exact))
        skipped = {i for i in range(len(items)) if i < len(skip) and b in skip[i]}
        _finish(items, found, b, scale, scratch, dtype, worst, skipped)
    return [[check for check in row if check is not None] for row in found]


def _finish(
    items: list[Comparison],
    found: list[list[Check | None]],
    b: int,
    scale: float,
    scratch: Scratch,
    dtype: torch.dtype,
    worst: list[float | None],
    skipped: set[int],
) -> None:
    """Row b: describe the passes that beat their worst; measure what the screen left; raise
    the worst to row b's."""
    wanted = []
    for i, checks in enumerate(found):
        if i in skipped:
            continue
        check, record = checks[b], worst[i]
        if check is not None and (record is None or check.budget > record):
            wanted.append(i)
    if wanted:
        batch = [row_of(items[i], b) for i in wanted]
        checks = [found[i][b] for i in wanted]
        _describe(batch, checks, list(range(len(wanted))), dtype)
        for i, check in zip(wanted, checks, strict=True):
            found[i][b] = check
    left = [i for i, checks in enumerate(found) if checks[b] is None]
    if left:
        measured = measure([row_of(items[i], b) for i in left], scale, scratch)
        for i, check in zip(left, measured, strict=True):
            found[i][b] = check
    for i, checks in enumerate(found):  # the next row is described if it beats this one
        if i in skipped:
            continue
        budget = checks[b].budget  # type: ignore[union-attr]
        record = worst[i]
        if record is None or budget > record:
            worst[i] = budget


def _exact_on_cpu(item: Comparison, b: int, values: list[float], layout: _Layout) -> bool:
    """As the screen's: equal differences to the truth, then the same bytes or values."""
    import torch

    if values[layout.row["diff"]] != values[layout.row["gap"]]:
        return False
    manual, reference = item.manual[b], item.reference[b]
    return same_bytes(manual, reference) or torch.equal(manual, reference)


def _reduce(
    items: list[Comparison], rows: int, scratch: Scratch, dtype: torch.dtype, layout: _Layout
) -> torch.Tensor:
    """(items, columns, rows): per item and row, the screen's maxima then its sums."""
    import torch

    count, device = len(layout.row), items[0].manual.device
    width = count + (3 if layout.systematic else 0)
    table = torch.zeros(len(items), width, rows, dtype=dtype, device=device)
    signed = layout.signed
    for i, item in enumerate(items):
        shape = tuple(item.manual.shape)
        size = math.prod(shape[1:])
        block = scratch.take("rows", count, rows * size, device, dtype).view(count, rows, size)
        block[signed].view(shape).copy_(second(item))
        block[layout.row["diff"]].view(shape).copy_(item.manual)
        if layout.baseline:
            block[layout.row["gap"]].view(shape).copy_(item.reference)
        if layout.exact_row:
            unequal = torch.ne(item.manual, item.reference)
            block[layout.row["vs_reference"]].view(shape).copy_(unequal)
        block[:signed].sub_(block[signed])
        if layout.systematic:  # <d, t>, [<autograd - t, t>], <t, t>, before the abs
            sums = (block[: signed + 1] * block[signed]).sum(dim=2)
            if layout.baseline:
                table[i, count:].copy_(sums)
            else:
                table[i, count::2].copy_(sums)
        block[: signed + 1].abs_()
        if "ratio" in layout.row:  # elementwise, with the item's allowance
            _ratio(item, block[layout.row["ratio"]], block[layout.row["diff"]], block[signed])
        torch.amax(block, dim=2, out=table[i, :count])
    return table
