"""The GitHub Action (action.yml, scripts/action_run.sh): its inputs, outputs and steps agree,
and its run step, given the environment GitHub gives a step, passes each spec as an argument,
writes the reports, the summary and the outputs, and exits with `gradaudit run`'s status.

Composite actions get no INPUT_* variables (actions/runner#665; GitHub's metadata docs): the
inputs reach the scripts through each step's `env:`, which these tests check name by name."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

ACTION = REPO / "action.yml"
RUN_SCRIPT = REPO / "scripts" / "action_run.sh"
INSTALL_SCRIPT = REPO / "scripts" / "action_install.sh"
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")


@pytest.fixture(scope="module")
def action() -> dict[str, Any]:
    data = yaml.safe_load(ACTION.read_text("utf-8"))
    assert isinstance(data, dict)
    return data


def steps(action: dict[str, Any]) -> list[dict[str, Any]]:
    assert action["runs"]["using"] == "composite"
    found = action["runs"]["steps"]
    assert isinstance(found, list)
    return found


def used_inputs(node: Any) -> set[str]:
    """Every `inputs.NAME` in expressions (`${{ }}` and bare `if:` conditions) under node."""
    text = yaml.safe_dump(node)
    return set(re.findall(r"\binputs\.([A-Za-z0-9_-]+)", text))


# --- the metadata -------------------------------------------------------------------------


def test_inputs_are_declared_and_used(action: dict[str, Any]) -> None:
    declared = set(action["inputs"])
    used = used_inputs(steps(action))
    assert used == declared, (used - declared, declared - used)
    for name, spec in action["inputs"].items():
        assert spec.get("description"), name
        assert isinstance(spec.get("default", ""), str), name  # inputs are strings
    assert action["inputs"]["specs"]["required"] is True
    assert action["inputs"]["torch-version"]["default"] == "2.13.0"
    assert action["inputs"]["torch-index-url"]["default"].endswith("/whl/cpu")


def test_outputs_come_from_the_run_step(action: dict[str, Any]) -> None:
    (run,) = [s for s in steps(action) if s.get("id") == "run"]
    assert "action_run.sh" in run["run"]
    for name, spec in action["outputs"].items():
        assert spec["value"] == f"${{{{ steps.run.outputs.{name} }}}}"
        assert spec.get("description")
    script = RUN_SCRIPT.read_text("utf-8")
    written = set(re.findall(r'echo "([a-z-]+)=', script))
    if 'echo "$name=' in script:  # the report paths, in a loop
        written |= set(re.findall(r"for name in ([a-z ]+);", script)[0].split())
    assert set(action["outputs"]) <= written, written


def test_scripts_get_their_inputs_through_env(action: dict[str, Any]) -> None:
    for step in steps(action):
        if "run" not in step:
            continue
        assert step["shell"] == "bash"  # composite run steps must name their shell
        assert "${{" not in step["run"], "an input pasted into a script can inject code"
        script = REPO / "scripts" / re.findall(r"scripts/(\S+\.sh)", step["run"])[0]
        text = script.read_text("utf-8")
        read = set(re.findall(r"\bGRADAUDIT_ACTION_[A-Z_]+", text))
        assert read == set(step.get("env", {})), (script.name, read)
        for value in step.get("env", {}).values():
            assert re.fullmatch(r"\$\{\{ inputs\.[a-z-]+ \}\}", value), value
        assert not re.search(r"\$\{?INPUT_", text)  # composite actions set none


def test_steps_setup_install_run_upload(action: dict[str, Any]) -> None:
    names = [str(s.get("uses") or s.get("id") or s.get("name")) for s in steps(action)]
    assert names[0].startswith("actions/setup-python@")
    assert names[-1].startswith("actions/upload-artifact@")
    upload = steps(action)[-1]
    assert upload["if"].startswith("always()")  # reports of a failed audit are uploaded too
    assert upload["with"]["path"] == "${{ steps.run.outputs.files }}"
    install = INSTALL_SCRIPT.read_text("utf-8")
    assert install.index("torch==") < install.index('"${GITHUB_ACTION_PATH:?}"')


# --- the run step, locally ----------------------------------------------------------------


def step_env(tmp_path: Path, path: str, **inputs: str) -> dict[str, str]:
    """The environment of a composite step on a runner: the GITHUB_* files, no INPUT_*,
    the action's inputs as its env: maps them."""
    base = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "GRADAUDIT_", "INPUT_", "RUNNER_", "CI_", "CIRCLE"))
    }  # fmt: skip
    (tmp_path / "runner-temp").mkdir(exist_ok=True)
    env = base | {
        "PATH": path,
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": str(tmp_path),
        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary.md"),
        "GITHUB_ACTION_PATH": str(REPO),
        "RUNNER_TEMP": str(tmp_path / "runner-temp"),
        "GRADAUDIT_ACTION_JUNIT": "reports/gradaudit.xml",
        "GRADAUDIT_ACTION_JSON": "reports/gradaudit.json",
        "GRADAUDIT_ACTION_HTML": "reports/gradaudit.html",
        "GRADAUDIT_ACTION_CHART": "true",
        "GRADAUDIT_ACTION_ARGS": "",
    }
    return env | {f"GRADAUDIT_ACTION_{k.upper()}": v for k, v in inputs.items()}


