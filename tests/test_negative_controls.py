"""gradaudit catches realistic BPTT bugs: exactly the wrong tensors fail, end to end.

The wrong gradients live in tests/negative_controls.py, a plugin file a spec loads with
`plugins: [...]`. First each bug's effect is measured in-process against autograd (which tensors
really are wrong, and by how much); then the CLI must report exactly those tensors in its JUnit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from gradaudit_charrnn.bptt import charrnn_bptt
from gradaudit_charrnn.model import build_charrnn
from junitparser import Error, Failure, JUnitXml, Skipped

import tests.negative_controls as nc
from gradaudit import Batch

NEGATIVE_CONTROLS = Path(__file__).resolve().with_name("negative_controls.py")
T = 5  # block_size of the CLI runs (the small spec's)
WRONG = [
    "bptt-sign-error",
    "bptt-tanh-sign",
    "bptt-over-T",
    "bptt-W-transposed",
    "bptt-no-recurrence",
]
DTYPES = ["float32", "float64"]
CliRun = Callable[..., "subprocess.CompletedProcess[str]"]


# --- the controls themselves, measured in-process -------------------------------------------


def test_plugin_registers_every_control() -> None:
    registered: dict[str, Any] = {}
    nc.register_gradients(register=registered.__setitem__)
    assert set(registered) == {*WRONG, "bptt-raises", "bptt-correct", "bptt-rewritten"}
    assert registered["bptt-correct"] is charrnn_bptt
    assert set(nc.EXPECTED_WRONG) == set(WRONG)


def audit_in_process(
    name: str, dtype: torch.dtype, B: int = 4, seed: int = 0
) -> tuple[dict[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    """(autograd's gradients, the named control's) on a random batch like the CLI's."""
    torch.manual_seed(seed)
    model = build_charrnn(30, d_model=8, n_hidden=16, h0=0.1).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    batch = Batch(
        {
            "inputs": torch.randint(0, 30, (B, T), generator=gen),
            "targets": torch.randint(0, 30, (B, T)),
        }
    )
    forward = model(batch.inputs, batch.targets)
    targets = dict(forward.intermediates) | dict(model.named_parameters())
    reference = torch.autograd.grad(forward.loss, list(targets.values()))
    registered: dict[str, Any] = {}
    nc.register_gradients(register=registered.__setitem__)
    with torch.no_grad():
        manual = registered[name](model, batch, forward.detached())
    return dict(zip(targets, reference, strict=True)), manual


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPES)
@pytest.mark.parametrize("name", [*WRONG, "bptt-rewritten", "bptt-correct"])
def test_each_control_is_wrong_exactly_where_expected(name: str, dtype: torch.dtype) -> None:
    """Right tensors agree with autograd to rounding; wrong ones are off by O(1) relative."""
    reference, manual = audit_in_process(name, dtype)
    assert set(manual) == set(reference) == set(nc.tensor_names(T))
    wrong = nc.expected_wrong(name, T) if name in nc.EXPECTED_WRONG else set()
    for tensor, ref in reference.items():
        got = manual[tensor]
        if tensor in wrong:
            relative = float((got - ref).abs().max() / ref.abs().max())
            assert relative > 0.05, f"{name}: {tensor} is only {relative:.2e} off"
            assert not torch.allclose(got, ref, rtol=1.3e-6, atol=1e-5), tensor  # float32's default
        elif dtype == torch.float64:
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12, msg=tensor)
        else:
            torch.testing.assert_close(got, ref, msg=tensor)


def test_last_hidden_state_gradient_does_not_depend_on_the_recurrence() -> None:
    """Why h.T, logits and V stay right under the recurrence and tanh' bugs."""
    _, correct = audit_in_process("bptt-rewritten", torch.float64)  # same arithmetic, no bug
    for name in ("bptt-W-transposed", "bptt-no-recurrence", "bptt-tanh-sign"):
        _, wrong = audit_in_process(name, torch.float64)
        for tensor in ("logits", f"h.{T}", "V.weight", "V.bias"):
            torch.testing.assert_close(wrong[tensor], correct[tensor], rtol=0, atol=0)
        assert not torch.allclose(wrong[f"h.{T - 1}"], correct[f"h.{T - 1}"])


def test_over_t_is_exact_at_batch_size_one_and_off_by_b_otherwise() -> None:
    _, one_wrong = audit_in_process("bptt-over-T", torch.float64, B=1)
    _, one_right = audit_in_process("bptt-rewritten", torch.float64, B=1)
    for tensor, got in one_wrong.items():
        assert torch.equal(got, one_right[tensor]), tensor
    _, wrong = audit_in_process("bptt-over-T", torch.float64, B=4)
    _, right = audit_in_process("bptt-correct", torch.float64, B=4)
    for tensor, got in wrong.items():
        torch.testing.assert_close(got, 4 * right[tensor], rtol=1e-10, atol=1e-12)


# --- end to end through the CLI ---------------------------------------------------------------

