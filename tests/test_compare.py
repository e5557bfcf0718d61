"""`check` (one tensor, one batch), `tolerance_for`, and `TensorSummary` over batches."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from gradaudit.compare import (
    DEFAULT_TOLERANCES,
    MAX_ERRORS_KEPT,
    Check,
    GradientMismatch,
    TensorSummary,
    Tol,
    check,
    tolerance_for,
)
from gradaudit.spec import Tolerance

INF, NAN = math.inf, math.nan
F32 = Tol(rtol=1.3e-6, atol=1e-5)


def _rtol_atol(tol: Tol) -> tuple[float, float]:
    """The allclose numbers a rule resolves to (whatever mode `auto` picks for the dtype)."""
    return (tol.rtol, tol.atol)


def up(x: float) -> float:
    return math.nextafter(x, INF)


def down(x: float) -> float:
    return math.nextafter(x, -INF)


# --- check ---------------------------------------------------------------------------------


def test_equal_tensors() -> None:
    ref = torch.linspace(-3, 3, 12).reshape(3, 4)
    result = check(ref.clone(), ref, F32)
    assert result.exact is True
    assert result.passed is True
    assert result.budget == 0.0
    assert (result.max_abs, result.max_rel) == (0.0, 0.0)
    assert (result.mismatched, result.nonfinite, result.numel) == (0, 0, 12)


def test_relative_error_of_1e3_in_float32_fails_at_defaults() -> None:
    ref = (torch.arange(1, 13, dtype=torch.float32) / 4).reshape(3, 4)
    manual = ref.clone()
    manual[1, 2] *= 1 + 1e-3  # the worst
    manual[0, 1] *= 1 + 1e-4
    manual[2, 0] = torch.nextafter(manual[2, 0], torch.tensor(INF))  # one ulp: within tolerance
    result = check(manual, ref, F32)

    m, r = manual.double(), ref.double()
    diff = (m - r).abs()
    budget = diff / (F32.atol + F32.rtol * r.abs())
    assert result.exact is False
    assert result.passed is False
    assert result.mismatched == 2
    assert result.nonfinite == 0
    assert result.numel == 12
    assert result.worst_index == (1, 2)
    assert result.manual_value == float(m[1, 2])
    assert result.reference_value == float(r[1, 2]) == 1.75
    assert result.max_abs == pytest.approx(float(diff[1, 2]), rel=1e-12)
    assert result.max_abs == pytest.approx(1.75e-3, rel=1e-4)
    assert result.max_rel == pytest.approx(float(diff[1, 2]) / 1.75, rel=1e-12)
    assert result.max_rel == pytest.approx(1e-3, rel=1e-4)
    assert result.budget == pytest.approx(float(budget.max()), rel=1e-12)
    assert result.budget > 100
    assert budget[2, 0] < 1  # the one-ulp element really was within tolerance


def test_worst_index_is_by_budget_not_by_absolute_difference() -> None:
    # 1e-3 off a reference of 1000 is fine with rtol 1e-5; 1e-4 off 0 is not.
    ref = torch.tensor([1000.0, 0.0], dtype=torch.float64)
    manual = torch.tensor([1000.001, 1e-4], dtype=torch.float64)
    result = check(manual, ref, Tol(rtol=1e-5, atol=1e-6))
    assert result.worst_index == (1,)
    assert result.mismatched == 1
    assert result.max_abs == pytest.approx(1e-3, rel=1e-6)
    assert result.max_rel == INF  # 1e-4 off a zero reference
    assert result.budget == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("manual", "passed", "budget"),
    [
        (3.0, True, 1.0),  # |diff| == atol + rtol*|ref| exactly
        (1.0, True, 1.0),
        (2.5, True, 0.5),
        (up(3.0), False, None),
        (down(down(1.0)), False, None),  # one step down would round |diff| back to 1.0
    ],
)
def test_tolerance_boundary(manual: float, passed: bool, budget: float | None) -> None:
    # allowed = 0.5 + 0.25 * |2.0| = 1.0, all exactly representable.
    ref = torch.tensor([2.0, -7.0], dtype=torch.float64)
    got = torch.tensor([manual, -7.0], dtype=torch.float64)
    result = check(got, ref, Tol(rtol=0.25, atol=0.5))
    assert result.passed is passed
    assert result.mismatched == (0 if passed else 1)
    assert result.worst_index == (0,)
    if budget is not None:
        assert result.budget == budget
    else:
        assert 1.0 < result.budget < 1.0 + 1e-12


def test_boundary_uses_the_reference_magnitude_not_the_manual_one() -> None:
    # |10 - 5| = 5 <= 0 + 0.5*|10| but > 0 + 0.5*|5|
    tol = Tol(rtol=0.5, atol=0.0)
    ref, manual = torch.tensor([10.0]), torch.tensor([5.0])
    assert check(manual, ref, tol).passed is True
    assert check(ref, manual, tol).passed is False


def test_zero_tolerance_needs_exact_equality() -> None:
    tol = Tol(rtol=0.0, atol=0.0)
    ref = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    same = check(ref.clone(), ref, tol)
    assert (same.passed, same.budget) == (True, 0.0)
    off = ref.clone()
    off[2] = down(-2.0)
    result = check(off, ref, tol)
    assert result.passed is False
    assert result.budget == INF
    assert result.worst_index == (2,)


def test_nan_in_manual_where_reference_is_finite_fails() -> None:
    ref = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    manual = ref.clone()
    manual[1, 0] = NAN
    result = check(manual, ref, F32)
    assert result.passed is False
    assert result.exact is False
    assert result.nonfinite == 1
    assert result.mismatched == 1
    assert result.budget == INF
    assert result.max_abs == INF
    assert result.worst_index == (1, 0)
    assert math.isnan(result.manual_value)
    assert result.reference_value == 3.0


def test_nan_in_both_at_the_same_place_is_not_a_mismatch() -> None:
    ref = torch.tensor([1.0, NAN, 3.0])
    result = check(ref.clone(), ref, F32)
    assert result.passed is True
    assert result.mismatched == 0
    assert result.nonfinite == 0
    assert result.budget == 0.0
    assert result.max_abs == 0.0
    assert result.exact is False  # torch.equal says NaN != NaN


def test_nan_in_both_gives_a_finite_max_rel() -> None:
    ref = torch.tensor([1.0, NAN, 3.0])
    assert check(ref.clone(), ref, F32).max_rel == 0.0


def test_nan_in_both_at_different_places_is_two_mismatches() -> None:
    ref = torch.tensor([1.0, NAN, 3.0])
    manual = torch.tensor([NAN, 2.0, 3.0])
    result = check(manual, ref, F32)
    assert result.passed is False
    assert result.mismatched == 2
    assert result.nonfinite == 2


@pytest.mark.parametrize("value", [INF, -INF])
def test_same_infinity_is_fine(value: float) -> None:
    ref = torch.tensor([1.0, value])
    result = check(ref.clone(), ref, F32)
    assert result.passed is True
    assert result.exact is True
    assert (result.mismatched, result.nonfinite) == (0, 0)
    assert result.budget == 0.0
    assert result.max_abs == 0.0


@pytest.mark.parametrize(
    ("manual", "reference"),
    [
        (NAN, 1.0),
        (NAN, 0.0),
        pytest.param(INF, -INF, id="+inf-vs--inf"),
        pytest.param(1.0, INF, id="finite-vs-inf"),
        pytest.param(NAN, INF, id="nan-vs-inf"),
        pytest.param(-INF, NAN, id="-inf-vs-nan"),
        pytest.param(INF, 1.0, id="inf-vs-finite"),
        pytest.param(1.0, NAN, id="finite-vs-nan"),
    ],
)
def test_disagreeing_nonfinite_values_fail_and_are_counted(manual: float, reference: float) -> None:
    result = check(torch.tensor([0.5, manual]), torch.tensor([0.5, reference]), F32)
    assert result.passed is False
    assert result.mismatched == 1
    assert result.nonfinite == 1
    assert result.worst_index == (1,)
    assert result.max_abs == INF
    assert result.budget == INF


def test_shape_mismatch() -> None:
    with pytest.raises(GradientMismatch, match=r"^shape \(2, 3\), autograd's is \(3, 2\)$"):
        check(torch.zeros(2, 3), torch.zeros(3, 2), F32)


def test_shape_mismatch_even_when_broadcastable() -> None:
    with pytest.raises(GradientMismatch, match="shape"):
        check(torch.zeros(3), torch.zeros(1, 3), F32)


def test_dtype_mismatch() -> None:
    with pytest.raises(
        GradientMismatch, match=r"^dtype torch\.float64, autograd's is torch\.float32$"
    ):
        check(torch.zeros(2, dtype=torch.float64), torch.zeros(2), F32)


def test_gradient_mismatch_is_a_value_error() -> None:
    assert issubclass(GradientMismatch, ValueError)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0, 2)])
def test_zero_size_tensors_pass(shape: tuple[int, ...]) -> None:
    result = check(torch.zeros(shape), torch.zeros(shape), F32)
    assert result.passed is True
    assert result.numel == 0
    assert result.budget == 0.0
    assert result.worst_index == ()
    assert result.mismatched == 0


def test_scalar_tensor() -> None:
    result = check(torch.tensor(0.0), torch.tensor(1.0), F32)
    assert result.passed is False
    assert result.worst_index == ()
    assert result.numel == 1
    assert result.budget == pytest.approx(1.0 / (1e-5 + 1.3e-6))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_compare_in_float64(dtype: torch.dtype) -> None:
    ref = torch.tensor([1.0, 2.0, 4.0], dtype=dtype)
    manual = ref.clone()
    manual[1] = 3.0
    result = check(manual, ref, Tol(rtol=0.0, atol=0.5))
    assert result.passed is False
    assert result.max_abs == 1.0
    assert result.budget == 2.0
    assert result.manual_value == 3.0 and result.reference_value == 2.0


def test_check_agrees_with_torch_assert_close() -> None:
    """Elementwise, `passed` is exactly torch.testing.assert_close's verdict at the same tol."""
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(300, generator=gen) * torch.logspace(-6, 3, 300)
    allowed = 1e-5 + 1.3e-6 * ref.double().abs()
    # differences spread around the boundary: 0.5x .. 1.5x of what is allowed
    scale = torch.linspace(0.5, 1.5, 300, dtype=torch.float64)
    manual = (ref.double() + allowed * scale).float()
    verdicts = []
    for i in range(ref.numel()):
        m, r = manual[i : i + 1], ref[i : i + 1]
        try:
            torch.testing.assert_close(m, r, rtol=F32.rtol, atol=F32.atol)
            expected = True
        except AssertionError:
            expected = False
        assert check(m, r, F32).passed is expected, (i, float(m), float(r))
        verdicts.append(expected)
    assert 50 < sum(verdicts) < 250  # both sides of the boundary were exercised


