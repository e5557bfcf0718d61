"""Tolerance modes and the extra checks: baseline, finite differences, repeat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gradaudit.compare import Tol, check, tolerance_for
from gradaudit.spec import Tolerance
from tests.conftest import REPO, SpecWriter, run_gradaudit

PLUGINS = [str(REPO / "tests" / "negative_controls.py"), str(REPO / "tests" / "checks_plugins.py")]


def _run(write_spec: SpecWriter, tmp_path: Path, **overrides: Any) -> tuple[int, dict[str, Any]]:
    spec = write_spec(plugins=PLUGINS, **overrides)
    out = tmp_path / "report.json"
    result = run_gradaudit("run", spec, "--json", out)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(out.read_text())


def _statuses(report: dict[str, Any], check: str) -> dict[tuple[str, str], str]:
    return {
        (g["dtype"], t["tensor"]): t["status"]
        for g in report["groups"]
        if g["check"] == check
        for t in g["tensors"]
    }


def test_auto_resolves_per_dtype() -> None:
    auto = Tolerance()
    f64 = tolerance_for(auto, "W", "cpu", "float64")
    assert (f64.mode, f64.floor_ulps, f64.batch_ulps, f64.systematic) == ("ulps", 32, 64, True)
    for dtype, floor in (("float32", 8.0), ("bfloat16", 2.0), ("float16", 2.0)):
        tol = tolerance_for(auto, "W", "cpu", dtype)
        assert (tol.mode, tol.k, tol.floor_ulps, tol.systematic) == ("baseline", 2.0, floor, True)
    # an explicit mode keeps the systematic-error check; `systematic: false` turns it off
    assert tolerance_for(Tolerance(mode="baseline"), "W", "cpu", "float32").systematic
    off = Tolerance(mode="baseline", systematic=False)
    assert not tolerance_for(off, "W", "cpu", "float32").systematic
    # allclose below float64 has no truth to pair with; in float64 autograd is the truth
    assert not tolerance_for(Tolerance(mode="allclose"), "W", "cpu", "float32").systematic
    assert tolerance_for(Tolerance(mode="allclose"), "W", "cpu", "float64").systematic
    assert not tolerance_for(Tolerance(mode="exact"), "W", "cpu", "float64").systematic
    rule = Tolerance.model_validate(
        {"overrides": [{"tensors": ["h.*"], "dtypes": ["float32"], "mode": "allclose"}]}
    )
    assert tolerance_for(rule, "h.3", "cpu", "float32").mode == "allclose"
    assert tolerance_for(rule, "W", "cpu", "float32").mode == "baseline"


def test_baseline_allows_k_times_autograds_error_plus_floor() -> None:
    truth = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    autograd = torch.tensor([1.0, -2.0, 4.001], dtype=torch.float32)  # error 1e-3
    # eps as coarse as bfloat16's: autograd's error is within CANCEL_ULPS ULPs of the scale
    tol = Tol("baseline", k=2.0, floor_ulps=0.0, eps=2.0**-7)
    inside = torch.tensor([1.0019, -2.0, 4.0], dtype=torch.float32)
    outside = torch.tensor([1.0021, -2.0, 4.0], dtype=torch.float32)
    ok = check(inside, autograd, tol, truth)
    bad = check(outside, autograd, tol, truth)
    assert ok.passed and not bad.passed
    assert ok.reference_error == pytest.approx(1e-3, rel=1e-3)
    assert ok.allowed == pytest.approx(2e-3, rel=1e-3)  # the number actually applied
    assert bad.worst_index == (0,) and bad.budget > 1


def test_baseline_floor_is_ulps_of_the_truths_magnitude() -> None:
    truth = torch.tensor([0.0, 8.0], dtype=torch.float64)
    exact = truth.float()
    tol = Tol("baseline", k=2.0, floor_ulps=4.0, eps=2.0**-23)
    result = check(exact + torch.tensor([0.0, 3e-6]), exact, tol, truth)
    assert result.allowed == pytest.approx(4 * 2.0**-23 * 8.0)
    assert result.passed  # 3e-6 < 4 ulps of 8 (3.8e-6)


def test_baseline_floor_follows_the_batch_for_a_gradient_that_cancels_to_zero() -> None:
    truth = torch.tensor([1e-18, -1e-18], dtype=torch.float64)  # zero, up to float64 noise
    autograd = torch.tensor([2e-9, -1e-9], dtype=torch.float32)  # float32 rounding noise
    manual = torch.tensor([5e-9, 3e-9], dtype=torch.float32)  # noise of another summation
    tol = Tol("baseline", k=2.0, floor_ulps=8.0, eps=2.0**-23)
    alone = check(manual, autograd, tol, truth)
    # no batch to lean on: autograd's error is all cancellation, held to CANCEL_K times it
    assert alone.allowed == pytest.approx(32 * 2e-9, rel=1e-3)
    in_batch = check(manual, autograd, tol, truth, batch_scale=0.03)
    assert in_batch.passed  # zero by construction: 8 ulps of 0.03 = 2.9e-8, plus 2 x 2e-9
    assert in_batch.allowed == pytest.approx(2 * 2e-9 + 8 * 2.0**-23 * 0.03, rel=1e-3)
    # not float64 noise, yet unresolved in float32: 1/16 of the batch's scale
    small = torch.tensor([1e-10, -1e-10], dtype=torch.float64)
    share = check(manual, autograd, tol, small, batch_scale=0.03)
    assert share.allowed == pytest.approx(2 * 2.1e-9 + 8 * 2.0**-23 * 0.03 / 16, rel=0.1)
    # A gradient autograd resolves keeps its own scale, whatever the rest of the batch holds.
    resolved = torch.tensor([2.0**-10, -(2.0**-9)], dtype=torch.float64)  # exact in float32
    own = check(resolved.float(), resolved.float(), tol, resolved, batch_scale=10.0)
    assert own.allowed == pytest.approx(8 * 2.0**-23 * 2.0**-9, rel=1e-9)


def test_exact_mode_is_bitwise() -> None:
    a = torch.tensor([1.0, 2.0])
    assert check(a, a.clone(), Tol("exact")).passed
    assert not check(a, a + torch.tensor([1e-6, 0.0]), Tol("exact")).passed


def test_diagnostics_cosine_and_symmetric_relative_error() -> None:
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    result = check(a, b, Tol("allclose", 0.0, 0.0))
    assert result.cosine == pytest.approx(0.0)
    assert result.sym_rel == pytest.approx(2.0)
    same = check(a, a.clone(), Tol("allclose", 0.0, 0.0))
    assert same.cosine == pytest.approx(1.0) and same.sym_rel == 0.0


def test_low_precision_dtypes_pass_with_no_overrides(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    code, report = _run(write_spec, tmp_path, dtypes=["bfloat16", "float16"])
    assert code == 0
    statuses = _statuses(report, "gradients")
    assert statuses and set(statuses.values()) == {"pass"}
    record = report["cases"][0]
    assert record["tolerance"]["mode"] == "baseline" and record["allowed"] > 0


@pytest.mark.parametrize(
    "control", ["bptt-sign-error", "bptt-over-T", "bptt-W-transposed", "bptt-no-recurrence"]
)
def test_negative_controls_fail_in_every_dtype(
    write_spec: SpecWriter, tmp_path: Path, control: str
) -> None:
    """The foundation issue's four controls, under `auto` tolerances, down to float16."""
    dtypes = ["float64", "float32", "bfloat16", "float16"]
    code, report = _run(write_spec, tmp_path, gradients={"plugin": control}, dtypes=dtypes)
    assert code == 1
    statuses = _statuses(report, "gradients")
    for dtype in dtypes:
        failing = {t for (d, t), s in statuses.items() if d == dtype and s == "fail"}
        if control in ("bptt-sign-error", "bptt-over-T"):
            assert {"logits", "W.weight", "V.bias"} <= failing, (dtype, failing)
        else:  # the recurrence: wrong below the last step, right at it
            assert {"W.weight", "h.1"} <= failing and "logits" not in failing, (dtype, failing)


