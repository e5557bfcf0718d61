"""docs/pytest.md's examples run as written: its spec, every pytest command, the ini globs,
the collected names it shows and the fixture test file."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET

import gradaudit_ops.rmsnorm  # noqa: F401
import pytest
import torch  # noqa: F401  (pytester's in-process runs must not be the first to import it)

import gradaudit.targets.model.sharing  # noqa: F401
from tests.conftest import REPO

pytest_plugins = ["pytester"]

DOC = REPO / "docs" / "pytest.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytest project holding the doc's spec as gradients.yaml."""
    (pytester.path / "gradients.yaml").write_text(blocks("yaml")[0])
    return pytester


COMMANDS = [line for line in blocks("sh")[0].splitlines() if line.strip()]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_runs_green(project: pytest.Pytester, command: str) -> None:
    args = shlex.split(command)
    assert args[0] == "pytest"
    done = project.runpytest_inprocess(*args[1:])
    assert done.ret == 0, done.stdout.str()
    done.stdout.fnmatch_lines(["*[0-9] passed*"])
    if "--junitxml" in args:
        report = project.path / args[args.index("--junitxml") + 1]
        names = [c.get("name") for c in ET.parse(report).getroot().iter("testcase")]
        assert names and all(str(n).endswith("[cpu-float64]") for n in names), names


def test_the_collected_names_shown_are_real(project: pytest.Pytester) -> None:
    shown = blocks("text")[0].splitlines()
    command = shlex.split(shown[0].removeprefix("$ "))
    done = project.runpytest_inprocess(*command[1:])
    assert done.stdout.lines[: len(shown) - 1] == shown[1:]


def test_the_ini_globs_collect_the_spec(project: pytest.Pytester) -> None:
    project.makeini(blocks("ini")[0])
    done = project.runpytest_inprocess("--co", "-q")
    done.stdout.fnmatch_lines(["50 tests collected*"])  # 12 tensors x 2 devices x 2 dtypes, 2 cases


def test_the_fixture_example_runs_green(project: pytest.Pytester) -> None:
    (project.path / "test_gradients.py").write_text(blocks("python")[0])
    project.runpytest_inprocess("-q").assert_outcomes(passed=9)  # 4 tensors x 2 dtypes + op
