"""The core's contracts: any named inputs, cast per case, the plan, one stream of results."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CliRunner

PLUGINS = str(Path(__file__).with_name("float_plugins.py"))
DTYPES = ["float64", "float32", "bfloat16", "float16"]


def regression_spec(tmp_path: Path, **overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "name": "regression",
        "plugins": [PLUGINS],
        "model": {"plugin": "regression"},
        "gradients": {"plugin": "regression-manual"},
        "data": {
            "plugin": "random",
            "options": {"tensors": {"x": {"shape": [6]}, "y": {"shape": []}}},
        },
        "batches": {"count": 3, "size": 8, "seed": 1},
        "devices": ["cpu"],
        "dtypes": DTYPES,
    }
    spec.update(overrides)
    path = tmp_path / "regression.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_float_inputs_audit_green_in_every_dtype(tmp_path: Path, run_cli: CliRunner) -> None:
    out = tmp_path / "r.json"
    result = run_cli("run", regression_spec(tmp_path), "--json", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 passed, 0 failed, 0 errors" in result.stdout
    groups = json.loads(out.read_text())["groups"]
    assert sorted(g["dtype"] for g in groups) == sorted(DTYPES)


def test_a_wrong_backward_on_float_inputs_fails(tmp_path: Path, run_cli: CliRunner) -> None:
    """The same audit is not vacuous: a scaled output gradient fails."""
    spec = regression_spec(tmp_path, dtypes=["float64", "bfloat16"])
    result = run_cli("run", spec, "--set", "tolerance.overrides=[{tensors: [out], rtol: 0}]")
    assert result.returncode == 0, result.stdout  # an override alone changes nothing wrong
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from gradaudit import hookimpl\n"
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('fp', {PLUGINS!r})\n"
        "fp = importlib.util.module_from_spec(spec); spec.loader.exec_module(fp)\n"
        "def wrong(model, batch, forward):\n"
        "    grads = fp.regression_backward(model, batch, forward)\n"
        "    grads['W1'] = grads['W1'] * 1.05\n"
        "    return grads\n"
        "@hookimpl\ndef register_gradients(register):\n    register('wrong', wrong)\n",
        encoding="utf-8",
    )
    spec = regression_spec(
        tmp_path, plugins=[PLUGINS, str(broken)], gradients={"plugin": "wrong"}, dtypes=DTYPES
    )
    result = run_cli("run", spec)
    assert result.returncode == 1
    for dtype in DTYPES:
        assert f"cpu      {dtype:<9} W1 " in result.stdout
    assert result.stdout.count("FAIL") >= 4


def test_a_run_whose_every_reference_is_zero_is_red_in_every_report(
    tmp_path: Path, run_cli: CliRunner
) -> None:
    """Nothing moved the loss, so nothing was proven: exit 1, and every report says so with
    an error per tensor (not a green table beside a red exit code)."""
    spec = regression_spec(
        tmp_path,
        model={"plugin": "regression-dead"},
        gradients={"plugin": "regression-zeros"},
        dtypes=["float64"],
    )
    xml, data = tmp_path / "r.xml", tmp_path / "r.json"
    result = run_cli("run", spec, "--junit-xml", xml, "--json", data)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 passed, 0 failed, 5 errors" in result.stdout
    assert "was zero on every batch" in result.stdout
    root = ET.parse(xml).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "0", "5")
    report = json.loads(data.read_text())
    assert report["totals"] == {"passed": 0, "failed": 0, "errors": 5, "skipped": 0}


def test_saved_activations_reach_the_backward_unaudited_and_guarded(
    tmp_path: Path, run_cli: CliRunner
) -> None:
    """`Forward(..., saved=...)`: the backward reads what it needs of the forward, in the
    case's dtype, detached; it is not audited; changing it in place is an error naming it."""
    spec = regression_spec(
        tmp_path, model={"plugin": "regression-saving"}, gradients={"plugin": "regression-saved"}
    )
    out = tmp_path / "r.json"
    result = run_cli("run", spec, "--json", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["run"]["tensors"] == ["out", "W1", "b1", "W2"]
    result = run_cli(
        "run", spec, "--set", "gradients.options={scribble: true}", "--dtype", "float32"
    )
    assert result.returncode == 1
    assert "gradients 'regression-saved' modified saved pre in place" in result.stdout


def test_plain_float32_tensor_is_an_error_naming_it(tmp_path: Path, run_cli: CliRunner) -> None:
    spec = regression_spec(tmp_path, model={"plugin": "regression-plain-tensor"})
    result = run_cli("run", spec, "--dtype", "bfloat16")
    assert result.returncode == 1
    assert "`W2` (float32) as plain tensor attribute" in result.stdout
    assert "register them with nn.Parameter" in result.stdout
    assert "0 passed" in result.stdout


def test_plan_lists_every_check_without_running_a_batch(run_cli: CliRunner) -> None:
    result = run_cli("plan", "specs/charrnn.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "8 cases, 120 tensor checks" in lines[0]
    rows = lines[1:]
    assert len(rows) == 120
    assert sum("SKIP  cuda is not available" in r for r in rows) == 60
    assert any(r.startswith("cpu      float64") and "ulps" in r for r in rows)
    assert any(r.startswith("cpu      float32") and "baseline k=2 floor=8" in r for r in rows)
    as_json = json.loads(run_cli("plan", "specs/charrnn.yaml", "--json").stdout)
    assert as_json["checks"] == 120


def test_plan_applies_shard_and_filters(run_cli: CliRunner) -> None:
    result = run_cli(
        "plan", "specs/charrnn.yaml", "--device", "cpu", "--dtype", "float32", "--shard", "2/3"
    )
    assert result.returncode == 0, result.stderr
    assert "1 cases, 15 tensor checks, batches 1, 4, 7 (shard 2/3)" in result.stdout


def test_a_plugin_that_kills_its_process_in_the_first_case_reports_every_planned_case(
    tmp_path: Path, run_cli: CliRunner
) -> None:
    """The plugin SIGTERMs the process it runs in: the executor, not gradaudit. The run is
    red (exit 1), and every planned case is in the reports with what did not run."""
    spec = regression_spec(
        tmp_path, gradients={"plugin": "regression-sigterm"}, devices=["cpu", "cuda"]
    )
    junit, out = tmp_path / "r.xml", tmp_path / "r.json"
    result = run_cli("run", spec, "--junit-xml", junit, "--json", out)
    assert result.returncode == 1, result.stdout + result.stderr
    cases = ET.parse(junit).getroot().iter("testcase")
    names = [(c.get("classname"), c.get("name")) for c in cases]
    planned = [(d, t) for d in ("cpu", "cuda") for t in DTYPES]
    for device, dtype in planned:
        for tensor in ("out", "h", "W1", "b1", "W2"):
            assert (f"gradaudit.regression.{device}.{dtype}", tensor) in names
    data = json.loads(out.read_text())
    assert data["stopped"] is None
    assert "killed by SIGTERM during cpu/float64 batch 0" in junit.read_text()
    assert data["totals"]["errors"] == 20  # every cpu tensor check: 4 dtypes x 5 tensors
    assert data["totals"]["passed"] == 0


@pytest.mark.parametrize("how", ["sys.exit", "skip"])
def test_base_exceptions_from_plugins_are_errors(
    tmp_path: Path, run_cli: CliRunner, how: str
) -> None:
    spec = regression_spec(
        tmp_path, gradients={"plugin": f"regression-{how}"}, dtypes=["float32", "float64"]
    )
    result = run_cli("run", spec)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "0 passed, 0 failed, 10 errors" in result.stdout


def test_swallowed_timeout_is_still_an_error(tmp_path: Path, run_cli: CliRunner) -> None:
    spec = regression_spec(
        tmp_path,
        gradients={"plugin": "regression-swallow-timeout"},
        dtypes=["float32"],
        batches={"count": 1, "size": 4},
    )
    result = run_cli("run", spec, "--timeout", "0.5")
    assert result.returncode == 1, result.stdout
    assert "timed out after 0.5s" in result.stdout
    assert "PASS" not in result.stdout


def test_nothing_compared_exits_5(run_cli: CliRunner) -> None:
    result = run_cli("run", "specs/charrnn.yaml", "--device", "cuda")
    assert result.returncode == 5, result.stdout + result.stderr
    assert "no tensor was compared" in result.stdout
    empty = run_cli(
        "run", "specs/charrnn.yaml", "--device", "cpu", "--shard", "3/3", "--set", "batches.count=2"
    )
    assert empty.returncode == 5, empty.stdout + empty.stderr


def test_tensor_exclusions_and_set(tmp_path: Path, run_cli: CliRunner) -> None:
    spec = regression_spec(tmp_path, tensors=["*", "!h", "!out"], dtypes=["float32"])
    result = run_cli("plan", spec)
    assert "3 tensor checks" in result.stdout
    bad = run_cli("plan", spec, "--set", "batches.count=0")
    assert bad.returncode == 2
    assert "--set batches.count=0: batches.count" in bad.stderr
    nothing = run_cli("plan", spec, "--set", "tensors=['!h']")
    assert nothing.returncode == 2
    assert "leave no tensor" in nothing.stderr or "matches no tensor" not in nothing.stderr


def test_random_data_is_seeded_and_validated() -> None:
    from gradaudit_random import load_random

    data = load_random(
        {"tensors": {"x": {"shape": [3]}, "y": {"shape": [], "classes": 4}}}, Path(".")
    )
    first = list(data.batches("train", 2, 5, seed=7))
    again = list(data.batches("train", 2, 5, seed=7))
    assert first[1]["x"].shape == (5, 3) and first[1]["y"].dtype.is_floating_point is False
    assert all(a["x"].equal(b["x"]) for a, b in zip(first, again, strict=True))
    alone = next(iter(data.batches("train", 1, 5, seed=8)))  # batch 1 of seed 7, drawn alone
    assert alone["x"].equal(first[1]["x"])
    assert data.model_args == {"shapes": {"x": (3,), "y": ()}, "classes": {"y": 4}}
    with pytest.raises(ValueError, match=r"tensors\.y: an int tensor needs `classes`"):
        load_random({"tensors": {"y": {"shape": [], "dtype": "int"}}}, Path("."))


def test_custom_function_in_a_model_audit_warns(tmp_path: Path, run_cli: CliRunner) -> None:
    spec = regression_spec(
        tmp_path, model={"plugin": "regression-custom-function"}, dtypes=["float64"]
    )
    result = run_cli("run", spec)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gradaudit: warning:" in result.stdout and "Tanh" in result.stdout
    plain = run_cli("run", regression_spec(tmp_path, dtypes=["float64"]))
    assert "warning" not in plain.stdout


def test_declared_clipping_audits_the_code_as_written(tmp_path: Path, run_cli: CliRunner) -> None:
    """The manual code clips on purpose: declared, the same clip is applied to autograd's
    gradient (and the truth) and the audit passes; undeclared, the clipped tensors fail."""
    clipped = {"gradients": {"plugin": "regression-clipped"}, "dtypes": ["float64", "float32"]}
    undeclared = run_cli("run", regression_spec(tmp_path, **clipped), "--json", tmp_path / "u.json")
    assert undeclared.returncode == 1
    failed = {
        t["tensor"]
        for g in json.loads((tmp_path / "u.json").read_text())["groups"]
        for t in g["tensors"]
        if t["status"] == "fail"
    }
    assert failed and failed <= {"W1", "b1"}
    rule = [{"clip": 0.05, "tensors": ["W1", "b1"]}]
    declared = run_cli("run", regression_spec(tmp_path, postprocess=rule, **clipped))
    assert declared.returncode == 0, declared.stdout
    tiny = [{"clip": 1e-9, "tensors": ["W1"]}]  # clips every element: only signs would remain
    saturated = run_cli("run", regression_spec(tmp_path, postprocess=tiny, **clipped))
    assert saturated.returncode == 1 and "only signs would be compared" in saturated.stdout


def test_the_name_probe_uses_real_rows(tmp_path: Path, run_cli: CliRunner) -> None:
    """A forward that needs more than one row (Bessel's correction) is probed with a few rows
    of the first batch, not one; a forward that fails on every probe says it was the probe."""
    spec = regression_spec(tmp_path, model={"plugin": "regression-bessel"}, dtypes=["float64"])
    result = run_cli("run", spec)
    assert result.returncode == 0, result.stdout + result.stderr
    one_row = regression_spec(
        tmp_path, model={"plugin": "regression-bessel"}, batches={"count": 1, "size": 1}
    )
    failed = run_cli("run", one_row)
    assert failed.returncode == 2
    assert "the probe forward on 1 row(s)" in failed.stderr
    assert "ZeroDivisionError" in failed.stderr