# --- tolerance_for -------------------------------------------------------------------------


def tolerance(data: dict[str, Any] | None = None) -> Tolerance:
    return Tolerance.model_validate(data or {})


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("float32", (1.3e-6, 1e-5)),
        ("float64", (1e-7, 1e-7)),
        ("float16", (1e-3, 1e-5)),
        ("bfloat16", (1.6e-2, 1e-5)),
    ],
)
def test_dtype_defaults(dtype: str, expected: tuple[float, float]) -> None:
    assert _rtol_atol(tolerance_for(tolerance(), "w", "cpu", dtype)) == tuple(expected)


def test_dtype_defaults_match_torch_testing() -> None:
    from torch.testing import _comparison

    table = getattr(_comparison, "_DTYPE_PRECISIONS", None)
    if table is None:
        pytest.skip("torch.testing's private tolerance table moved")
    assert set(DEFAULT_TOLERANCES) == {"float16", "bfloat16", "float32", "float64"}
    for name, (rtol, atol) in DEFAULT_TOLERANCES.items():
        assert table[getattr(torch, name)] == (rtol, atol), name


def test_spec_wide_values_override_the_dtype_defaults() -> None:
    spec = tolerance({"rtol": 1e-3, "atol": 0})
    assert _rtol_atol(tolerance_for(spec, "w", "cpu", "float32")) == (1e-3, 0.0)
    assert _rtol_atol(tolerance_for(spec, "w", "cuda", "float64")) == (1e-3, 0.0)


