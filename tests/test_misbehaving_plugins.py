"""Plugins that break the rules are reported per tensor, and the rest of the run goes on.

The plugins live in tests/misbehaving_plugins.py (a plugin file loaded through the spec's
`plugins:` list). Each test runs one small CharRNN audit (cpu, float32 and float64, 2 batches)
through the CLI entry point `gradaudit.cli.main` in this process (torch is imported once, and
runs take a fraction of a second); the `slow` variant runs the same cases through the real
console script in a subprocess. Every run must end with exit 1 (never 3, never a traceback),
an ERROR row and a per-tensor message for exactly the affected tensors on the console, the same
message on an `<error>` testcase in the JUnit, and the well-behaved dtype passing.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from junitparser import Error, Failure, JUnitXml, Skipped

import tests.misbehaving_plugins as mis
from gradaudit.types import Batch, Forward
from tests.conftest import ZYGOTE, run_gradaudit, small_spec
from tests.negative_controls import tensor_names

PLUGINS = Path(__file__).resolve().with_name("misbehaving_plugins.py")
T = 5  # the small spec's block_size
TENSORS = tensor_names(T)
DTYPES = ["float32", "float64"]
BATCHES = [(0, 3), (1, 4)]  # (index, seed) of the small spec's two batches
ROW = re.compile(r"^(cpu) +(float32|float64) +(\S+) .* (PASS|FAIL|ERROR|SKIP)\b")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one thread is ten times faster than several."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- running the CLI ---------------------------------------------------------------------------


@dataclass
class Run:
    code: object
    out: str
    err: str
    junit: Path
    json: Path
    seconds: float

    def rows(self) -> dict[tuple[str, str], str]:
        """(dtype, tensor) -> PASS/FAIL/ERROR/SKIP from the console table."""
        found: dict[tuple[str, str], str] = {}
        for line in self.out.splitlines():
            match = ROW.match(line)
            if match:
                key = (match[2], match[3])
                assert key not in found, f"row {key} printed twice:\n{self.out}"
                found[key] = match[4]
        return found

    def details(self) -> dict[tuple[str, str, str], str]:
        """(word, dtype, tensor) -> the console's detail block for a FAIL/ERROR tensor."""
        blocks: dict[tuple[str, str, str], str] = {}
        for block in re.split(r"^(?=--- )", self.out, flags=re.M)[1:]:
            title = re.match(r"--- (FAIL|ERROR) cpu/(float32|float64) (.+)\n", block)
            assert title, block
            # One block per distinct error: "--- ERROR cpu/float64 12 tensors: logits, h.1"
            names = (
                title[3].split(": ", 1)[1].split(", ") if " tensors: " in title[3] else [title[3]]
            )
            for name in names:
                assert (title[1], title[2], name) not in blocks, f"{name} in two blocks"
                blocks[(title[1], title[2], name)] = block
        return blocks

    def junit_cases(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(dtype, tensor) -> (pass/failure/error/skipped, message) as junitparser reads it."""
        found: dict[tuple[str, str], tuple[str, str]] = {}
        for suite in JUnitXml.fromfile(str(self.junit)):
            dtype = re.fullmatch(r"small\[cpu,(float32|float64)\]", str(suite.name))
            assert dtype, suite.name
            for case in suite:
                outcome, message = "pass", ""
                for result in case.result:
                    for kind, label in ((Error, "error"), (Failure, "failure"), (Skipped, "skip")):
                        if isinstance(result, kind):
                            outcome, message = label, result.message or ""
                found[(dtype[1], case.name)] = (outcome, message)
        return found

    def json_cases(self) -> list[dict[str, Any]]:
        doc = json.loads(self.json.read_text(encoding="utf-8"))
        assert doc["stopped"] is None
        cases: list[dict[str, Any]] = doc["cases"]
        return cases


Runner = Callable[..., Run]


def _write_spec(folder: Path, *, model: str | None = None, gradients: str | None = None) -> Path:
    overrides: dict[str, Any] = {"plugins": [str(PLUGINS)]}
    if model:
        options = small_spec()["model"]["options"]
        overrides["model"] = {"plugin": model, "options": options}
    if gradients:
        overrides["gradients"] = {"plugin": gradients}
    spec = small_spec(**overrides)
    assert spec["dtypes"] == DTYPES and spec["devices"] == ["cpu"]
    assert (spec["batches"]["count"], spec["batches"]["seed"]) == (2, 3)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Runner:
    """audit(model=..., gradients=..., *args) -> Run, through `gradaudit.cli.main` in-process."""
    from gradaudit.cli import main

    for name in list(os.environ):
        ours = name.startswith("GRADAUDIT_") and name != ZYGOTE  # the test zygote stays
        if ours or name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
            monkeypatch.delenv(name)
    runs = iter(range(1000))

    def run(*args: str, model: str | None = None, gradients: str | None = None) -> Run:
        folder = tmp_path / f"run{next(runs)}"
        folder.mkdir()
        spec = _write_spec(folder, model=model, gradients=gradients)
        junit, json_path = folder / "out.xml", folder / "out.json"
        argv = ["gradaudit", "run", str(spec), "--junit-xml", str(junit), "--json", str(json_path)]
        monkeypatch.setattr(sys, "argv", [*argv, "--no-color", *args])
        capsys.readouterr()
        start = time.perf_counter()
        with pytest.raises(SystemExit) as info:
            main()
        seconds = time.perf_counter() - start
        captured = capsys.readouterr()
        return Run(info.value.code, captured.out, captured.err, junit, json_path, seconds)

    return run


@pytest.fixture
def audit_subprocess(tmp_path: Path) -> Runner:
    """The same as `audit`, through the installed console script in a subprocess."""
    runs = iter(range(1000))

    def run(*args: str, model: str | None = None, gradients: str | None = None) -> Run:
        folder = tmp_path / f"run{next(runs)}"
        folder.mkdir()
        spec = _write_spec(folder, model=model, gradients=gradients)
        junit, json_path = folder / "out.xml", folder / "out.json"
        start = time.perf_counter()
        proc = run_gradaudit(
            "run",
            spec,
            "--junit-xml",
            junit,
            "--json",
            json_path,
            "--no-color",
            *args,
            env={"OMP_NUM_THREADS": "1"},
        )
        seconds = time.perf_counter() - start
        return Run(proc.returncode, proc.stdout, proc.stderr, junit, json_path, seconds)

    return run


# --- what a misbehaving plugin's run must look like --------------------------------------------


@dataclass(frozen=True)
class Case:
    """One misbehaviour: which plugin, where it bites, and the message each tensor gets."""

    gradients: str | None = None
    model: str | None = None
    dtype: str = "float64"  # the dtype it misbehaves in; the other one must pass
    tensors: tuple[str, ...] = tuple(TENSORS)  # the tensors it affects
    message: str = ""  # a regex for the per-tensor message (after "batch k (seed s): ")
    outcome: str = "error"  # error, or failure for a wrong value (NaN, Inf)
    batches: tuple[tuple[int, int], ...] = tuple(BATCHES)  # the batches it misbehaves on


def _plugin(case: Case) -> str:
    return case.gradients or case.model or ""


CASES = {
    "forward-raises": Case(
        model="mis-forward-raises",
        dtype="float32",
        message=r"model 'mis-forward-raises' forward/autograd: RuntimeError: "
        + re.escape(mis.FORWARD_MESSAGE),
    ),
    "forward-modifies-batch": Case(
        model="mis-forward-modifies-batch",
        dtype="float32",
        message=r"model 'mis-forward-modifies-batch' modified the batch in place",
    ),
    "raises": Case(
        gradients="mis-raises",
        message=r"gradients 'mis-raises' raised RuntimeError: " + re.escape(mis.RAISE_MESSAGE),
    ),
    "wrong-shape": Case(
        gradients="mis-wrong-shape",
        tensors=("V.bias",),
        message=r"gradient has shape \((\d+),\), autograd's is \((\d+),\)",
    ),
    "wrong-dtype": Case(
        gradients="mis-wrong-dtype",
        tensors=("V.bias",),
        message=r"gradient has dtype torch\.float32, autograd's is torch\.float64",
    ),
    "wrong-device": Case(
        gradients="mis-wrong-device",
        tensors=("V.bias",),
        message=r"gradient has device meta, autograd's is cpu",
    ),
    "non-tensor": Case(
        gradients="mis-non-tensor",
        tensors=("V.bias",),
        message=r"gradient is a list, not a tensor",
    ),
    "missing": Case(
        gradients="mis-missing",
        tensors=("V.bias",),
        message=r"gradients 'mis-missing' gave no gradient",
    ),
    "unknown-name": Case(
        gradients="mis-unknown-name",
        tensors=("Z.weight",),
        message=r"gradients 'mis-unknown-name' returned 'Z\.weight', which the model does not have",
    ),
    "nan": Case(gradients="mis-nan", tensors=("V.bias",), outcome="failure"),
    "inf": Case(gradients="mis-inf", tensors=("W.weight",), outcome="failure"),
    "modifies-batch": Case(
        gradients="mis-modifies-batch",
        message=r"gradients 'mis-modifies-batch' modified the batch in place",
    ),
    "returns-param": Case(
        gradients="mis-returns-param",
        tensors=("V.bias",),
        message=r"gradient requires grad: return plain tensors",
    ),
    "requires-grad": Case(
        gradients="mis-requires-grad",
        tensors=("V.bias",),
        message=r"gradient requires grad: return plain tensors",
    ),
    "view-of-param": Case(
        gradients="mis-view-of-param",
        tensors=("V.bias",),
        # Taken under no_grad, a view of a parameter still requires grad; either is an error.
        message=r"gradient (requires grad: return plain tensors"
        r"|shares memory with parameter V\.bias: return a new tensor)",
    ),
    "detached-param": Case(
        gradients="mis-detached-param",
        tensors=("V.bias",),
        message=r"gradient shares memory with parameter V\.bias: return a new tensor",
    ),
}


def check_run(run: Run, case: Case) -> None:
    """Exit 1, no traceback, and exactly `case.tensors` in `case.dtype` reported, with the
    message, on the console and in the JUnit; everything else passes."""
    everything = run.out + run.err
    assert run.code == 1, everything
    assert "Traceback" not in everything, everything
    assert "internal error" not in everything, everything
    assert run.err == "", run.err

    word = {"error": "ERROR", "failure": "FAIL"}[case.outcome]
    names = list(TENSORS) + [t for t in case.tensors if t not in TENSORS]
    expected = {
        (dtype, tensor): word if (dtype == case.dtype and tensor in case.tensors) else "PASS"
        for dtype in DTYPES
        for tensor in (names if dtype == case.dtype else TENSORS)
    }
    assert run.rows() == expected, run.out
    errors = len(case.tensors) if case.outcome == "error" else 0
    failures = len(case.tensors) - errors
    assert f"{len(expected) - len(case.tensors)} passed, {failures} failed, {errors} errors" in (
        run.out
    )

    # The per-tensor message, with the first batch it happened on; +N more for the others.
    first_index, first_seed = case.batches[0]
    more = f" \\(\\+{len(case.batches) - 1} more\\)" if len(case.batches) > 1 else ""
    details = run.details()
    assert set(details) == {(word, case.dtype, t) for t in case.tensors}, run.out
    junit = run.junit_cases()
    assert set(junit) == set(expected), sorted(junit)
    for tensor in case.tensors:
        block = details[(word, case.dtype, tensor)]
        outcome, message = junit[(case.dtype, tensor)]
        assert outcome == case.outcome, (tensor, outcome, message)
        if case.outcome == "error":
            at = r"(?: \(at \S+:\d+ in \w+\))?"  # where in the plugin it was raised
            verdict = rf"batch {first_index} \(seed {first_seed}\): (?:{case.message}){at}{more}"
            # the console: one block for the tensors the error hit, each batch named once
            hit = re.search(r"^in batch (.*?)(?: \(\d+ errors each.*)?:$", block, flags=re.M)
            assert hit, block
            for index, seed in case.batches:
                assert f"{index} (seed {seed})" in hit[1], block
            assert re.search(rf"^  (?:{case.message}){at}$", block, flags=re.M), block
            assert re.fullmatch(rf"{re.escape(tensor)}: {verdict}", message), message
        else:  # a NaN or an Inf where autograd has a finite value: a failed comparison
            assert re.search(r"^NaN/Inf disagreements: [1-9]\d*$", block, flags=re.M), block
            assert re.match(rf"{re.escape(tensor)}: \d+/\d+ elements .* beyond ", message)
    for key, (outcome, message) in junit.items():
        if key[0] != case.dtype or key[1] not in case.tensors:
            assert outcome == "pass", (key, outcome, message)

    # The JSON has a record per batch: the other dtype's all ran and passed.
    cases = run.json_cases()
    other = [c for c in cases if c["dtype"] != case.dtype and c["check"] == "gradients"]
    assert len(other) == len(TENSORS) * len(BATCHES)
    assert {c["status"] for c in other} == {"pass"}
    bad = {
        (c["tensor"], c["batch"])
        for c in cases
        if c["dtype"] == case.dtype and c["status"] == ("error" if errors else "fail")
    }
    assert bad == {(t, i) for t in case.tensors for i, _ in case.batches}


# --- setup errors: exit 2, one line ------------------------------------------------------------


def test_model_factory_that_raises_is_a_one_line_setup_error(audit: Runner) -> None:
    run = audit(model="mis-build-raises")
    assert run.code == 2, run.out + run.err
    assert "Traceback" not in run.out + run.err
    assert run.out == ""  # nothing ran: no banner, no table
    (line,) = run.err.splitlines()
    assert line.startswith("gradaudit: error: ")
    assert line.endswith(
        f"model plugin 'mis-build-raises' failed to build: RuntimeError: {mis.BUILD_MESSAGE} "
        f"(at {mis.__file__}:{mis.build_raises.__code__.co_firstlineno + 1} in build_raises)"
    ), line
    # The reports (written before loading, for kills) say why the run could not start.
    assert "the run could not start: " in run.junit.read_text(encoding="utf-8")
    assert json.loads(run.json.read_text(encoding="utf-8"))["stopped"].startswith(
        "the run could not start: "
    )


# --- misbehaving models: the affected dtype errors, the other passes --------------------------


def test_model_forward_that_raises(audit: Runner) -> None:
    check_run(audit(model="mis-forward-raises"), CASES["forward-raises"])


def test_model_forward_that_modifies_the_batch_in_place(audit: Runner) -> None:
    check_run(audit(model="mis-forward-modifies-batch"), CASES["forward-modifies-batch"])


# --- misbehaving manual gradients (float64 only) ----------------------------------------------


def test_gradient_that_raises(audit: Runner) -> None:
    check_run(audit(gradients="mis-raises"), CASES["raises"])


def test_gradient_of_the_wrong_shape(audit: Runner) -> None:
    check_run(audit(gradients="mis-wrong-shape"), CASES["wrong-shape"])


def test_gradient_of_the_wrong_dtype(audit: Runner) -> None:
    check_run(audit(gradients="mis-wrong-dtype"), CASES["wrong-dtype"])


def test_gradient_on_the_wrong_device(audit: Runner) -> None:
    check_run(audit(gradients="mis-wrong-device"), CASES["wrong-device"])


def test_gradient_that_is_not_a_tensor(audit: Runner) -> None:
    check_run(audit(gradients="mis-non-tensor"), CASES["non-tensor"])


def test_gradient_that_is_missing(audit: Runner) -> None:
    check_run(audit(gradients="mis-missing"), CASES["missing"])


def test_gradient_for_a_tensor_the_model_does_not_have(audit: Runner) -> None:
    check_run(audit(gradients="mis-unknown-name"), CASES["unknown-name"])


def test_gradient_with_a_nan_fails_its_tensor(audit: Runner) -> None:
    check_run(audit(gradients="mis-nan"), CASES["nan"])


def test_gradient_with_an_inf_fails_its_tensor(audit: Runner) -> None:
    check_run(audit(gradients="mis-inf"), CASES["inf"])


def test_gradient_that_modifies_the_batch_in_place(audit: Runner) -> None:
    check_run(audit(gradients="mis-modifies-batch"), CASES["modifies-batch"])


def test_gradient_that_returns_the_parameter_itself(audit: Runner) -> None:
    check_run(audit(gradients="mis-returns-param"), CASES["returns-param"])


def test_gradient_that_requires_grad(audit: Runner) -> None:
    check_run(audit(gradients="mis-requires-grad"), CASES["requires-grad"])


def test_gradient_that_is_a_view_of_a_parameter(audit: Runner) -> None:
    check_run(audit(gradients="mis-view-of-param"), CASES["view-of-param"])


def test_gradient_that_shares_a_parameters_memory(audit: Runner) -> None:
    check_run(audit(gradients="mis-detached-param"), CASES["detached-param"])


def test_gradient_that_modifies_the_parameters_in_place(audit: Runner) -> None:
    """W.weight doubled in place on batch 0 (both dtypes): every tensor of batch 0 errors, and
    batch 1 is computed from the restored weights: its records equal a clean run's."""
    run = audit(gradients="mis-modifies-params")
    everything = run.out + run.err
    assert run.code == 1 and "Traceback" not in everything and run.err == "", everything
    assert set(run.rows().values()) == {"ERROR"}
    assert len(run.rows()) == len(TENSORS) * len(DTYPES)
    junit = run.junit_cases()
    for (dtype, tensor), (outcome, message) in junit.items():
        assert outcome == "error", (dtype, tensor, message)
        assert message == (
            f"{tensor}: batch 0 (seed 3): gradients 'mis-modifies-params' "
            "modified parameter W.weight in place"
        )
        assert "in place" in run.details()[("ERROR", dtype, tensor)]

    clean = audit(gradients="charrnn-bptt")
    assert clean.code == 0, clean.out + clean.err

    def batch(r: Run, index: int) -> list[dict[str, Any]]:
        return [c for c in r.json_cases() if c["batch"] == index]

    assert {c["status"] for c in batch(run, 0)} == {"error"}
    assert len(batch(run, 1)) == len(TENSORS) * len(DTYPES)
    assert {c["status"] for c in batch(run, 1)} == {"pass"}  # float32 and float64
    # The same numbers: the weights were restored. (Batch 1 is the first compared batch of
    # `run` and so is described in full, where `clean` may only screen it: compare what both
    # measure on every batch.)
    measured = ("tensor", "dtype", "status", "exact", "max_abs", "budget", "mismatched")

    def numbers(cases: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [tuple(c[k] for k in measured) for c in cases]

    assert numbers(batch(run, 1)) == numbers(batch(clean, 1))


# --- a gradient slower than --timeout ----------------------------------------------------------


def test_slow_gradient_times_out_and_the_run_moves_on(audit: Runner) -> None:
    run = audit("--timeout", "1", gradients="mis-slow")
    everything = run.out + run.err
    assert run.code == 1 and "Traceback" not in everything and run.err == "", everything
    rows = run.rows()
    assert {t for (d, t), r in rows.items() if r == "ERROR"} == set(TENSORS)
    assert {r for (d, _), r in rows.items() if d == "float32"} == {"PASS"}
    assert {r for (d, _), r in rows.items() if d == "float64"} == {"ERROR"}
    for (dtype, _), (outcome, message) in run.junit_cases().items():
        if dtype == "float64":
            assert outcome == "error" and re.search("time", message, re.I), message
    # Both float64 batches were cut at 1 s, not left to sleep 3 s each: the case's own time
    # (the run's wall time also holds the executor's start, which load stretches).
    data = json.loads(run.json.read_text())
    (float64,) = [g for g in data["groups"] if g["dtype"] == "float64"]
    assert float64["seconds"] < len(BATCHES) * mis.SLOW_SECONDS - 1, float64["seconds"]


def test_timeout_error_names_the_limit(audit: Runner) -> None:
    run = audit("--timeout", "1", gradients="mis-slow")
    check_run(
        run,
        Case(gradients="mis-slow", message=re.escape("timed out after 1s (--timeout)")),
    )


# --- the same cases through the real console script (slow: a torch import per run) -----------


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n != "unknown-name"])
def test_through_the_console_script(audit_subprocess: Runner, name: str) -> None:
    case = CASES[name]
    check_run(audit_subprocess(model=case.model, gradients=case.gradients), case)


