"""check_rows (gradaudit.compare.rows) screens many batches at once: each row's Check must be what
check_all gives for that batch alone, in every mode, passing, failing, exact, non-finite."""

from __future__ import annotations

import math

import pytest
import torch

from gradaudit.compare import Check, Comparison, Scratch, check_all
from gradaudit.compare.rows import check_rows
from tests.test_screen import BASELINE, BF16, BF16_BASELINE, CASES, EXACT, F32, ULPS

ROWS = 6
SHAPES = ((40, 7), (300,), (5, 6, 7), (1,))


def _stacked(
    tol_dtype_error: tuple[object, torch.dtype, float], bad_row: int | None
) -> list[Comparison]:
    """(ROWS, *shape) comparisons: row b is batch b; on `bad_row` one tensor is 10% off and
    another has a NaN."""
    tol, dtype, error = tol_dtype_error
    gen = torch.Generator().manual_seed(7)
    items = []
    for k, shape in enumerate(SHAPES):
        truth = torch.randn((ROWS, *shape), generator=gen, dtype=torch.float64)
        truth.view(ROWS, -1)[:, 0] = 0.0
        reference = truth.to(dtype)
        noise = torch.randn((ROWS, *shape), generator=gen, dtype=torch.float64) * error
        manual = (reference.double() * (1 + noise)).to(dtype)
        if bad_row is not None and k == 0:
            manual[bad_row] = manual[bad_row] * 1.1
        if bad_row is not None and k == 2:
            manual[bad_row].view(-1)[3] = math.nan
        baseline = tol.mode == "baseline"  # type: ignore[attr-defined]
        items.append(Comparison(manual, reference, tol, truth if baseline else None))  # type: ignore[arg-type]
    return items


def _row(item: Comparison, b: int) -> Comparison:
    truth = None if item.truth is None else item.truth[b]
    return Comparison(item.manual[b], item.reference[b], item.tol, truth)


def _same(got: Check, want: Check) -> None:
    for name in Check.__dataclass_fields__:
        a, b = getattr(got, name), getattr(want, name)
        if name in ("bias", "reference_bias") and a is not None and b is not None:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-300), name  # sums in another order
        elif isinstance(a, float) and math.isnan(a):
            assert isinstance(b, float) and math.isnan(b), name
        else:
            assert a == b, name


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].mode}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("bad_row", [None, 2])
@pytest.mark.parametrize("beaten", [False, True])
def test_each_row_is_what_check_all_gives_for_its_batch(
    case: tuple[object, torch.dtype, float], bad_row: int | None, beaten: bool
) -> None:
    items = _stacked(case, bad_row)
    scales = [0.0] * ROWS
    if items[0].tol.mode == "baseline":
        scales = [float(max(i.truth[b].abs().max() for i in items)) for b in range(ROWS)]  # type: ignore[index]
    beat: list[float | None] = [None] * len(items)
    if beaten:  # a worst so far that some rows beat and some do not
        first = [
            check_all([_row(i, 0) for i in items], scales[0], Scratch())[k]
            for k, i in enumerate(items)
        ]
        beat = [c.budget for c in first]
    got = check_rows(items, scales, Scratch(), beat)
    for b in range(ROWS):  # as check_all batch after batch, each raising the worst so far
        want = check_all([_row(i, b) for i in items], scales[b], Scratch(), beat)
        for k in range(len(items)):
            _same(got[k][b], want[k])
        beat = [
            w.budget if r is None or w.budget > r else r for w, r in zip(want, beat, strict=True)
        ]
    if bad_row is not None:
        assert not got[0][bad_row].passed and not got[2][bad_row].passed
        assert all(got[1][b].passed for b in range(ROWS))


def test_rows_under_their_worst_so_far_are_not_described() -> None:
    items = _stacked((ULPS, torch.float64, 1e-16), None)
    got = check_rows(items, [0.0] * ROWS, Scratch(), [None] * len(items))
    assert all(row[0].located for row in got)  # the first batch is every tensor's worst
    assert any(not c.located for row in got for c in row)


def test_quiet_on_correct_gradients_and_loud_on_one_wrong_row() -> None:
    items = _stacked((F32, torch.float32, 0.0), None)
    assert all(
        c.passed for row in check_rows(items, [0.0] * ROWS, Scratch(), [None] * 4) for c in row
    )
    items[1].manual[4, 17] += 1.0
    verdicts = check_rows(items, [0.0] * ROWS, Scratch(), [None] * 4)
    assert [c.passed for c in verdicts[1]] == [True, True, True, True, False, True]


def test_modes_are_covered() -> None:
    assert {c[0].mode for c in CASES} >= {F32.mode, BASELINE.mode, ULPS.mode, EXACT.mode}
    assert BF16 in [c[0] for c in CASES] and BF16_BASELINE in [c[0] for c in CASES]


def test_a_tensor_without_entries_passes_as_check_all_says() -> None:
    items = _stacked((F32, torch.float32, 0.0), None)
    none = torch.zeros(ROWS, 0)
    items.insert(1, Comparison(none, none.clone(), F32))
    got = check_rows(items, [0.0] * ROWS, Scratch(), [None] * len(items))
    for b in range(ROWS):
        want = check_all([_row(i, b) for i in items], 0.0, Scratch())
        assert got[1][b] == want[1] and got[1][b].passed
        assert [c.passed for c in (got[0][b], got[2][b])] == [True, True]