def test_spec_wide_rtol_alone_keeps_the_default_atol() -> None:
    spec = tolerance({"rtol": 0.5})
    assert _rtol_atol(tolerance_for(spec, "w", "cpu", "float64")) == (0.5, 1e-7)
    spec = tolerance({"atol": 0.5})
    assert _rtol_atol(tolerance_for(spec, "w", "cpu", "bfloat16")) == (1.6e-2, 0.5)


def test_override_by_glob() -> None:
    spec = tolerance({"rtol": 1e-4, "overrides": [{"tensors": ["W*", "h.?"], "rtol": 0.1}]})
    assert _rtol_atol(tolerance_for(spec, "Wxh", "cpu", "float32")) == (0.1, 1e-5)
    assert _rtol_atol(tolerance_for(spec, "h.3", "cpu", "float32")) == (0.1, 1e-5)
    assert _rtol_atol(tolerance_for(spec, "h.10", "cpu", "float32")) == (1e-4, 1e-5)
    # globs are case-sensitive
    assert _rtol_atol(tolerance_for(spec, "wxh", "cpu", "float32")) == (1e-4, 1e-5)
    assert _rtol_atol(tolerance_for(spec, "bias", "cpu", "float32")) == (1e-4, 1e-5)


def test_override_filters_by_device_and_dtype() -> None:
    spec = tolerance(
        {
            "overrides": [
                {"tensors": ["*"], "devices": ["cuda", "cuda:1"], "atol": 1e-3},
                {"tensors": ["*"], "dtypes": ["float16", "bfloat16"], "rtol": 5e-2},
            ]
        }
    )
    assert _rtol_atol(tolerance_for(spec, "w", "cpu", "float32")) == (1.3e-6, 1e-5)
    assert _rtol_atol(tolerance_for(spec, "w", "cuda", "float32")) == (1.3e-6, 1e-3)
    assert _rtol_atol(tolerance_for(spec, "w", "cuda:1", "float64")) == (1e-7, 1e-3)
    assert _rtol_atol(tolerance_for(spec, "w", "cuda:0", "float64")) == (1e-7, 1e-7)
    assert _rtol_atol(tolerance_for(spec, "w", "cpu", "float16")) == (5e-2, 1e-5)
    assert _rtol_atol(tolerance_for(spec, "w", "cuda", "bfloat16")) == (5e-2, 1e-3)