def run_step(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RUN_SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def outputs(tmp_path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT as the runner reads it: name=value lines and name<<DELIM blocks."""
    values: dict[str, str] = {}
    lines = (tmp_path / "github_output").read_text("utf-8").splitlines()
    while lines:
        line = lines.pop(0)
        if "<<" in line and "=" not in line.split("<<")[0]:
            name, delimiter = line.split("<<", 1)
            block = []
            while (item := lines.pop(0)) != delimiter:
                block.append(item)
            values[name] = "\n".join(block)
        else:
            name, _, value = line.partition("=")
            values[name] = value
    return values


@pytest.fixture
def stub_path(tmp_path: Path) -> str:
    """A PATH whose `gradaudit` records its arguments (one per line) and exits STUB_EXIT."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    stub = bin_dir / "gradaudit"
    stub.write_text(
        '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$GITHUB_WORKSPACE/argv"\n'
        'exit "${STUB_EXIT:-0}"\n',
        "utf-8",
    )
    stub.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"


def test_each_spec_is_one_argument_and_args_split_like_a_shell(
    tmp_path: Path, stub_path: str
) -> None:
    (tmp_path / "specs").mkdir()
    for name in ("a.yaml", "b.yaml", "c.gradaudit.yaml"):
        (tmp_path / "specs" / name).write_text("{}", "utf-8")
    env = step_env(
        tmp_path, stub_path,
        specs="specs/a.yaml  specs/b.yaml\n specs/*.gradaudit.yaml\n",
        args="--set 'batches.count=1' --dtype float32 --set \"name=two words\"",
    )  # fmt: skip
    result = run_step(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    argv = (tmp_path / "argv").read_text("utf-8").splitlines()
    assert argv == [
        "run", "specs/a.yaml", "specs/b.yaml", "specs/c.gradaudit.yaml",
        "--set", "batches.count=1", "--dtype", "float32", "--set", "name=two words",
        "--junit-xml", "reports/gradaudit.xml", "--json", "reports/gradaudit.json",
    ]  # fmt: skip
    assert (tmp_path / "reports").is_dir()
    out = outputs(tmp_path)
    assert out["exit-code"] == "0" and out["junit"] == out["html"] == out["files"] == ""


@pytest.mark.parametrize("code", [1, 2, 3, 5, 130])
def test_the_exit_code_propagates(tmp_path: Path, stub_path: str, code: int) -> None:
    env = step_env(tmp_path, stub_path, specs="s.yaml") | {"STUB_EXIT": str(code)}
    assert run_step(tmp_path, env).returncode == code
    assert outputs(tmp_path)["exit-code"] == str(code)


@pytest.mark.parametrize(("specs", "args"), [("", ""), ("  \n ", ""), ("s.yaml", "--set 'x")])
def test_bad_inputs_are_exit_2(tmp_path: Path, stub_path: str, specs: str, args: str) -> None:
    result = run_step(tmp_path, step_env(tmp_path, stub_path, specs=specs, args=args))
    assert result.returncode == 2 and "::error title=gradaudit::" in result.stdout
    assert not (tmp_path / "argv").exists()
    assert outputs(tmp_path)["exit-code"] == "2"


def venv_path() -> str:
    gradaudit = Path(sys.executable).with_name("gradaudit")
    assert gradaudit.is_file()
    return f"{gradaudit.parent}{os.pathsep}/usr/bin:/bin"


def test_a_green_run_writes_reports_summary_and_outputs(tmp_path: Path) -> None:
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    env = step_env(
        tmp_path, venv_path(), specs="specs/charrnn.yaml",
        args="--set batches.count=1 --dtype float32 --device cpu",
    )  # fmt: skip
    result = run_step(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = outputs(tmp_path)
    assert out["exit-code"] == "0"
    files = out["files"].splitlines()
    assert files == ["reports/gradaudit.xml", "reports/gradaudit.json", "reports/gradaudit.html"]
    assert all((tmp_path / f).stat().st_size > 0 for f in files)
    summary = (tmp_path / "step_summary.md").read_text("utf-8")
    assert "### ✅ gradaudit `charrnn`" in summary  # gradaudit run's own table ...
    assert "xychart-beta horizontal" in summary  # ... and the action's charts


def test_a_red_run_is_exit_1_with_its_reports(tmp_path: Path) -> None:
    spec = tmp_path / "red.yaml"
    spec.write_text(
        f"name: red\nplugins: [{REPO / 'tests' / 'negative_controls.py'}]\n"
        "model: {plugin: charrnn, options: {d_model: 8, n_hidden: 16, h0: 0.1}}\n"
        "gradients: {plugin: bptt-sign-error}\n"
        "data: {plugin: text, options: {source: builtin, block_size: 5}}\n"
        "batches: {split: train, count: 1, size: 4, seed: 3}\n"
        "devices: [cpu]\ndtypes: [float32]\ntensors: ['*']\n",
        "utf-8",
    )
    env = step_env(tmp_path, venv_path(), specs="red.yaml", json="", chart="false")
    result = run_step(tmp_path, env)
    assert result.returncode == 1, result.stdout + result.stderr
    out = outputs(tmp_path)
    assert out["exit-code"] == "1" and out["json"] == ""  # a temporary JSON, not kept
    assert out["files"].splitlines() == ["reports/gradaudit.xml", "reports/gradaudit.html"]
    assert "<h2>Failures" in (tmp_path / "reports" / "gradaudit.html").read_text("utf-8")
    summary = (tmp_path / "step_summary.md").read_text("utf-8")
    assert "### ❌ gradaudit `red`" in summary and "xychart" not in summary