@pytest.mark.slow
def test_model_factory_that_raises_through_the_console_script(audit_subprocess: Runner) -> None:
    run = audit_subprocess(model="mis-build-raises")
    assert run.code == 2 and "Traceback" not in run.out + run.err, run.out + run.err
    assert len(run.err.splitlines()) == 1 and mis.BUILD_MESSAGE in run.err, run.err


@pytest.mark.slow
def test_slow_gradient_through_the_console_script(audit_subprocess: Runner) -> None:
    run = audit_subprocess("--timeout", "1", gradients="mis-slow")
    assert run.code == 1 and "Traceback" not in run.out + run.err, run.out + run.err
    assert {r for (d, _), r in run.rows().items() if d == "float64"} == {"ERROR"}
    assert {r for (d, _), r in run.rows().items() if d == "float32"} == {"PASS"}


GUARD_PATHS = ["cpu-digests", "device-tensors"]  # count_syncs stands in for a device


def guarded_batch(
    path: str,
    model: torch.nn.Module,
    batch: Batch,
    forward: Forward,
    manual: Callable[[], object] = lambda: None,
    forward_change: Callable[[], object] = lambda: None,
    kept: dict[str, object] | None = None,
) -> tuple[str, list[str]] | None:
    """One batch through the in-place guard as a pass runs it: `forward_change` happens
    where the model's forward runs, `manual` where the manual gradient does."""
    import contextlib

    from gradaudit.compare.syncs import Reads, count_syncs
    from gradaudit.targets.model.inplace import InPlaceGuard

    with count_syncs() if path == "device-tensors" else contextlib.nullcontext():
        guard, reads = InPlaceGuard(batch, kept), Reads()
        forward_change()
        guard.forward_done(batch, reads)
        guard.manual_starts(model, forward)
        with torch.no_grad():
            manual()
        guard.queue(model, forward, batch, reads, ran=True)
        return guard.verdict(model)