def test_last_matching_override_wins() -> None:
    spec = tolerance(
        {
            "rtol": 1e-6,
            "overrides": [
                {"tensors": ["*"], "rtol": 1e-1, "atol": 1e-1},
                {"tensors": ["W*"], "rtol": 1e-2},
                {"tensors": ["Wxh"], "dtypes": ["float64"], "rtol": 1e-3},  # not float32
                {"tensors": ["b*"], "rtol": 1e-4},  # another tensor
            ],
        }
    )
    # the second rule wins rtol; atol stays from the first one
    assert _rtol_atol(tolerance_for(spec, "Wxh", "cpu", "float32")) == (1e-2, 1e-1)
    assert _rtol_atol(tolerance_for(spec, "Wxh", "cpu", "float64")) == (1e-3, 1e-1)
    assert _rtol_atol(tolerance_for(spec, "bh", "cpu", "float32")) == (1e-4, 1e-1)
    assert _rtol_atol(tolerance_for(spec, "h", "cpu", "float32")) == (1e-1, 1e-1)


def test_override_order_matters() -> None:
    first = {"tensors": ["*"], "rtol": 0.1}
    second = {"tensors": ["w"], "rtol": 0.2}
    ab = tolerance({"overrides": [first, second]})
    ba = tolerance({"overrides": [second, first]})
    assert tolerance_for(ab, "w", "cpu", "float32").rtol == 0.2
    assert tolerance_for(ba, "w", "cpu", "float32").rtol == 0.1


# --- TensorSummary -----------------------------------------------------------------------


def make(
    budget: float,
    *,
    passed: bool | None = None,
    exact: bool = False,
    max_abs: float = 0.0,
    max_rel: float = 0.0,
    mismatched: int = 0,
    nonfinite: int = 0,
    numel: int = 10,
) -> Check:
    return Check(
        exact=exact,
        passed=budget <= 1 if passed is None else passed,
        max_abs=max_abs,
        max_rel=max_rel,
        budget=budget,
        worst_index=(0,),
        manual_value=0.0,
        reference_value=0.0,
        mismatched=mismatched,
        nonfinite=nonfinite,
        numel=numel,
    )


def test_empty_summary_is_skipped() -> None:
    summary = TensorSummary("w", F32)
    assert summary.status == "skipped"
    assert summary.budget == 0.0
    assert summary.worst is None and summary.worst_batch is None and summary.worst_seed is None
    assert summary.exact is True


