"""Paths that once ended green without checking what the spec asked, or lost the report
(issue 13): each test fails without its fix."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CliRunner, SpecWriter

PLUGIN = """
import os, sys
from gradaudit import hookimpl
from gradaudit_charrnn.bptt import charrnn_bptt

def exits(model, batch, forward):
    os._exit(0)

def touches_buffer(model, batch, forward):
    model.h0.add_(1.0)
    return charrnn_bptt(model, batch, forward)

@hookimpl
def register_gradients(register):
    register("exits", exits)
    register("touches-buffer", touches_buffer)
"""


@pytest.fixture
def plugin(tmp_path: Path) -> str:
    path = tmp_path / "bad_plugins.py"
    path.write_text(PLUGIN, encoding="utf-8")
    return str(path)


def one_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


def test_os_exit_in_a_plugin_leaves_reports_saying_the_run_did_not_finish(
    tmp_path: Path, write_spec: SpecWriter, run_cli: CliRunner, plugin: str
) -> None:
    junit, out = tmp_path / "r.xml", tmp_path / "r.json"
    junit.write_text("<stale/>", encoding="utf-8")
    spec = write_spec(plugins=[plugin], gradients={"plugin": "exits"})
    result = run_cli("run", spec, "--junit-xml", junit, "--json", out)
    assert result.returncode == 1  # plugin code ended its process: the plan says what is missing
    root = ET.parse(junit).getroot()
    assert int(root.get("errors", "0")) >= 24  # every planned tensor check of both dtypes
    assert "exited (code 0) before it finished" in junit.read_text(encoding="utf-8")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["totals"]["passed"] == 0 and data["totals"]["errors"] >= 24
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_gradient_that_changes_a_buffer_in_place_is_an_error(
    write_spec: SpecWriter, run_cli: CliRunner, plugin: str
) -> None:
    spec = write_spec(plugins=[plugin], gradients={"plugin": "touches-buffer"})
    result = run_cli("run", spec)
    assert result.returncode == 1
    assert "modified buffer h0 in place" in result.stdout


@pytest.mark.parametrize("value", ["nan", "-1", "0"])
def test_bad_timeouts_are_usage_errors(
    write_spec: SpecWriter, run_cli: CliRunner, value: str
) -> None:
    result = run_cli("run", write_spec(), "--timeout", value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--timeout" in one_line(result)


@pytest.mark.parametrize("value", ["1e-9", "1e-5"])
def test_a_tiny_timeout_times_every_batch_out(
    tmp_path: Path, write_spec: SpecWriter, run_cli: CliRunner, value: str
) -> None:
    """Any value the option accepts behaves: a limit shorter than arming it is a timeout of
    the batch (exit 1, a valid report), never an internal error."""
    report = tmp_path / "r.json"
    result = run_cli("run", write_spec(), "--timeout", value, "--json", report)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["totals"]["passed"] == 0 and data["totals"]["errors"] > 0
    assert all("timed out" in c["error"] for c in data["cases"])


def test_infinite_timeout_means_no_limit(write_spec: SpecWriter, run_cli: CliRunner) -> None:
    assert run_cli("run", write_spec(), "--timeout", "inf", "-q").returncode == 0


def test_report_paths_that_would_overwrite_inputs_are_refused(
    tmp_path: Path, write_spec: SpecWriter, run_cli: CliRunner
) -> None:
    spec = write_spec()
    before = spec.read_text(encoding="utf-8")
    result = run_cli("run", spec, "--junit-xml", spec)
    assert result.returncode == 2 and "is an input of this run" in one_line(result)
    assert spec.read_text(encoding="utf-8") == before
    same = tmp_path / "r.out"
    result = run_cli("run", spec, "--junit-xml", same, "--json", same)
    assert result.returncode == 2 and "name the same file" in one_line(result)
    linked = tmp_path / "linked.xml"
    linked.hardlink_to(spec)  # another name for the spec's own bytes
    result = run_cli("run", spec, "--junit-xml", linked)
    assert result.returncode == 2 and "is an input of this run" in one_line(result)
    assert spec.read_text(encoding="utf-8") == before


def test_unwritable_step_summary_is_refused_before_work(
    tmp_path: Path, write_spec: SpecWriter, run_cli: CliRunner
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("x", encoding="utf-8")
    env = {"GITHUB_STEP_SUMMARY": str(blocked / "summary.md")}
    result = run_cli("run", write_spec(), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "GITHUB_STEP_SUMMARY" in one_line(result)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_fifo_is_not_a_spec(tmp_path: Path, run_cli: CliRunner, command: str) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    result = run_cli(command, fifo, timeout=30)
    assert result.returncode == 2 and "not a regular file" in one_line(result)


def test_no_arguments_prints_help_not_an_error_line(run_cli: CliRunner) -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "Usage:" in result.stdout and "Commands:" in result.stdout
    assert "error:" not in result.stderr


def test_plugin_and_data_errors_point_at_the_spec_line(
    tmp_path: Path, write_spec: SpecWriter, run_cli: CliRunner
) -> None:
    spec = write_spec(model={"plugin": "charnn"})
    assert (
        f"{spec}:" in one_line(run_cli("run", spec))
        and "did you mean" in run_cli("run", spec).stderr
    )
    spec = write_spec("b.yaml", plugins=["missing.py"])
    line = one_line(run_cli("run", spec))
    at = spec.read_text(encoding="utf-8").splitlines().index("plugins:") + 2  # the list item
    assert line.startswith(f"gradaudit: error: {spec}:{at}:") and "not found" in line
    spec = write_spec("c.yaml", data={"plugin": "text", "options": {"path": "nope.txt"}})
    line = one_line(run_cli("run", spec))
    assert f"{spec}:" in line and "nope.txt" in line


def test_listing_an_installed_plugin_module_again_is_a_no_op(
    write_spec: SpecWriter, run_cli: CliRunner
) -> None:
    spec = write_spec(plugins=["gradaudit_charrnn"])
    result = run_cli("run", spec, "-q")
    assert result.returncode == 0, result.stderr


def test_validate_says_what_it_did_not_check(run_cli: CliRunner) -> None:
    result = run_cli("validate", "specs/charrnn.yaml")
    assert result.returncode == 0
    assert "ok (schema)" in result.stdout and "plugin names, tensor globs" in result.stdout


def test_plan_catches_what_validate_cannot(write_spec: SpecWriter, run_cli: CliRunner) -> None:
    glob = run_cli("plan", write_spec(tensors=["Q.*"]))
    assert glob.returncode == 2 and "'Q.*' matches no tensor" in glob.stderr
    name = run_cli("plan", write_spec("n.yaml", gradients={"plugin": "charrnn-bpt"}))
    assert name.returncode == 2 and "did you mean 'charrnn-bptt'" in name.stderr
    options = run_cli(
        "plan", write_spec("o.yaml", gradients={"plugin": "charrnn-bptt", "options": {"k": 1}})
    )
    assert options.returncode == 0 and "does not accept option(s) k" in options.stdout


def test_val_without_count_or_size_audits_every_window(
    write_spec: SpecWriter, run_cli: CliRunner
) -> None:
    spec = write_spec(batches={"split": "val"}, dtypes=["float64"])
    loaded = yaml.safe_load(spec.read_text(encoding="utf-8"))
    assert loaded["batches"] == {"split": "val"}
    result = run_cli("plan", spec)
    assert "batches chosen by the data" in result.stdout
    out = spec.with_suffix(".json")
    assert run_cli("run", spec, "--json", out).returncode == 0
    (case,) = {c["batch"] for c in json.loads(out.read_text())["cases"]}
    assert case == 0  # one batch: every window of the val split


def test_finite_differences_survive_dtype_filters_and_shards(
    write_spec: SpecWriter, run_cli: CliRunner
) -> None:
    spec = write_spec(checks={"finite_difference": {"batches": 2}})
    only64 = run_cli("plan", spec, "--dtype", "float64")
    assert "finite_difference" in only64.stdout  # the run's first dtype runs it
    first = run_cli("plan", spec, "--shard", "1/2")
    second = run_cli("plan", spec, "--shard", "2/2")
    for shard in (first, second):  # batch 0 in shard 1, batch 1 in shard 2: both cover one
        rows = [r for r in shard.stdout.splitlines() if "finite_difference" in r]
        assert rows and not any("SKIP" in r for r in rows)


def test_an_all_nan_gradient_has_no_cosine() -> None:
    import math

    import torch

    from gradaudit.compare import check
    from gradaudit.results import TensorSummary
    from gradaudit.tolerance import Tol

    reference = torch.randn(5, dtype=torch.float64)
    nan = check(torch.full((5,), math.nan, dtype=torch.float64), reference, Tol("allclose"))
    assert not nan.passed and nan.nonfinite == 5 and math.isnan(nan.cosine)
    summary = TensorSummary("t", Tol("allclose"))
    summary.add(nan, 0, 0)
    summary.add(check(reference.clone(), reference, Tol("allclose")), 1, 1)
    assert math.isnan(summary.min_cosine)  # not "lowest cosine 1.000000"
    one_nan = reference.clone()
    one_nan[0] = math.nan
    assert math.isfinite(check(one_nan, reference, Tol("allclose")).cosine)


SWALLOWS = """
import time
from gradaudit import hookimpl