CLI_RUNS: dict[str, tuple[str, dict[str, Any]]] = {  # run id -> (gradients plugin, batches)
    **{name: (name, {}) for name in [*WRONG, "bptt-raises", "bptt-correct"]},
    "bptt-over-T@B1": ("bptt-over-T", {"size": 1}),
}


@pytest.fixture(scope="module")
def cli_runs(
    tmp_path_factory: pytest.TempPathFactory,
    run_cli: CliRun,
    spec_dict: Callable[..., dict[str, Any]],
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every control's audit, run concurrently (each is a separate `gradaudit run`)."""
    jobs: dict[str, tuple[Path, Path]] = {}  # run id -> (spec, junit)
    for run_id, (plugin, batches) in CLI_RUNS.items():  # tmp dirs: in this thread, not the pool's
        folder = tmp_path_factory.mktemp(run_id.replace("@", "-"))
        spec = spec_dict(plugins=[str(NEGATIVE_CONTROLS)], gradients={"plugin": plugin})
        spec["batches"] = spec["batches"] | batches
        assert spec["data"]["options"]["block_size"] == T and spec["dtypes"] == DTYPES
        assert spec["batches"]["size"] > 1 or batches  # the B > 1 runs really are B > 1
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
        jobs[run_id] = (folder / "spec.yaml", folder / "out.xml")

    def one(run_id: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        spec_path, junit = jobs[run_id]
        env = {"OMP_NUM_THREADS": "1"}  # several runs share the cores: no thread oversubscription
        return run_cli("run", spec_path, "--junit-xml", junit, cwd=spec_path.parent, env=env), junit

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


def junit_results(path: Path) -> dict[str, dict[str, str]]:
    """suite name -> testcase name -> pass/failure/error/skipped, checking the counts agree."""
    results: dict[str, dict[str, str]] = {}
    for suite in JUnitXml.fromfile(str(path)):
        cases: dict[str, str] = {}
        for case in suite:
            assert case.classname == "gradaudit.small.cpu." + suite.name.split(",")[1][:-1]
            assert case.name not in cases, f"duplicate testcase {case.name}"
            kinds = {type(r) for r in case.result}
            assert len(case.result) <= 1
            cases[case.name] = (
                "failure"
                if Failure in kinds
                else "error"
                if Error in kinds
                else "skipped"
                if Skipped in kinds
                else "pass"
            )
        assert suite.tests == len(cases)
        assert suite.failures == sum(v == "failure" for v in cases.values())
        assert suite.errors == sum(v == "error" for v in cases.values())
        assert suite.skipped == sum(v == "skipped" for v in cases.values())
        results[suite.name] = cases
    return results


SUITES = {f"small[cpu,{dtype}]" for dtype in DTYPES}


@pytest.mark.parametrize("name", WRONG)
def test_cli_fails_exactly_the_wrong_tensors(
    name: str, cli_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    proc, junit = cli_runs[name]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    results = junit_results(junit)
    assert set(results) == SUITES
    expected = nc.expected_wrong(name, T)
    for suite, cases in results.items():
        assert set(cases) == set(nc.tensor_names(T)), suite
        failing = {tensor for tensor, status in cases.items() if status != "pass"}
        assert failing == expected, suite
        assert all(cases[tensor] == "failure" for tensor in expected), suite
    n_wrong = len(expected) * len(DTYPES)
    n_right = (len(nc.tensor_names(T)) - len(expected)) * len(DTYPES)
    assert f"{n_right} passed, {n_wrong} failed, 0 errors, 0 skipped" in proc.stdout
    for line in proc.stdout.splitlines():  # the table agrees with the JUnit
        cells = line.split()
        if len(cells) > 3 and cells[0] == "cpu" and cells[2] in nc.tensor_names(T):
            assert cells[-1] == ("FAIL" if cells[2] in expected else "PASS"), line


def test_cli_reports_a_crashing_gradient_as_errors_and_keeps_going(
    cli_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    proc, junit = cli_runs["bptt-raises"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    results = junit_results(junit)
    assert set(results) == SUITES  # the float64 group still ran after float32's errors
    for cases in results.values():
        assert cases == dict.fromkeys(nc.tensor_names(T), "error")
    for suite in JUnitXml.fromfile(str(junit)):
        for case in suite:
            (error,) = case.result
            assert "RuntimeError: boom" in (error.message or "")
    assert "0 passed, 0 failed, 24 errors, 0 skipped" in proc.stdout


def test_cli_passes_the_correct_control(
    cli_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    proc, junit = cli_runs["bptt-correct"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = junit_results(junit)
    assert set(results) == SUITES
    for cases in results.values():
        assert cases == dict.fromkeys(nc.tensor_names(T), "pass")


def test_over_t_is_not_caught_at_batch_size_one(
    cli_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]],
) -> None:
    """1/T == 1/(B*T) when B == 1: an audit needs B > 1 to catch this (see the B > 1 run)."""
    proc, junit = cli_runs["bptt-over-T@B1"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batches of inputs 1x5" in proc.stdout
    for cases in junit_results(junit).values():
        assert set(cases.values()) == {"pass"}
    assert cli_runs["bptt-over-T"][0].returncode == 1