# A model whose tanh is a custom Function with a wrong backward, and a manual gradient that
# repeats the mistake: manual and autograd agree, both wrong (tests/checks_plugins.py).
BAD_TANH: dict[str, Any] = {
    "model": {"plugin": "charrnn-badtanh", "options": {"d_model": 8, "n_hidden": 16}},
    "gradients": {"plugin": "bptt-tanh-sign"},
    "dtypes": ["float64"],
}


def test_finite_differences_catch_a_wrong_custom_backward(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    code, report = _run(
        write_spec, tmp_path, **BAD_TANH, checks={"finite_difference": {"directions": 4}}
    )
    assert code == 1
    # The manual gradient repeats the model's mistake: manual vs autograd alone is green ...
    assert set(_statuses(report, "gradients").values()) == {"pass"}
    # ... but both disagree with the loss's finite differences.
    assert _statuses(report, "finite_difference") == {
        ("float64", "manual"): "fail",
        ("float64", "autograd"): "fail",
    }


def test_a_custom_function_in_the_model_runs_finite_differences_by_default(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    """Without `checks.finite_difference` in the spec, a graph holding a custom Function with
    a wrong backward (and a manual gradient repeating it) is red, not a warning and exit 0;
    the same model with a correct backward runs the same check and stays green."""
    code, report = _run(write_spec, tmp_path, **BAD_TANH)
    assert code == 1
    assert set(_statuses(report, "gradients").values()) == {"pass"}
    assert _statuses(report, "finite_difference") == {
        ("float64", "manual"): "fail",
        ("float64", "autograd"): "fail",
    }
    assert "checks.finite_difference runs" in report["run"]["warnings"]
    good = {"plugin": "charrnn-goodtanh", "options": BAD_TANH["model"]["options"]}
    code, report = _run(write_spec, tmp_path, model=good, dtypes=["float64"])
    assert code == 0
    assert set(_statuses(report, "finite_difference").values()) == {"pass"}
    code, report = _run(write_spec, tmp_path, dtypes=["float64"])  # no Function: not planned
    assert code == 0 and not _statuses(report, "finite_difference")


def test_finite_differences_pass_for_a_correct_model(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    code, report = _run(
        write_spec, tmp_path, checks={"finite_difference": {"directions": 4, "batches": 2}}
    )
    assert code == 0
    fd = _statuses(report, "finite_difference")
    assert fd == {("float64", "manual"): "pass", ("float64", "autograd"): "pass"}
    cases = [c for c in report["cases"] if c["check"] == "finite_difference"]
    assert len(cases) == 4  # two batches x (manual, autograd)
    assert all(c["numel"] == 4 for c in cases)  # one element per direction


def test_finite_differences_catch_a_manual_bug(write_spec: SpecWriter, tmp_path: Path) -> None:
    code, report = _run(
        write_spec,
        tmp_path,
        gradients={"plugin": "bptt-no-recurrence"},
        dtypes=["float32"],
        checks={"finite_difference": {"directions": 4}},
    )
    assert code == 1
    fd = _statuses(report, "finite_difference")
    assert fd == {("float64", "manual"): "fail", ("float64", "autograd"): "pass"}


def test_repeat_flags_a_nondeterministic_gradient(write_spec: SpecWriter, tmp_path: Path) -> None:
    code, report = _run(
        write_spec,
        tmp_path,
        gradients={"plugin": "bptt-noisy"},
        dtypes=["float64"],
        tolerance={"mode": "allclose", "rtol": 1e-2, "atol": 1e-2},
        checks={"repeat": {"count": 3}},
    )
    assert code == 1
    assert set(_statuses(report, "gradients").values()) == {"pass"}  # loose enough
    assert set(_statuses(report, "repeat").values()) == {"fail"}  # but not repeatable


def test_repeat_passes_a_deterministic_gradient(write_spec: SpecWriter, tmp_path: Path) -> None:
    code, report = _run(write_spec, tmp_path, checks={"repeat": {"count": 2}})
    assert code == 0
    assert set(_statuses(report, "repeat").values()) == {"pass"}