def swallows(model, batch, forward):
    for _ in range(200):  # catches everything, SIGTERM's exception included
        try:
            time.sleep(0.05)
        except BaseException:
            pass
    return {}

@hookimpl
def register_gradients(register):
    register("swallows", swallows)
"""


def test_sigterm_stops_a_plugin_that_swallows_it(tmp_path: Path, write_spec: SpecWriter) -> None:
    """The plugin catches everything in its process (the executor); gradaudit's supervisor
    gets the signal, kills that process and writes the reports: a second SIGTERM changes
    nothing."""
    import signal
    import subprocess
    import time

    from tests.conftest import GRADAUDIT, cli_env

    (tmp_path / "swallow.py").write_text(SWALLOWS, encoding="utf-8")
    spec = write_spec(plugins=[str(tmp_path / "swallow.py")], gradients={"plugin": "swallows"})
    junit = tmp_path / "r.xml"
    proc = subprocess.Popen(
        [str(GRADAUDIT), "run", str(spec), "--junit-xml", str(junit)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60  # until the plan's report is there: the run is going
    while "small[cpu," not in _text(junit) and proc.poll() is None:
        assert time.monotonic() < deadline, "no report of the plan within 60 s"
        time.sleep(0.05)
    time.sleep(0.5)  # inside the plugin's 10 s of swallowing
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    text = junit.read_text(encoding="utf-8")
    assert "interrupted by SIGTERM" in text and "not run" in text


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def test_sigterm_while_loading_leaves_a_report(tmp_path: Path, write_spec: SpecWriter) -> None:
    import signal
    import subprocess
    import time

    from tests.conftest import GRADAUDIT, cli_env

    junit = tmp_path / "r.xml"
    junit.write_text("<stale/>", encoding="utf-8")
    proc = subprocess.Popen(
        [str(GRADAUDIT), "run", str(write_spec()), "--junit-xml", str(junit)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Once the placeholder report replaces the stale one, gradaudit's SIGTERM handler is in
    # place (it comes first) and torch, the plugins and the data are still loading; a fixed
    # delay raced the interpreter's start-up on a busy machine.
    deadline = time.monotonic() + 60
    while junit.read_text(encoding="utf-8") == "<stale/>" and proc.poll() is None:
        assert time.monotonic() < deadline, "no placeholder report within 60 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    text = junit.read_text(encoding="utf-8")
    if code == 0:  # the machine was fast enough to finish before the signal: nothing to check
        pytest.skip("the run finished before SIGTERM arrived")
    assert code == 143
    assert "<stale/>" not in text and ("did not finish" in text or "interrupted" in text)


@pytest.mark.parametrize("option", [["--set", "seed=1"], ["--timeout", "5"]], ids=str)
def test_op_specs_take_the_options_model_specs_take(run_cli: CliRunner, option: list[str]) -> None:
    result = run_cli("run", "specs/op-rmsnorm.yaml", "--dtype", "float64", *option)
    assert result.returncode == 0, result.stdout + result.stderr