def test_summary_aggregates_batches() -> None:
    summary = TensorSummary("w", F32)
    checks = [
        make(0.2, exact=True, max_abs=1e-7, max_rel=1e-6),
        make(3.5, max_abs=1e-3, max_rel=2e-6, mismatched=4, numel=12),
        make(7.0, max_abs=5e-4, max_rel=9e-3, mismatched=1, nonfinite=1),
        make(0.9, max_abs=2e-6, max_rel=1e-7),
    ]
    for i, c in enumerate(checks):
        summary.add(c, batch_index=i, seed=100 + i)
    assert summary.batches == 4
    assert summary.failed_batches == 2
    assert summary.exact is False
    assert summary.max_abs == 1e-3
    assert summary.max_rel == 9e-3
    assert summary.mismatched == 5
    assert summary.nonfinite == 1
    assert summary.numel == 42
    assert summary.worst is checks[2]
    assert (summary.worst_batch, summary.worst_seed) == (2, 102)
    assert summary.budget == 7.0
    assert summary.status == "fail"


def test_summary_all_exact_stays_exact_and_passes() -> None:
    summary = TensorSummary("w", F32)
    for i in range(3):
        summary.add(make(0.0, exact=True), i, i)
    assert summary.exact is True
    assert summary.status == "pass"
    assert summary.worst_batch == 0  # a tie keeps the first


def test_summary_worst_is_first_of_equal_budgets() -> None:
    summary = TensorSummary("w", F32)
    summary.add(make(0.5), 0, 10)
    summary.add(make(2.0), 1, 11)
    summary.add(make(2.0), 2, 12)
    summary.add(make(1.5), 3, 13)
    assert (summary.worst_batch, summary.worst_seed, summary.budget) == (1, 11, 2.0)


def test_summary_infinite_budget_is_the_worst() -> None:
    summary = TensorSummary("w", F32)
    summary.add(make(1e300), 0, 0)
    summary.add(make(INF, nonfinite=1), 1, 1)
    summary.add(make(5.0), 2, 2)
    assert summary.worst_batch == 1
    assert summary.budget == INF


def test_summary_from_real_checks() -> None:
    ref = torch.tensor([1.0, 2.0, 3.0])
    summary = TensorSummary("w", F32)
    summary.add(check(ref.clone(), ref, F32), 0, 64)
    summary.add(check(ref * 1.001, ref, F32), 1, 65)
    summary.add(check(ref * 1.0001, ref, F32), 2, 66)
    assert summary.failed_batches == 2
    assert summary.mismatched == 6
    assert summary.numel == 9
    assert (summary.worst_batch, summary.worst_seed) == (1, 65)
    assert summary.status == "fail"


def test_summary_errors_are_capped_but_counted() -> None:
    summary = TensorSummary("w", F32)
    summary.add(make(0.1), 0, 0)
    assert summary.status == "pass"
    total = MAX_ERRORS_KEPT + 3
    for i in range(total):
        summary.add_error(f"error {i}")
    assert summary.error_count == total
    assert summary.errors == [f"error {i}" for i in range(MAX_ERRORS_KEPT)]
    assert summary.status == "error"


def test_a_failure_and_an_error_both_show() -> None:
    """Issue 13 item 7: a crash on a later batch must not hide a mismatch (nor vice versa):
    the status is the failure, and its line names the error."""
    from gradaudit.report.describe import verdict_line

    summary = TensorSummary("w", F32)
    summary.add(make(9.0), 0, 0)
    assert summary.status == "fail"
    summary.add_error("boom")
    assert summary.status == "fail" and "and 1 error: boom" in verdict_line(summary)
    assert summary.errors == ["boom"]
    only_error = TensorSummary("v", F32)
    only_error.add(make(0.5), 0, 0)
    only_error.add_error("boom")
    assert only_error.status == "error"


def test_skipped_summary() -> None:
    summary = TensorSummary("w", F32, skipped="cuda is not available")
    assert summary.status == "skipped"
    summary.add_error("boom")
    assert summary.status == "error"


def test_a_batch_makes_an_empty_summary_pass() -> None:
    summary = TensorSummary("w", F32)
    summary.add(make(0.3), 0, 0)
    assert summary.status == "pass"


