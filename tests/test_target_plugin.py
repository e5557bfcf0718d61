"""A third-party target kind (tests/target_plugins.py, one module through the
`register_targets` hook) gets the engine's run, verdicts, reports, sharding and pytest
collection like the built-in kinds; its bug is red, its correct version green."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_gradaudit

PLUGIN = REPO / "tests" / "target_plugins.py"


def spec(tmp_path: Path, bug: bool) -> Path:
    path = tmp_path / ("bug.yaml" if bug else "poly.yaml")
    path.write_text(
        f"name: poly\nplugins: [{PLUGIN}]\n"
        f"target: {{kind: poly, power: 3, points: 4, bug: {str(bug).lower()}}}\n"
        "dtypes: [float64, float32]\n"
    )
    return path


@pytest.mark.parametrize("bug", [False, True], ids=["correct", "bug"])
def test_a_plugin_target_kind_runs_green_or_red_with_every_report(
    tmp_path: Path, bug: bool
) -> None:
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = run_gradaudit("run", spec(tmp_path, bug), "--json", report, "--junit-xml", junit)
    assert result.returncode == (1 if bug else 0), result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert data["run"]["kind"] == "poly"
    statuses = {
        (g["dtype"], t["tensor"]): t["status"] for g in data["groups"] for t in g["tensors"]
    }
    want = "fail" if bug else "pass"
    assert statuses == {("float64", "grad.x"): want, ("float32", "grad.x"): want}
    assert {c["batch"] for c in data["cases"]} == {0, 1, 2, 3}
    assert junit.read_text().count("<testcase") == 2


def test_a_plugin_target_kind_shards_and_merges(tmp_path: Path) -> None:
    path = spec(tmp_path, False)
    parts = []
    for k in (1, 2):
        out = tmp_path / f"s{k}.json"
        done = run_gradaudit("run", path, "--shard", f"{k}/2", "--json", out)
        assert done.returncode == 0, done.stdout + done.stderr
        parts.append(out)
        batches = {c["batch"] for c in json.loads(out.read_text())["cases"]}
        assert batches == {k - 1, k + 1}  # batch b runs in shard b % 2 + 1
    merged = run_gradaudit("merge", tmp_path / "m.json", *parts)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    data = json.loads((tmp_path / "m.json").read_text())
    assert {c["batch"] for c in data["cases"]} == {0, 1, 2, 3}


def test_pytest_collects_a_plugin_target_spec_one_item_per_tensor_check(tmp_path: Path) -> None:
    path = spec(tmp_path, True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("2 failed"), done.stdout


def test_an_unknown_option_of_a_plugin_target_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: poly\nplugins: [{PLUGIN}]\ntarget: {{kind: poly, colour: red}}\n")
    done = run_gradaudit("run", path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"{path}:3" in line and "unknown option 'colour'" in line, line
