"""A Triton kernel that crashes the process running it is a red case, not a dead audit:
the gallery's out-of-bounds store (dx written with x's strides) kills the executor on the
`strided` layout; that variant is an error naming the signal, a new executor runs the rest,
and `expanded` (where the same bug gives wrong values, and sometimes crashes too: the
interpreter's heap decides) is red as it should be.
gradaudit sets TRITON_INTERPRET itself for this cpu-only run, and says so in the report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import run_gradaudit

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed: pip install 'gradaudit[triton]'",
)

SPEC = """\
name: triton-crash
op:
  candidate: gradaudit_triton.gallery:TritonDxStridesOfX
  reference: triton-rmsnorm-reference
  dims: {N: 6, D: 16}
  inputs:
    x: {shape: [N, D]}
    weight: {shape: [D], distribution: uniform, low: 0.5, high: 1.5}
  args: {eps: 1.0e-6}
dtypes: [float32]
"""


def test_a_kernel_that_kills_its_process_is_red_for_its_variant_and_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # gradaudit sets it
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, "utf-8")
    report = tmp_path / "out.json"
    result = run_gradaudit("run", spec, "--json", report)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(report.read_text("utf-8"))
    assert data["run"]["triton"].startswith("kernels run under Triton's interpreter")
    bad = {
        (g["check"], t["tensor"]): (t["status"], (t["errors"] or [""])[0])
        for g in data["groups"]
        for t in g["tensors"]
        if t["status"] != "pass"
    }
    # expanded: the same bug writes wrong values, or (heap luck) crashes that variant too
    status, error = bad[("variant:expanded", "grad.x")]
    assert status == "fail" or (status == "error" and "was killed by SIG" in error), error
    crashed = {k: v for k, v in bad.items() if k[0] == "variant:strided"}
    assert set(crashed) == {("variant:strided", n) for n in ("out", "grad.x", "grad.weight")}
    for status, error in crashed.values():
        assert status == "error" and "was killed by SIG" in error, error
    expanded = {("variant:expanded", n) for n in ("out", "grad.x", "grad.weight")}
    assert set(crashed) < set(bad) <= set(crashed) | expanded  # no other variant is red
    assert len(data["groups"]) == 10  # every planned variant ran and reported