def test_merge_shards() -> None:
    a, b = TensorSummary("w", F32), TensorSummary("w", F32)
    a.add(make(0.5, max_abs=1e-6, numel=4), 0, 10)
    a.add(make(4.0, mismatched=2, max_rel=0.1, numel=4), 1, 11)
    b.add(make(4.0, mismatched=1, numel=4), 2, 12)  # ties a's worst: the earlier batch stays
    b.add(make(0.1, exact=True, max_abs=3e-6, numel=4, nonfinite=1), 3, 13)
    for i in range(MAX_ERRORS_KEPT - 1):
        a.add_error(f"a{i}")
    b.add_error("b0")
    b.add_error("b1")
    a.seconds, b.seconds = 1.5, 2.0
    a.merge(b)
    assert (a.batches, a.failed_batches, a.mismatched, a.nonfinite, a.numel) == (4, 2, 3, 1, 16)
    assert (a.max_abs, a.max_rel, a.seconds) == (3e-6, 0.1, 3.5)
    assert (a.worst_batch, a.worst_seed, a.budget) == (1, 11, 4.0)
    assert a.exact is False
    assert a.error_count == MAX_ERRORS_KEPT + 1
    assert a.errors == [f"a{i}" for i in range(MAX_ERRORS_KEPT - 1)] + ["b0"]


def test_merge_takes_the_larger_budget_and_the_earlier_batch_on_ties() -> None:
    a, b = TensorSummary("w", F32), TensorSummary("w", F32)
    a.add(make(2.0), 5, 105)
    b.add(make(2.0), 3, 103)
    a.merge(b)
    assert (a.worst_batch, a.worst_seed) == (3, 103)
    c = TensorSummary("w", F32)
    c.add(make(9.0), 7, 107)
    a.merge(c)
    assert (a.worst_batch, a.worst_seed, a.budget) == (7, 107, 9.0)


def test_merge_skipped_with_checked_is_not_skipped() -> None:
    a = TensorSummary("w", F32, skipped="empty shard")
    b = TensorSummary("w", F32)
    b.add(make(0.1), 0, 0)
    a.merge(b)
    assert a.skipped is None
    assert a.status == "pass"


def test_to_dict_round_trip() -> None:
    summary = TensorSummary("w", Tol("allclose", 1e-3, 1e-4))
    ref = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    summary.add(check(ref * 1.01, ref, summary.tol), 2, 66)
    summary.add_error("x")
    data = summary.to_dict()
    assert data["status"] == "fail" and data["error_count"] == 1
    again = TensorSummary.from_dict(data)
    assert again == summary
    assert again.worst is not None and again.worst.worst_index == (1, 1)


def test_error_with_no_batches() -> None:
    summary = TensorSummary("w", F32)
    summary.add_error("moving the model to cuda/float16 failed")
    assert summary.status == "error"
    assert summary.batches == 0


def test_float32_measurement_matches_float64_and_defers_close_calls_to_it() -> None:
    """allclose on float32 is measured in float32 first: its numbers agree with float64's to
    float32 precision, and a tensor near its allowance gets float64's exact verdict."""
    from gradaudit.compare import TRIAGE_MARGIN, Comparison, check_all

    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn(shape, generator=gen) for shape in ((40, 7), (300,), (5, 6, 7))]
    allowed = [1e-5 + 1.3e-6 * t.double().abs() for t in tensors]
    # well inside the allowance, then straddling it element by element
    scales = [0.3, 0.9, 1.0 + 10 * TRIAGE_MARGIN]
    triples = zip(tensors, allowed, scales, strict=True)
    manuals = [(t.double() + a * s).float() for t, a, s in triples]
    pairs = list(zip(manuals, tensors, strict=True))
    as32 = check_all([Comparison(m, t, F32) for m, t in pairs])
    as64 = check_all([Comparison(m.double(), t.double(), F32) for m, t in pairs])
    for a, b in zip(as32, as64, strict=True):
        assert (a.passed, a.mismatched, a.worst_index) == (b.passed, b.mismatched, b.worst_index)
        for name in ("max_abs", "max_rel", "budget", "sym_rel", "cosine", "allowed"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-6), name
    assert as32[0].passed and as32[1].passed and not as32[2].passed
    assert as32[2].budget == as64[2].budget  # redone in float64: the very same number