@pytest.mark.parametrize("path", GUARD_PATHS)
def test_a_nan_in_a_forward_tensor_is_not_taken_for_an_in_place_change(path: str) -> None:
    """The in-place guard compares bits: NaN equals itself there, a real change does not."""
    model = torch.nn.Linear(2, 2)
    hidden = torch.tensor([float("nan"), 1.0])
    forward = Forward(torch.tensor(0.0), {"h": hidden})
    batch = Batch({"inputs": torch.zeros(1)})

    def change() -> None:
        hidden[1] = 2.0
        model.weight[0, 0] += 1.0

    assert guarded_batch(path, model, batch, forward) is None
    found = guarded_batch(path, model, batch, forward, change)
    assert found == ("manual", ["parameter weight", "intermediate h"])


@pytest.mark.parametrize("path", GUARD_PATHS)
@pytest.mark.parametrize(
    "change",
    ["none", "param", "param.data", "numpy", "intermediate", "one-bit", "signed-zero", "batch"],
)
def test_the_in_place_guard_names_what_changed_on_both_paths(path: str, change: str) -> None:
    """The guard hashes on the CPU (xxh3-128 digests) and copies on a device: both name the
    same changes, including writes that bypass autograd's version counters and a change of
    one bit, put parameters back, and stay quiet otherwise."""
    model = torch.nn.Linear(3, 2)
    weight = model.weight.detach().clone()
    hidden = torch.arange(6.0).reshape(2, 3).t()  # not contiguous: laid out to compare
    batch = Batch({"inputs": torch.arange(4), "targets": torch.ones(4)})
    forward = Forward(torch.tensor(0.0), {"h": hidden})
    changes: dict[str, Callable[[], object]] = {
        "none": lambda: None,
        "param": lambda: model.weight[0, 0].add_(1.0),
        "param.data": lambda: model.weight.data[1, 2].fill_(-7.0),
        "numpy": lambda: model.bias.detach().numpy().__setitem__(0, 5.0),
        "intermediate": lambda: hidden[2, 1].fill_(float("nan")),
        "one-bit": lambda: hidden.view(torch.int32)[1, 0].bitwise_xor_(1),  # lowest mantissa bit
        "signed-zero": lambda: hidden[0, 0].fill_(-0.0),  # equal as numbers, not as bits
        "batch": lambda: batch["targets"][3].fill_(2.0),
    }
    expected = {
        "none": None,
        "param": ("manual", ["parameter weight"]),
        "param.data": ("manual", ["parameter weight"]),
        "numpy": ("manual", ["parameter bias"]),
        "intermediate": ("manual", ["intermediate h"]),
        "one-bit": ("manual", ["intermediate h"]),
        "signed-zero": ("manual", ["intermediate h"]),
        "batch": ("manual", ["the batch"]),
    }[change]
    assert guarded_batch(path, model, batch, forward, changes[change]) == expected
    assert torch.equal(model.weight.detach(), weight)  # put back (or never changed)


