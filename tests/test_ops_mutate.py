"""`gradaudit mutate` on op specs: the shipped op audits kill every counted mutant of their
candidates' gradients in float64 and float32 (as the model audits do); a blind audit (a
tolerance that passes anything) kills none and fails the gate; a red audit scores nothing."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import REPO, run_gradaudit

DTYPES = ("--dtype", "float64", "--dtype", "float32")


def documented() -> list[str]:
    """The commands of docs/ops.md's mutation section."""
    text = (REPO / "docs" / "ops.md").read_text()
    section = text.split("## Mutation testing", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return str(block).strip().splitlines()


def suites(path: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Per suite: its mutation score, and each mutant's outcome (killed, survived, other)."""
    out = {}
    for suite in ET.parse(path).getroot().iter("testsuite"):
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        outcomes = {}
        for case in suite.iter("testcase"):
            skipped = case.find("skipped")
            if case.find("failure") is not None or (
                skipped is not None and "warning" in (skipped.get("message") or "")
            ):
                outcomes[case.get("name", "")] = "survived"
            else:
                outcomes[case.get("name", "")] = "other" if skipped is not None else "killed"
        out[suite.get("name", "")] = (props["mutation_score"] or "", outcomes)
    return out


@pytest.mark.parametrize(
    ("spec", "tensors"),
    [("op-rmsnorm", {"grad.x", "grad.weight"}), ("op-softmax-xent", {"grad.logits"})],
)
def test_the_shipped_op_specs_kill_every_mutant(
    tmp_path: Path, spec: str, tensors: set[str]
) -> None:
    (command,) = [c for c in documented() if f"specs/{spec}.yaml" in c]  # as docs/ops.md shows
    junit = tmp_path / "mutants.xml"
    result = run_gradaudit(*shlex.split(command)[1:], "--junit-xml", junit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu/float64: mutation score 100.0%" in result.stdout
    assert "cpu/float32: mutation score 100.0%" in result.stdout
    found = suites(junit)
    assert set(found) == {f"{spec}[cpu,{d},mutants]" for d in ("float64", "float32")}
    for score, outcomes in found.values():
        assert score == "1.0000"
        killed = {name for name, what in outcomes.items() if what == "killed"}
        # the mutants of every candidate gradient, of each kind that applies
        assert {name.split(":")[1] for name in killed} == tensors
        for t in tensors:
            assert {f"scale(0.001):{t}", f"sign:{t}", f"zero-row:{t}", f"element:{t}"} <= killed
        assert "survived" not in outcomes.values()
    text = junit.read_text()
    assert "killed by grad." in text and "on variant " in text


def blind(tmp_path: Path) -> Path:
    text = (REPO / "specs" / "op-rmsnorm.yaml").read_text()
    spec = tmp_path / "blind.yaml"
    loose = "tolerance: {mode: allclose, rtol: 1000.0, atol: 1000.0, systematic: false}\n"
    spec.write_text(text.replace("dtypes:", loose + "dtypes:"))
    return spec


def test_a_blind_audit_scores_low_and_fails_the_gate(tmp_path: Path) -> None:
    spec = blind(tmp_path)
    assert run_gradaudit("run", spec, *DTYPES).returncode == 0  # green, and proves nothing
    junit = tmp_path / "mutants.xml"
    gated = run_gradaudit("mutate", spec, *DTYPES, "--fail-on-survivor", "--junit-xml", junit)
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "cpu/float64: mutation score 0.0%" in gated.stdout
    assert "tighten it for grad.x" in gated.stdout
    for score, outcomes in suites(junit).values():
        assert float(score) < 0.2
        assert "survived" in outcomes.values()
    warned = run_gradaudit("mutate", spec, "--dtype", "float64")
    assert warned.returncode == 0  # survivors are warnings unless --fail-on-survivor
    assert "WARNING cpu/float64 sign:grad.x survived" in warned.stdout


def test_a_red_op_audit_is_not_scored(tmp_path: Path) -> None:
    spec = tmp_path / "bug.yaml"
    text = (REPO / "specs" / "op-rmsnorm.yaml").read_text()
    spec.write_text(
        text.replace(
            "gradaudit_ops.rmsnorm:RMSNormFunction.apply", "gradaudit_ops.gallery:RMSNormWrongAxis"
        )
    )
    junit = tmp_path / "mutants.xml"
    result = run_gradaudit("mutate", spec, "--dtype", "float64", "--junit-xml", junit)
    assert result.returncode == 1
    assert "the audit itself is not green" in result.stdout
    assert "<error" in junit.read_text()


def test_set_applies_to_an_op_spec_under_mutate() -> None:
    """One engine: --set changes an op spec as it changes a model spec (a bad value is a
    spec error naming the option)."""
    spec = REPO / "specs" / "op-rmsnorm.yaml"
    result = run_gradaudit("mutate", spec, "--dtype", "float64", "--set", "seed=1")
    assert result.returncode == 0, result.stdout + result.stderr
    bad = run_gradaudit("mutate", spec, "--set", "seed=x")
    assert bad.returncode == 2 and "--set seed=x" in bad.stderr
