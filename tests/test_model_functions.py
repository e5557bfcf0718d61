"""A model spec vouches for its custom autograd.Functions with op audits it names
(`functions:`): `gradaudit run` runs those op specs with it, and a Function so audited needs
no finite differences; named but not run beside it, or not matching, it vouches for nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gradaudit.targets.model.functions import vouch
from tests.conftest import REPO, SpecWriter, run_gradaudit

PLUGINS = [str(REPO / "tests" / n) for n in ("negative_controls.py", "checks_plugins.py")]
MODEL = {"options": {"d_model": 8, "n_hidden": 16}}
# The op audit's copy of the model's Functions (tests/checks_plugins.py): the same classes.
TANH = """
import torch

class BadTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        h = torch.tanh(a)
        ctx.save_for_backward(h)
        return h

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return grad * (1 + h * h)

class GoodTanh(BadTanh):
    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return grad * (1 - h * h)
"""


def _specs(write_spec: SpecWriter, tmp_path: Path, which: str) -> Path:
    (tmp_path / "tanhfn.py").write_text(TANH)
    op = {
        "name": f"op-{which}",
        "op": {
            "candidate": f"tanhfn:{which}.apply",
            "reference": "torch:tanh",
            "inputs": {"a": {"shape": [4, 8]}},
        },
        "dtypes": ["float64", "float32"],
    }
    (tmp_path / "tanh-op.yaml").write_text(yaml.safe_dump(op))
    model = {"plugin": "charrnn-" + which.lower(), **MODEL}
    path: Path = write_spec(
        plugins=PLUGINS,
        model=model,
        gradients={"plugin": "bptt-tanh-sign" if which == "BadTanh" else "charrnn-bptt"},
        dtypes=["float64"],
        functions={which: "tanh-op.yaml"},
    )
    return path


def _checks(report: dict[str, Any]) -> dict[str, set[str]]:
    """Each spec's check kinds, from a set's combined JSON report."""
    found: dict[str, set[str]] = {}
    for group in report["groups"]:
        found.setdefault(group.get("spec", "?"), set()).add(group["check"].split(":")[0])
    return found


def test_a_named_op_audit_runs_with_the_model_and_replaces_finite_differences(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    spec = _specs(write_spec, tmp_path, "GoodTanh")
    out = tmp_path / "report.json"
    result = run_gradaudit("run", spec, "--json", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 specs" in result.stdout and "tanh-op.yaml" in result.stdout
    assert "audited by op spec tanh-op.yaml" in result.stdout
    text = out.read_text()
    assert "finite_difference" not in text and "variant" in text


def test_a_wrong_backward_named_with_its_op_audit_is_red(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    """Manual and autograd repeat the Function's mistake, so the model alone is green; the
    op audit the spec names runs with it and is red, so the run is."""
    spec = _specs(write_spec, tmp_path, "BadTanh")
    out = tmp_path / "report.json"
    result = run_gradaudit("run", spec, "--json", out)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    words = {parts[0]: parts[1] for parts in lines if len(parts) > 1 and parts[0].endswith("yaml")}
    assert words == {str(spec): "PASS", str(tmp_path / "tanh-op.yaml"): "FAIL"}, result.stdout
    assert "finite_difference" not in out.read_text()


def test_a_named_op_audit_not_in_the_run_vouches_for_nothing(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    """The Python API runs one spec: the op audit does not run, so finite differences do,
    and they catch the wrong backward; the plan says why."""
    from gradaudit.api import run

    spec = _specs(write_spec, tmp_path, "BadTanh")
    result = run(spec)
    assert not result.ok
    assert {g.check for g, _ in result.failures} == {"finite_difference"}
    assert result.plan is not None
    assert any("vouches for nothing" in w for w in result.plan.warnings)


def test_the_spec_names_an_op_spec_that_exists(write_spec: SpecWriter, tmp_path: Path) -> None:
    spec = write_spec(plugins=PLUGINS, functions={"BadTanh": "missing.yaml"})
    result = run_gradaudit("run", spec)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = next(i for i, t in enumerate(spec.read_text().splitlines(), 1) if "BadTanh" in t)
    assert f"{spec}:{line}: functions.BadTanh: missing.yaml: no such file" in result.stderr
    (tmp_path / "model.yaml").write_text(json.dumps({"model": {"plugin": "charrnn"}}))
    other = write_spec("other.yaml", functions={"BadTanh": "model.yaml"})
    result = run_gradaudit("validate", other)
    assert result.returncode == 2 and "model.yaml: not an op spec" in result.stderr


def test_vouching_needs_the_run_the_name_and_the_candidate(tmp_path: Path) -> None:
    op = (tmp_path / "op.yaml").resolve()
    found = ["pkg.mod.RMSNormFunction"]
    named = {"RMSNormFunction": (op, "pkg.mod:RMSNormFunction.apply")}
    assert vouch(found, named, (str(op),)) == (
        [],
        ["custom autograd.Function pkg.mod.RMSNormFunction: audited by op spec op.yaml"],
    )
    left, notes = vouch(found, named, ())  # not in this run
    assert left == found and "vouches for nothing: it does not run" in notes[-1]
    assert "checks.finite_difference runs" in notes[0]
    other = {"RMSNormFunction": (op, "pkg.mod:rmsnorm_reference")}  # audits something else
    left, notes = vouch(found, other, (str(op),))
    assert left == found and "does not name RMSNormFunction" in notes[-1]
    left, notes = vouch([], named, (str(op),))  # named, not in the graph: a note, no FD
    assert left == [] and notes == [
        "functions: RMSNormFunction: no custom autograd.Function of that name is in the "
        "model's graph (found: none)"
    ]
    # a trailing part matches only at a dot: "Function" does not name RMSNormFunction
    left, _ = vouch(found, {"Function": (op, "Function")}, (str(op),))
    assert left == found


def test_set_options_are_the_named_specs_and_a_batch_rerun_runs_it_alone(
    write_spec: SpecWriter, tmp_path: Path
) -> None:
    """`--set batches.count=1` names the model spec's key: the op spec it pulls in takes
    no --set (it has no batches: key). A reproduce line's `--batch` reruns the model spec
    alone: its finite differences, not the op audit, catch the wrong backward."""
    spec = _specs(write_spec, tmp_path, "BadTanh")
    result = run_gradaudit("run", spec, "--set", "batches.count=1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 specs" in result.stdout and "tanh-op.yaml  FAIL" in result.stdout
    out = tmp_path / "one.json"
    again = run_gradaudit("run", spec, "--batch", "0", "--json", out)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "tanh-op.yaml" not in again.stdout.split("warning")[0]
    failed = {g["check"] for g in json.loads(out.read_text())["groups"]
              for t in g["tensors"] if t["status"] == "fail"}  # fmt: skip
    assert failed == {"finite_difference"}
