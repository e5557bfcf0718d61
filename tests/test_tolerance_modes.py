"""A tolerance mode is one entry in gradaudit.tolerance.MODES (and the spec schema's `Mode`):
comparison, reports and mutation ask the Tol, never branch on its mode's name. Shown with a
test-only mode registered here and nowhere else."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
import torch

from gradaudit.ci.report import tolerance_text
from gradaudit.compare import Comparison, check_all
from gradaudit.compare.measure import Scratch, measure
from gradaudit.report.mutation import resolution
from gradaudit.spec.common import Mode
from gradaudit.tolerance import EPS, MODES, Rule, Tol

PACKAGE = Path(__file__).resolve().parents[1] / "gradaudit"

# Test-only: allowed = rtol x the tensor's largest reference entry (one number per tensor).
RELATIVE = Rule(
    allowed=lambda tol, scale, error, batch: tol.rtol * scale,
    describe=lambda tol: f"relative {tol.rtol:g} of the largest entry",
    explain=lambda tol, allowed, error: f"allowed {allowed:.3g} = {tol.rtol:g} x max|autograd|",
)


@pytest.fixture
def relative(monkeypatch: pytest.MonkeyPatch) -> Tol:
    monkeypatch.setitem(MODES, "relative", RELATIVE)
    return Tol("relative", rtol=1e-3, eps=EPS["float32"])


def test_the_schema_lists_the_modes_the_tolerance_module_knows() -> None:
    assert set(typing.get_args(Mode)) == set(MODES) | {"auto"}


def _pair(error: float) -> tuple[torch.Tensor, torch.Tensor]:
    reference = torch.linspace(-2.0, 4.0, 600, dtype=torch.float32).reshape(20, 30)
    manual = reference.clone()
    manual[3, 7] += error
    return manual, reference


@pytest.mark.parametrize("screened", [True, False], ids=["screen", "full-measurement"])
def test_a_new_mode_is_applied_by_both_comparison_paths(relative: Tol, screened: bool) -> None:
    """allowed = 1e-3 x 4.0 = 4e-3: an error of 3e-3 passes at 75%, one of 5e-3 fails at 125%,
    whether the screen settles the batch or the full measurement does."""
    for error, passed in ((3e-3, True), (5e-3, False)):
        manual, reference = _pair(error)
        item = Comparison(manual, reference, relative)
        if screened:
            (found,) = check_all([item], 0.0, beat=[None])
        else:
            (found,) = measure([item], 4.0, Scratch())
        assert found.passed is passed
        assert found.budget == pytest.approx(error / 4e-3, rel=1e-3)
        assert found.allowed == pytest.approx(4e-3)


def test_a_new_mode_describes_and_explains_itself_everywhere(relative: Tol) -> None:
    assert relative.describe() == "relative 0.001 of the largest entry"
    assert relative.explain(4e-3, 0.0) == "allowed 0.004 = 0.001 x max|autograd|"
    assert tolerance_text({"mode": "relative", "rtol": 1e-3}) == relative.describe()
    assert relative.sensitivity(4.0, 0.0) == pytest.approx(1e-3)
    assert resolution(relative) == 4 * EPS["float32"]  # no summation-order floor declared
    assert not relative.needs_truth and not relative.elementwise
    assert relative.without_truth() is relative


def _branches(source: str) -> list[int]:
    """Lines comparing some `x.mode` with a mode's name."""
    names = set(MODES) | {"auto"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        on_mode = any(isinstance(s, ast.Attribute) and s.attr == "mode" for s in sides)
        constants = [c for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)]
        if on_mode and any(c.value in names for c in constants):
            found.append(node.lineno)
    return found


def test_no_module_outside_the_tolerance_module_branches_on_a_mode_name() -> None:
    """`x.mode == "baseline"` (or `in (...)`) anywhere else would make a new mode touch it."""
    found = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "tolerance.py"
        for line in _branches(path.read_text())
    ]
    assert found == []


def test_the_branch_finder_finds_branches() -> None:
    source = 'if tol.mode in ("baseline", "ulps"):\n    pass\nx = s.tol.mode == "exact"\n'
    assert _branches(source) == [1, 3]
    assert _branches('if job.mode == "plan":\n    pass\n') == []
