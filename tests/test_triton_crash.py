"""A Triton kernel that crashes the process running it is a red case, not a dead audit:
the gallery's out-of-bounds store (dx written with x's strides) corrupts the heap on the
`strided` and `expanded` layouts; under the interpreter the heap decides whether that is a
wrong value or a crash, and when. Either way those variants are red (a crash an error naming
the signal), a new executor runs the rest, and nothing else is red: in gradaudit run, under
pytest and in check_op(isolate=True). tests/test_ops_engine.py crashes on purpose, every
time. gradaudit sets TRITON_INTERPRET itself for this cpu-only run, and says so."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_gradaudit

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


def _red_only_where_the_store_is_out_of_bounds(bad: dict[tuple[str, str], tuple[str, str]]) -> None:
    """strided and expanded write out of bounds: their grad.x is red, as a wrong value or a
    crash (under the interpreter the heap decides which, and when), and nothing else is red;
    a crash is an error naming the signal."""
    layouts = ("variant:strided", "variant:expanded")
    assert {(c, "grad.x") for c in layouts} <= set(bad), bad
    assert all(check in layouts for check, _ in bad), bad
    for status, error in bad.values():
        assert status == "fail" or (status == "error" and "was killed by SIG" in error), error


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
    assert data["run"]["triton"].startswith("Triton kernels run under Triton's interpreter")
    bad = {
        (g["check"], t["tensor"]): (t["status"], (t["errors"] or [""])[0])
        for g in data["groups"]
        for t in g["tensors"]
        if t["status"] != "pass"
    }
    _red_only_where_the_store_is_out_of_bounds(bad)
    assert len(data["groups"]) == 12  # every planned variant ran and reported (eps=0.5, zeros too)


SHIFT = '''
"""y = x + eps: a kernel that calls .to on a Python float, which compiles for a GPU but
which Triton's interpreter cannot run (as five of seven Liger-Kernel ops)."""
import torch
import triton
import triton.language as tl


@triton.jit
def shift_kernel(x_ptr, y_ptr, eps, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    mask = i < n
    x = tl.load(x_ptr + i, mask=mask)
    tl.store(y_ptr + i, x + eps.to(tl.float32), mask=mask)


class Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps=1e-6):
        flat = x.contiguous().reshape(-1)
        y = torch.empty_like(flat)
        shift_kernel[(1,)](flat, y, eps, flat.numel(), BLOCK=triton.next_power_of_2(flat.numel()))
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        return dy, None


def reference(x, eps=1e-6):
    return x + eps
'''

SHIFT_SPEC = """\
name: triton-interpreter-limit
op:
  candidate: triton_shift:Shift
  reference: triton_shift:reference
  inputs:
    x: {shape: [4, 8]}
  variants: false
dtypes: [float32]
"""


def test_a_kernel_the_interpreter_cannot_run_is_an_error_saying_so_not_a_failure(
    tmp_path: Path,
) -> None:
    (tmp_path / "triton_shift.py").write_text(SHIFT, "utf-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SHIFT_SPEC, "utf-8")
    report = tmp_path / "out.json"
    result = run_gradaudit(
        "run", spec, "--json", report, env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path
    )
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(report.read_text("utf-8"))
    tensors = [t for g in data["groups"] for t in g["tensors"]]
    assert tensors and {t["status"] for t in tensors} == {"error"}
    for t in tensors:
        (error,) = set(t["errors"])
        assert error.startswith(
            "candidate: Triton's interpreter cannot run this kernel: InterpreterError:"
        ), error
    plan = run_gradaudit("plan", spec, env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    note = "note: Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1)"
    assert plan.returncode == 0 and note in plan.stdout.splitlines(), plan.stdout


ISOLATED = """
import json, sys
import torch
from gradaudit import check_op
from gradaudit_triton.gallery import BUGS
from gradaudit_triton.rmsnorm import rmsnorm_reference

result = check_op(
    BUGS["triton-rmsnorm-dx-strides-of-x"][0].apply, rmsnorm_reference,
    inputs={"x": (6, 16), "weight": (16,)}, dtypes=["float32"], isolate=True,
    raise_on_failure=False,
)
print(json.dumps([
    [g.check, t.tensor, t.status, (t.errors or [""])[0]]
    for g in result.groups for t in g.tensors
]))
"""


def test_check_op_isolated_survives_the_kernel_that_kills_its_process(tmp_path: Path) -> None:
    """In-process, this kernel can kill the caller (test_triton_ops); with isolate=True a
    crash is an error of its variant, and every other variant still runs in a new child."""
    done = subprocess.run(
        [sys.executable, "-c", ISOLATED],
        cwd=tmp_path,
        env=cli_env({"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    _red_only_where_the_store_is_out_of_bounds(
        {(c, t): (s, e) for c, t, s, e in rows if s != "pass"}
    )
    assert len({c for c, _, _, _ in rows}) == 12  # every variant reported (eps=0.5, zeros too)


def test_under_pytest_the_crashing_variant_fails_its_items_and_the_rest_pass(
    tmp_path: Path,
) -> None:
    """The same spec collected by pytest: the out-of-bounds variants' items fail, pytest
    itself survives, and the variants the kernel does not break pass."""
    spec = tmp_path / "crash.yaml"
    spec.write_text(SPEC, "utf-8")
    env = cli_env()
    env.pop("TRITON_INTERPRET", None)  # gradaudit sets it in its executor
    env["COLUMNS"] = "1000"  # the short summary's lines whole
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(spec), "-q", "-p", "no:cacheprovider", "-rfE"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert all("strided" in line or "expanded" in line for line in failed), failed
    for layout in ("strided", "expanded"):
        assert any(f"grad.x[cpu-float32-variant:{layout}]" in line for line in failed), failed
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and int(summary.split(" passed")[0].split()[-1]) >= 20, summary
