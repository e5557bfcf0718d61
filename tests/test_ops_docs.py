"""docs/ops.md's examples run as written: every op spec and every Python block, and the
failure text it shows is what check_op prints for the gallery's wrong-axis RMSNorm."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from gradaudit_ops.gallery import RMSNormWrongAxis
from gradaudit_ops.rmsnorm import rmsnorm_reference

from gradaudit.targets.op.api import check_op
from tests.conftest import run_gradaudit

DOC = Path(__file__).resolve().parents[1] / "docs" / "ops.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_shortest_examples_are_short() -> None:
    assert len(blocks("yaml")[0].splitlines()) <= 15
    assert len(blocks("python")[0].strip().splitlines()) <= 5


@pytest.mark.parametrize("index", range(len(blocks("yaml"))))
def test_each_spec_runs_green(index: int, tmp_path: Path) -> None:
    """As a user runs it: `gradaudit run` (a supervised executor; a native crash in an op
    is then this test's failure, not the death of a pytest worker)."""
    path = tmp_path / "spec.yaml"
    path.write_text(blocks("yaml")[index])
    result = run_gradaudit("run", path, "--json", tmp_path / "out.json", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    groups = json.loads((tmp_path / "out.json").read_text("utf-8"))["groups"]
    assert groups and all(t["status"] == "pass" for g in groups for t in g["tensors"])


def test_the_python_blocks_run() -> None:
    for code in blocks("python"):
        exec(compile(code, str(DOC), "exec"), {})


def test_the_failure_shown_is_real() -> None:
    with pytest.raises(AssertionError) as info:
        check_op(RMSNormWrongAxis, rmsnorm_reference, inputs={"x": (6, 16), "weight": (16,)})
    shown = blocks("text")[0].splitlines()
    assert str(info.value).splitlines()[: len(shown)] == shown
