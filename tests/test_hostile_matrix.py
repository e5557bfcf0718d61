"""Issue 27's promise, as a matrix: plugin code that calls sys.exit(0) or os._exit(0), raises
a BaseException, kills its process with SIGSEGV, hangs, or hangs ignoring SIGALRM, at import,
in a hook, while loading data, building the model, iterating batches, in forward or backward,
in an op candidate or reference, under `gradaudit run`, `gradaudit mutate` and pytest, never
gives exit 0, and leaves a JUnit report that names what did not run (a failure or an error).

About 160 runs of a few seconds each: `-m slow` (make test-slow). tests/test_green_is_true.py,
test_pytest_vs_run.py and test_misbehaving_plugins.py hold the fast representatives.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_env, run_gradaudit
from tests.test_pytest_plugin import run_pytest

PLUGINS = Path(__file__).resolve().with_name("hostile_plugins.py")
ACTS = ["sys-exit", "os-exit", "interrupt", "segv", "hang", "hang-no-alarm"]
MODEL_PLACES = ["import", "hook", "data", "model", "batches", "forward", "backward"]
OP_PLACES = ["candidate", "reference"]
MODES = ["run", "mutate", "pytest"]


def _spec(place: str) -> dict[str, object]:
    common = {"plugins": [str(PLUGINS)], "devices": ["cpu"], "dtypes": ["float64", "float32"]}
    if place in OP_PLACES:
        op = {"candidate": "hostile-candidate", "reference": "hostile-reference",
              "inputs": {"x": {"shape": [4, 8]}}, "variants": False}  # fmt: skip
        return {"name": "hostile-op", "op": op, **common}
    return {
        "name": "hostile-model",
        "model": {"plugin": "hostile-model", "options": {"d_model": 8, "n_hidden": 16}},
        "gradients": {"plugin": "hostile-gradients"},
        "data": {"plugin": "hostile-data", "options": {"source": "builtin", "block_size": 5}},
        "batches": {"count": 3, "size": 2, "seed": 3},
        **common,
    }


def _red_report(path: Path) -> list[str]:
    """The messages of the report's failures and errors; AssertionError if it is not one."""
    root = ET.parse(path).getroot()
    found = [
        child.get("message", "") or (child.text or "")
        for case in root.iter("testcase")
        for child in case
        if child.tag in ("failure", "error")
    ]
    assert found, f"{path}: no failure or error in a report of a run that misbehaved"
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("place", MODEL_PLACES + OP_PLACES)
def test_misbehaving_plugin_code_is_never_green(
    tmp_path: Path, place: str, act: str, mode: str
) -> None:
    _never_green(tmp_path, place, act, mode, "4")


@pytest.mark.parametrize(
    ("place", "act", "mode"),
    [("backward", "hang-no-alarm", "pytest"), ("import", "os-exit", "mutate")],
)
def test_two_corners_of_the_matrix_in_the_fast_suite(
    tmp_path: Path, place: str, act: str, mode: str
) -> None:
    """pytest's --gradaudit-timeout stops a hang that ignores SIGALRM; mutate leaves its
    JUnit report even when the plugin ends the process at import."""
    _never_green(tmp_path, place, act, mode, "1")


def _never_green(tmp_path: Path, place: str, act: str, mode: str, timeout: str) -> None:
    spec = tmp_path / "hostile.yaml"
    spec.write_text(yaml.safe_dump(_spec(place), sort_keys=False))
    env = {"HOSTILE_PLUGIN": f"{place}:{act}"}
    junit = tmp_path / "out.xml"
    if mode == "pytest":
        import os

        os.environ["HOSTILE_PLUGIN"] = env["HOSTILE_PLUGIN"]
        try:
            done = run_pytest(
                tmp_path, spec.name, "--junitxml", str(junit), "-q", "--gradaudit-timeout", timeout
            )
        finally:
            del os.environ["HOSTILE_PLUGIN"]
        output = done.stdout + done.stderr
    else:
        args: list[str | Path] = ["--junit-xml", junit, "--timeout", timeout]
        done = run_gradaudit(mode, spec, *args, cwd=tmp_path, env=cli_env(env), timeout=120)
        output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert junit.exists(), output[-3000:]
    _red_report(junit)
