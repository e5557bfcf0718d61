"""`gradaudit mutate`: mutants, kill/survive verdicts, sensitivity, exit codes and JUnit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from junitparser import Failure as JFailure
from junitparser import JUnitXml, Skipped

from gradaudit.compare import Tol
from gradaudit.mutate import generic_mutants, sensitivity
from gradaudit.types import Batch
from tests.conftest import REPO, SpecWriter, run_gradaudit

BATCH = Batch(
    {"inputs": torch.zeros(4, 3, dtype=torch.long), "targets": torch.zeros(4, 3, dtype=torch.long)}
)


def test_generic_mutants_change_what_they_say() -> None:
    grads = {
        "W": torch.arange(9.0).reshape(3, 3),
        "b": torch.tensor([1.0, -2.0, 3.0]),
        "h.1": torch.ones(2),
        "h.2": 2 * torch.ones(2),
    }
    mutants = {m.name: m for m in generic_mutants(list(grads))}

    def mutated(name: str) -> dict[str, torch.Tensor]:
        out = mutants[name].apply(grads, BATCH)
        assert out is not None
        return out

    assert torch.equal(mutated("scale(0.01):W")["W"], grads["W"] * 1.01)
    assert torch.equal(mutated("sign:b")["b"], -grads["b"])
    assert torch.equal(mutated("transpose:W")["W"], grads["W"].T)
    assert mutants["transpose:b"].apply(grads, BATCH) is None  # not square: not applicable
    zeroed = mutated("zero-row:W")["W"]
    assert zeroed[2].abs().sum() == 0 and torch.equal(zeroed[:2], grads["W"][:2])
    assert torch.equal(mutated("times-B:b")["b"], 4 * grads["b"])
    assert torch.equal(mutated("times-T:b")["b"], 3 * grads["b"])
    swapped = mutated("swap-steps:h.1,h.2")
    assert torch.equal(swapped["h.1"], grads["h.2"]) and torch.equal(swapped["h.2"], grads["h.1"])
    element = mutated("element:b")["b"]
    assert (element != grads["b"]).sum() == 1 and element[2] == pytest.approx(3.03)
    assert "swap-steps:h.2,h.3" not in mutants


def test_sensitivity_matches_the_tolerance() -> None:
    assert sensitivity(Tol("allclose", 1e-6, 1e-5), 0.1, 0.0) == pytest.approx(1e-6 + 1e-4)
    baseline = Tol("baseline", k=2.0, floor_ulps=2.0, eps=2.0**-23)
    assert sensitivity(baseline, 0.5, 1e-8) == pytest.approx((2e-8 + 2 * 2.0**-23 * 0.5) / 0.5)


def test_shipped_style_spec_kills_every_mutant(write_spec: SpecWriter, tmp_path: Path) -> None:
    junit = tmp_path / "mutants.xml"
    result = run_gradaudit("mutate", write_spec(), "--junit-xml", junit, "--fail-on-survivor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu/float32: mutation score 100.0%" in result.stdout
    assert "cpu/float64: mutation score 100.0%" in result.stdout
    assert "0 survivors" in result.stdout
    suites = list(JUnitXml.fromfile(str(junit)))
    assert [s.name for s in suites] == ["small[cpu,float32,mutants]", "small[cpu,float64,mutants]"]
    for suite in suites:
        assert not any(isinstance(r, JFailure) for case in suite for r in case.result)


def test_loose_tolerance_lets_mutants_survive(write_spec: SpecWriter, tmp_path: Path) -> None:
    loose = {"mode": "allclose", "rtol": 0.05, "atol": 1e-3, "systematic": False}
    spec = write_spec(tolerance=loose, dtypes=["float64"])
    junit = tmp_path / "mutants.xml"
    warn = run_gradaudit("mutate", spec, "--junit-xml", junit)
    assert warn.returncode == 0, warn.stdout + warn.stderr  # survivors only warn by default
    assert "WARNING cpu/float64 scale(0.001):" in warn.stdout
    assert "the tolerance is looser than it needs to be" in warn.stdout
    cases = [c for s in JUnitXml.fromfile(str(junit)) for c in s]
    survived = [c for c in cases if any(isinstance(r, Skipped) for r in c.result)]
    assert any(c.name.startswith("scale(0.001):") for c in survived)
    assert any(c.name.startswith("sign:") for c in cases if not c.result)  # sign: still killed

    gate = run_gradaudit("mutate", spec, "--junit-xml", junit, "--fail-on-survivor")
    assert gate.returncode == 1
    failures = [c for s in JUnitXml.fromfile(str(junit)) for c in s if c.result]
    assert any(isinstance(r, JFailure) for c in failures for r in c.result)


def test_min_score_gates_on_the_score_not_on_survivors(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    """--min-score fails a device/dtype whose score is under it (exit 1, a failing score
    case in JUnit, a console line), and passes one at or over it, survivors or not."""
    spec = write_spec(
        tolerance={"mode": "allclose", "rtol": 0.05, "atol": 1e-3}, dtypes=["float64"]
    )
    junit = tmp_path / "mutants.xml"
    low = run_gradaudit("mutate", spec, "--junit-xml", junit, "--min-score", "99.5")
    assert low.returncode == 1, low.stdout + low.stderr
    found = re.search(r"cpu/float64: mutation score ([\d.]+)%", low.stdout)
    assert found is not None, low.stdout
    score = float(found.group(1))
    assert 0 < score < 99.5
    assert f"cpu/float64: mutation score {score:.1f}% is under --min-score 99.5%" in low.stdout
    cases = {c.name: c for s in JUnitXml.fromfile(str(junit)) for c in s}
    gate = cases.pop("mutation score >= 99.5%")
    assert any(isinstance(r, JFailure) for r in gate.result)
    assert not any(isinstance(r, JFailure) for c in cases.values() for r in c.result)  # warnings

    met = run_gradaudit("mutate", spec, "--junit-xml", junit, "--min-score", str(score))
    assert met.returncode == 0, met.stdout + met.stderr
    assert "WARNING cpu/float64" in met.stdout and "under --min-score" not in met.stdout
    cases = {c.name: c for s in JUnitXml.fromfile(str(junit)) for c in s}
    assert cases[f"mutation score >= {score:g}%"].result == []

    bad = run_gradaudit("mutate", spec, "--min-score", "101")
    assert bad.returncode == 2 and "101" in bad.stderr and "Traceback" not in bad.stderr


def test_a_gate_with_nothing_scored_fails() -> None:
    """A device/dtype where every mutant is equivalent or not applicable scores 1.0 by
    convention; --min-score must not read that as a pass."""
    from gradaudit.mutate import Gate, Mutant, MutantResult, MutationReport

    equivalent = MutantResult(Mutant("zero", "b", lambda g, b: None), True, False)
    report = MutationReport("cpu", "float32", [equivalent])
    assert report.score() == 1.0 and not report.counted()
    assert "nothing was scored" in str(Gate(min_score=0.0).short(report))
    assert Gate(min_score=0.0).fails([report])
    assert not Gate(fail_on_survivor=True).fails([report])


def test_mutate_needs_a_green_audit(write_spec: SpecWriter) -> None:
    spec = write_spec(
        plugins=[str(REPO / "tests" / "negative_controls.py")],
        gradients={"plugin": "bptt-sign-error"},
    )
    result = run_gradaudit("mutate", spec)
    assert result.returncode == 1
    assert "not green" in result.stdout
