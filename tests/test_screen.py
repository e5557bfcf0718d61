"""The screen (gradaudit.compare.screen) settles passing batches from per-batch maxima: its verdicts
and numbers must be the full measurement's, and whatever it cannot settle must reach it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from gradaudit.compare import Check, Comparison, Scratch, Tol, check_all
from gradaudit.compare.measure import largest, measure
from gradaudit.compare.syncs import count_syncs
from gradaudit.tolerance import DEFAULT_BATCH_ULPS, EPS

F32 = Tol("allclose", 1.3e-6, 1e-5)
BASELINE = Tol("baseline", 1.3e-6, 1e-5, floor_ulps=8.0, eps=EPS["float32"], systematic=True)
ULPS = Tol("ulps", floor_ulps=32.0, eps=EPS["float64"], batch_ulps=DEFAULT_BATCH_ULPS)
EXACT = Tol("exact")
BF16 = Tol("allclose", 1.6e-2, 1e-5)
BF16_BASELINE = replace(BASELINE, floor_ulps=2.0, eps=EPS["bfloat16"])
SETTLED = ("exact", "passed", "max_abs", "budget", "mismatched", "nonfinite", "numel", "bias")


def _batch(seed: int, dtype: torch.dtype, error: float) -> list[tuple[torch.Tensor, ...]]:
    """(manual, autograd, truth) for tensors of several shapes, some alike (their views of
    the screen's block are shared), with a zero and a NaN-free relative error of `error`
    on the manual side (0: manual is autograd)."""
    gen = torch.Generator().manual_seed(seed)
    found: list[tuple[torch.Tensor, ...]] = []
    for shape in ((40, 7), (300,), (5, 6, 7), (1,), (300,), (40, 7), (300,)):
        truth = torch.randn(shape, generator=gen, dtype=torch.float64)
        truth.view(-1)[0] = 0.0  # an exact zero on both sides: 0/0 must count as no error
        reference = truth.to(dtype)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64) * error
        manual = (reference.double() * (1 + noise)).to(dtype)
        found.append((manual, reference, truth))
    return found


def _items(batch: list[tuple[torch.Tensor, ...]], tol: Tol) -> list[Comparison]:
    return [Comparison(m, r, tol, t if tol.mode == "baseline" else None) for m, r, t in batch]


def _full(items: list[Comparison]) -> list[Check]:
    """The full measurement alone (check_all screens first)."""
    return measure(items, largest(items) if items[0].tol.mode == "ulps" else 0.0, Scratch())


CASES = [
    (F32, torch.float32, 1e-7),
    (BF16, torch.bfloat16, 1e-3),
    (BASELINE, torch.float32, 1e-7),
    (BASELINE, torch.float32, 0.0),  # manual is autograd: exact
    (BF16_BASELINE, torch.bfloat16, 1e-3),
    (ULPS, torch.float64, 1e-16),
    (replace(ULPS, systematic=True), torch.float64, 1e-16),  # float64's auto
    (EXACT, torch.float32, 0.0),
]


@pytest.mark.parametrize(("tol", "dtype", "error"), CASES)
@pytest.mark.parametrize("counting", [False, True], ids=["cpu", "device-path"])
def test_screened_checks_are_the_full_measurements(
    tol: Tol, dtype: torch.dtype, error: float, counting: bool
) -> None:
    """On correct code: settled numbers equal the full measurement's, described ones too."""
    for seed in range(3):
        items = _items(_batch(seed, dtype, error), tol)
        full = _full(items)
        assert all(c.passed for c in full)
        if counting:  # the path a GPU takes (rows instead of torch.equal), reads counted
            with count_syncs() as counter:
                never = check_all(items, 0.0, Scratch(), [math.inf] * len(items))
                first = check_all(items, 0.0, Scratch(), [None] * len(items))
            assert counter.total <= 3, counter.counts  # screen once + describe once
        else:
            never = check_all(items, 0.0, Scratch(), [math.inf] * len(items))
            first = check_all(items, 0.0, Scratch(), [None] * len(items))
        for settled, described, truth in zip(never, first, full, strict=True):
            assert not settled.located and described.located
            for name in SETTLED:
                expected = getattr(truth, name)
                near = expected if expected is None else pytest.approx(expected, rel=1e-12)
                assert getattr(settled, name) == near, name
                assert getattr(described, name) == near, name
            assert math.isnan(settled.max_rel) and settled.worst_index == ()
            assert described.worst_index == truth.worst_index
            for name in ("manual_value", "reference_value", "max_rel", "sym_rel", "allowed"):
                assert getattr(described, name) == pytest.approx(getattr(truth, name), rel=1e-9)
            assert described.cosine == pytest.approx(truth.cosine, abs=1e-9)


@pytest.mark.parametrize(("tol", "dtype", "error"), CASES[:-1])
def test_a_wrong_gradient_reaches_the_full_measurement(
    tol: Tol, dtype: torch.dtype, error: float
) -> None:
    """The screen never passes a failure: a scaled gradient fails, located, with its count."""
    batch = _batch(7, dtype, error)
    manual, reference, truth = batch[0]
    batch[0] = ((manual.double() * 1.05).to(dtype), reference, truth)
    items = _items(batch, tol)
    screened = check_all(items, 0.0, Scratch(), [math.inf] * len(items))
    full = _full(items)
    assert not screened[0].passed and screened[0].located and screened[0].mismatched > 0
    assert screened[0] == full[0]
    assert all(c.passed for c in screened[1:])


def test_exactness_in_baseline_mode_is_equal_values() -> None:
    """Manual equal to autograd up to the sign of its zeros is exact (values, as the full
    measurement counts it); one element off by one ULP is not, in both."""
    batch = _batch(3, torch.float32, 0.0)
    manual, reference, truth = batch[0]
    signed = manual.clone()
    signed.view(-1)[0] = -0.0  # autograd and the truth hold +0.0 there
    batch[0] = (signed, reference, truth)
    off = batch[1][0].clone()
    off.view(-1)[5] = torch.nextafter(off.view(-1)[5], torch.tensor(math.inf))
    batch[1] = (off, batch[1][1], batch[1][2])
    items = _items(batch, BASELINE)
    screened = check_all(items, 0.0, Scratch(), [math.inf] * len(items))
    assert [c.exact for c in screened] == [c.exact for c in _full(items)]
    assert [c.exact for c in screened] == [True, False] + [True] * 5


def test_nan_goes_to_the_full_measurement() -> None:
    batch = _batch(1, torch.float32, 1e-7)
    manual, reference, truth = batch[1]
    manual = manual.clone()
    manual[3] = math.nan
    batch[1] = (manual, reference, truth)
    screened = check_all(_items(batch, F32), 0.0, Scratch(), [math.inf] * len(batch))
    assert not screened[1].passed and screened[1].nonfinite == 1 and screened[1].located


def test_a_new_worst_batch_is_described_and_an_old_one_is_not() -> None:
    items = _items(_batch(2, torch.float32, 1e-7), F32)
    budgets = [c.budget for c in _full(items)]
    below = check_all(items, 0.0, Scratch(), budgets)  # equal to the record: not a new worst
    above = check_all(items, 0.0, Scratch(), [b / 2 for b in budgets])
    assert not any(c.located for c in below if c.budget > 0)
    assert all(c.located for c in above if c.budget > 0)


def test_summary_numbers_are_the_worst_batchs_whatever_the_order() -> None:
    """max_rel, max_sym_rel and min_cosine come from the worst batch, which is described
    in full in any order: batches folded forwards or backwards give the same summary."""
    from gradaudit.results import TensorSummary

    batches = [_items(_batch(seed, torch.float32, 1e-7 * (1 + seed)), F32) for seed in range(5)]

    def fold(order: list[int]) -> TensorSummary:
        summary = TensorSummary("x", F32)
        for k in order:
            beat = [summary.worst.budget if summary.worst else None]
            summary.add(check_all(batches[k][:1], 0.0, Scratch(), beat)[0], k, k)
        return summary

    forwards, backwards = fold([0, 1, 2, 3, 4]), fold([4, 3, 2, 1, 0])
    for name in ("max_abs", "max_rel", "max_sym_rel", "min_cosine", "worst_batch", "budget"):
        assert getattr(forwards, name) == getattr(backwards, name), name
    assert forwards.worst is not None and forwards.worst.located


def test_json_record_of_a_settled_batch_has_nulls_not_numbers() -> None:
    from gradaudit.report.jsonfile import case_record
    from gradaudit.results import CaseResult

    settled: Check = check_all(
        _items(_batch(0, torch.float32, 1e-7), F32), 0.0, Scratch(), [9.0] * 7
    )[0]
    record = case_record(CaseResult("cpu", "float32", "x", 0, 1, check=settled, tol=F32))
    assert record["located"] is False
    assert record["worst_index"] is None and record["max_rel"] is None and record["cosine"] is None
    assert record["budget"] == settled.budget and record["status"] == "pass"
    located = case_record(
        CaseResult("cpu", "float32", "x", 0, 1, check=replace(settled, located=True), tol=F32)
    )
    assert located["worst_index"] == []