def test_the_in_place_guard_blames_the_forward_for_a_changed_batch() -> None:
    batch = Batch({"inputs": torch.arange(4)})
    model, forward = torch.nn.Linear(1, 1), Forward(torch.tensor(0.0), {})
    found = guarded_batch(
        "cpu-digests", model, batch, forward, forward_change=lambda: batch["inputs"].add_(1)
    )
    assert found == ("forward", [])


@pytest.mark.parametrize("path", GUARD_PATHS)
def test_the_in_place_guard_puts_back_tensors_of_any_dtype_and_size(path: str) -> None:
    """Tensors of mixed dtypes and odd sizes (float32 weights, int64 and float16 batch
    tensors): each change is named and the weight is put back in its dtype (once, laid end
    to end in one buffer, an int64 copy 20 bytes in could not be viewed to put it back)."""
    model = torch.nn.Linear(3, 1, bias=False)
    weight = model.weight.detach().clone()
    batch = Batch({"tokens": torch.arange(5), "half": torch.ones(3, dtype=torch.float16)})
    forward = Forward(torch.tensor(0.0), {"h": torch.ones(2)})

    def change() -> None:
        model.weight.mul_(2.0)
        batch["half"][0] = 7.0

    found = guarded_batch(path, model, batch, forward, change, kept={})
    assert found == ("manual", ["parameter weight", "the batch"])
    assert torch.equal(model.weight.detach(), weight)


@pytest.mark.parametrize("path", GUARD_PATHS)
def test_the_in_place_guard_puts_back_what_the_forward_left(path: str) -> None:
    """A forward may change a parameter (nn.Embedding(max_norm=...) renormalises rows): the
    guard must then put back the forward's values, not those of an earlier batch (on the
    CPU the parameters' copies are kept from batch to batch and made again when their
    digest changed)."""
    model = torch.nn.Linear(2, 2)
    batch = Batch({"inputs": torch.zeros(1)})
    forward = Forward(torch.tensor(0.0), {})
    kept: dict[str, object] = {}

    def one_batch(forward_change: float, manual_change: float) -> tuple[str, list[str]] | None:
        def renormalise() -> None:
            with torch.no_grad():
                model.weight.mul_(forward_change)

        def change() -> None:
            model.weight.add_(manual_change)

        return guarded_batch(path, model, batch, forward, change, renormalise, kept)

    assert one_batch(1.0, 0.0) is None
    assert one_batch(0.5, 0.0) is None  # changed by the forward only
    left = model.weight.detach().clone()
    assert one_batch(0.5, 1.0) == ("manual", ["parameter weight"])
    assert torch.equal(model.weight.detach(), left * 0.5)  # the forward's values, put back
