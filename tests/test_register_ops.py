"""The `register_ops` hook: a third-party plugin names its candidate and reference, a spec
uses the names, `gradaudit plugins` lists them, and a misspelt name is one line, exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.conftest import run_gradaudit

PLUGIN = """
import torch
from gradaudit import hookimpl


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return {backward}


def square_reference(x):
    return x * x


@hookimpl
def register_ops(register):
    register("my-square", Square)
    register("my-square-reference", square_reference)
"""

SPEC = """\
name: my-square
plugins: [my_ops.py]
op:
  candidate: {candidate}
  reference: my-square-reference
  dims: {{N: 4, D: 5}}
  inputs:
    x: {{shape: [N, D]}}
dtypes: [float64, float32]
"""


def write(tmp_path: Path, candidate: str = "my-square", backward: str = "2 * x * grad") -> Path:
    (tmp_path / "my_ops.py").write_text(textwrap.dedent(PLUGIN.format(backward=backward)))
    spec = tmp_path / "op.yaml"
    spec.write_text(SPEC.format(candidate=candidate))
    return spec


def test_a_plugin_s_registered_candidate_and_reference_are_audited(tmp_path: Path) -> None:
    spec = write(tmp_path)
    result = run_gradaudit("run", spec, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["candidate"] == "my-square"
    checks = {g["check"] for g in report["groups"]}
    assert "variant:base" in checks and report["totals"]["passed"] > 0


def test_a_wrong_backward_behind_a_registered_name_fails(tmp_path: Path) -> None:
    spec = write(tmp_path, backward="x * grad")  # the factor 2 missing
    result = run_gradaudit("run", spec)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "grad.x" in result.stdout


def test_a_misspelt_name_is_one_line_exit_2(tmp_path: Path) -> None:
    spec = write(tmp_path, candidate="my-sqare")
    result = run_gradaudit("run", spec)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "op.yaml:4: op.candidate: no op named 'my-sqare'" in lines[0]
    assert "(did you mean 'my-square'?)" in lines[0]
    assert "Traceback" not in result.stderr


def test_gradaudit_plugins_lists_the_spec_s_ops(tmp_path: Path) -> None:
    """Inspecting a spec imports none of its own plugins unless --load says so."""
    spec = write(tmp_path)
    marker = tmp_path / "imported"
    with open(tmp_path / "my_ops.py", "a", encoding="utf-8") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').close()\n")
    result = run_gradaudit("plugins", "--spec", spec, "--json")
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "inspecting the spec ran its plugin's code"
    rows = {(r["name"], r["kind"], r["plugin"], r["source"]) for r in json.loads(result.stdout)}
    where = f"file {(tmp_path / 'my_ops.py').resolve()}"
    assert ("?", "not loaded", "my_ops.py", where) in rows
    assert ("rmsnorm", "op", "ops") in {row[:3] for row in rows}  # installed: loaded as ever
    result = run_gradaudit("plugins", "--spec", spec, "--load", "--json")
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    loaded = {(r["name"], r["kind"], r["plugin"]) for r in json.loads(result.stdout)}
    assert ("my-square", "op", "my_ops.py") in loaded
    assert ("my-square-reference", "op", "my_ops.py") in loaded
    assert ("rmsnorm", "op", "ops") in loaded  # the shipped plugin, through the same hook


def test_an_op_registered_twice_is_an_error_naming_both(tmp_path: Path) -> None:
    spec = write(tmp_path)
    (tmp_path / "again.py").write_text(
        "from gradaudit import hookimpl\n\n\n@hookimpl\ndef register_ops(register):\n"
        "    register('my-square', abs)\n"
    )
    spec.write_text(spec.read_text().replace("[my_ops.py]", "[my_ops.py, again.py]"))
    result = run_gradaudit("run", spec)
    assert result.returncode == 2
    assert "op plugin 'my-square' is registered twice" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
