"""The pytest plugin: specs collected as one item per tensor check, with the verdicts of
`gradaudit run`; fixtures; -k, --junitxml and xdist's -n; no torch when nothing is collected."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import gradaudit_ops.gallery  # noqa: F401
import pytest
import torch  # noqa: F401  (see below)
import yaml

import gradaudit.targets.model.sharing  # noqa: F401
from tests.conftest import REPO, cli_env, run_gradaudit, small_spec

pytest_plugins = ["pytester"]
# pytester's in-process runs restore sys.modules afterwards: torch (and the modules holding
# its extensions) must be imported before them, or the next run imports torch a second time.

NEGATIVE = str(REPO / "tests" / "negative_controls.py")
# The recurrent carry dropped: wrong below the last step, right elsewhere (negative_controls).
WRONG = small_spec(
    gradients={"plugin": "bptt-no-recurrence"},
    plugins=[NEGATIVE],
    devices=["cpu", "cuda"],
    checks={"repeat": {}},
)
TENSORS = ["logits", *(f"h.{t}" for t in range(1, 6)), "C.weight", "U.weight", "U.bias"]
TENSORS += ["W.weight", "V.weight", "V.bias"]


def write(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m pytest` in `folder` (the plugin comes through its entry point)."""
    env = cli_env({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def junit_verdicts(path: Path) -> dict[str, str]:
    """testcase name -> pass | fail | error | skip, from pytest's --junitxml."""
    found: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        status = next((s for s in ("failure", "error", "skipped") if s in tags), "pass")
        name = case.get("name", "")
        assert name not in found, f"testcase {name} appears twice"
        found[name] = {"failure": "fail", "skipped": "skip"}.get(status, status)
    return found


def cli_verdicts(json_path: Path) -> dict[str, str]:
    """The same names from `gradaudit run --json`: tensor[device-dtype(-check)] -> verdict."""
    found: dict[str, str] = {}
    for group in json.loads(json_path.read_text())["groups"]:
        extra = "" if group["check"] == "gradients" else f"-{group['check']}"
        for t in group["tensors"]:
            status = {"skipped": "skip"}.get(t["status"], t["status"])
            found[f"{t['tensor']}[{group['device']}-{group['dtype']}{extra}]"] = status
    return found


@pytest.fixture(scope="module")
def wrong_spec(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A spec with a deliberately wrong gradient, and `gradaudit run`'s verdicts on it."""
    folder = tmp_path_factory.mktemp("wrong")
    spec = write(folder, "wrong.yaml", WRONG)
    done = run_gradaudit("run", spec, "--json", folder / "cli.json", "-q", cwd=folder)
    assert done.returncode == 1, done.stdout + done.stderr
    return spec, cli_verdicts(folder / "cli.json")


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_collected_spec_gives_the_verdicts_of_gradaudit_run(
    wrong_spec: tuple[Path, dict[str, str]], workers: list[str]
) -> None:
    if workers:
        pytest.importorskip("xdist")
    spec, expected = wrong_spec
    folder = spec.parent
    done = run_pytest(folder, spec.name, "--junitxml", "py.xml", *workers)
    assert done.returncode == 1, done.stdout + done.stderr
    got = junit_verdicts(folder / "py.xml")
    cases = {name: status for name, status in got.items() if name.startswith("gradients[")}
    assert cases == {f"gradients[cpu-{d}]": "pass" for d in ("float32", "float64")}
    got = {name: status for name, status in got.items() if name not in cases}
    assert got == expected
    assert len(got) == 2 * 2 * 2 * len(TENSORS)  # device x dtype x (gradients, repeat)
    assert expected["W.weight[cpu-float32]"] == "fail"
    assert expected["V.weight[cpu-float32]"] == "pass"
    assert expected["W.weight[cpu-float32-repeat]"] == "pass"
    assert expected["W.weight[cuda-float64]"] in ("skip", "fail")  # "fail" where cuda exists


def test_k_selects_and_a_pass_runs_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradaudit.pytest_items import SpecAudit

    runs: list[tuple[str, str]] = []
    real = SpecAudit._run

    def counted(self: SpecAudit, key: tuple[str, str]) -> Any:
        runs.append(key)
        return real(self, key)

    monkeypatch.setattr(SpecAudit, "_run", counted)
    write(pytester.path, "small.yaml", small_spec())
    result = pytester.runpytest_inprocess("small.yaml", "-k", "weight and float64", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*small.yaml::W.weight?cpu-float64? PASSED*"])
    assert runs == [("cpu", "float64")]  # four items, one pass; float32 never ran


def test_a_failing_tensor_shows_its_detail_and_x_stops(pytester: pytest.Pytester) -> None:
    write(
        pytester.path, "wrong.yaml", small_spec(**{k: WRONG[k] for k in ("gradients", "plugins")})
    )
    result = pytester.runpytest_inprocess("wrong.yaml", "-x", "-k", "float64")
    result.assert_outcomes(passed=1, failed=1)  # logits passes, h.1 fails, -x stops
    result.stdout.fnmatch_lines(
        [
            "*gradaudit gradients: h.1 cpu-float64*",
            "h.1: * elements * beyond ulps*",
            "worst element: *manual*",
        ]
    )
    assert "Traceback" not in result.stdout.str() and "pytest_plugin.py" not in result.stdout.str()


def test_a_plugin_that_raises_is_a_pytest_error(pytester: pytest.Pytester) -> None:
    spec = small_spec(gradients={"plugin": "bptt-raises"}, plugins=[NEGATIVE], dtypes=["float64"])
    write(pytester.path, "raises.yaml", spec)
    result = pytester.runpytest_inprocess("raises.yaml", "-k", "V.bias")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*raised RuntimeError: boom*"])


def test_a_broken_spec_is_a_collection_error_with_its_line(pytester: pytest.Pytester) -> None:
    bad = small_spec()
    bad["batches"] = {"split": "train", "count": "two", "size": 4}
    write(pytester.path, "broken.yaml", bad)
    (pytester.path / "notyaml.yaml").write_text("name: y\nmodel: [\n")
    result = pytester.runpytest_inprocess("broken.yaml", "notyaml.yaml")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["broken.yaml:*: batches.count: *integer*", "notyaml.yaml:3: *YAML*"]
    )
    assert "Traceback" not in out and "gradaudit/" not in out


def test_specs_are_collected_only_when_named_or_matched(pytester: pytest.Pytester) -> None:
    write(pytester.path, "small.yaml", small_spec(dtypes=["float64"]))
    (pytester.path / "other.yaml").write_text("some: other tool's file\n")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    assert pytester.runpytest_inprocess("--co", "-q").ret == 0
    plain = pytester.runpytest_inprocess("--co", "-q").stdout.str()
    assert "small.yaml" not in plain  # no ini globs: an ordinary run is unaffected
    pytester.makeini("[pytest]\ngradaudit_specs = small*.yaml\n")
    matched = pytester.runpytest_inprocess("--co", "-q")
    matched.stdout.fnmatch_lines(
        ["small.yaml::V.bias?cpu-float64?", "small.yaml::gradients?cpu-float64?"]
    )
    matched.stdout.fnmatch_lines(["*14 tests collected*"])  # 12 tensors, the case, test_plain
    assert "other.yaml" not in matched.stdout.str()
    # given on the command line, a YAML file that is no spec is left to other plugins
    assert pytester.runpytest_inprocess("other.yaml").ret == pytest.ExitCode.USAGE_ERROR


def test_an_op_spec_is_one_item_per_tensor_check(pytester: pytest.Pytester) -> None:
    op = {
        "candidate": "gradaudit_ops.rmsnorm:RMSNormFunction.apply",
        "reference": "gradaudit_ops.rmsnorm:rmsnorm_reference",
        "inputs": {"x": {"shape": [4, 8]}, "weight": {"shape": [8]}},
    }
    write(pytester.path, "good.yaml", {"name": "rms", "op": op, "dtypes": ["float64"]})
    wrong = {**op, "candidate": "gradaudit_ops.gallery:RMSNormWrongAxis.apply"}
    write(pytester.path, "wrong.yaml", {"name": "axis", "op": wrong, "dtypes": ["float64"]})
    result = pytester.runpytest_inprocess("good.yaml", "wrong.yaml", "-v")
    # 12 variants in float64 (the long ones run in bfloat16 only), each out, grad.x and
    # grad.weight, per spec; the wrong axis shows with extra leading dims only
    result.assert_outcomes(passed=2 * 36 - 2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*good.yaml::grad.x?cpu-float64-variant:lead1? PASSED*",
            "*wrong.yaml::grad.x?cpu-float64-variant:lead1? FAILED*",
        ]
    )
    assert "wrong.yaml::grad.x[cpu-float64-variant:base] PASSED" in result.stdout.str()


FIXTURE_TESTS = """
import pytest
from gradaudit_ops.rmsnorm import RMSNormFunction as Norm, rmsnorm_reference as ref

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tensor", {tensors!r})
def test_gradient(gradaudit_audit, tensor, dtype):
    gradaudit_audit("spec.yaml", dtypes=[dtype], tensors=[tensor])

def test_rmsnorm(gradaudit_check_op):
    gradaudit_check_op(Norm.apply, ref, inputs={{"x": (4, 8), "weight": (8,)}})
"""


def test_fixtures_give_one_junit_testcase_per_tensor_check(tmp_path: Path) -> None:
    write(tmp_path, "spec.yaml", small_spec(**{k: WRONG[k] for k in ("gradients", "plugins")}))
    code = FIXTURE_TESTS.format(tensors=TENSORS)
    assert len(code.strip().splitlines()) <= 10
    (tmp_path / "test_grads.py").write_text(code)
    done = run_pytest(tmp_path, "--junitxml", "out.xml")
    got = junit_verdicts(tmp_path / "out.xml")
    assert len(got) == 2 * len(TENSORS) + 1, done.stdout
    failed = {name for name, status in got.items() if status == "fail"}
    wrong = {"W.weight", "U.weight", "U.bias", "C.weight", "h.1", "h.2", "h.3", "h.4"}
    assert failed == {f"test_gradient[{t}-{d}]" for t in wrong for d in ("float32", "float64")}
    assert got["test_rmsnorm"] == "pass"
    assert "h.1: " in done.stdout and "beyond" in done.stdout


def test_the_audit_fixture_refuses_what_is_not_audited(pytester: pytest.Pytester) -> None:
    write(pytester.path, "spec.yaml", small_spec(dtypes=["float64"]))
    pytester.makepyfile(
        test_it="""
        import pytest
        from gradaudit.errors import UsageError

        def test_unknown(gradaudit_audit):
            with pytest.raises(UsageError, match="'X.weight' is not audited"):
                gradaudit_audit("spec.yaml", tensors=["X.weight"])

        def test_result(gradaudit_audit):
            result = gradaudit_audit("spec.yaml", tensors=["V.bias"])
            assert result.ok and result.passed == 1
        """
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=2)


def test_loading_the_plugin_imports_no_torch(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "conftest.py").write_text(
        "import sys\n\n"
        "def pytest_sessionfinish(session):\n"
        "    heavy = [m for m in ('torch', 'yaml', 'numpy') if m in sys.modules]\n"
        "    print('LOADED', 'gradaudit.pytest_plugin' in sys.modules, 'HEAVY', heavy)\n"
    )
    done = run_pytest(tmp_path, "-q", "-s")
    assert "LOADED True HEAVY []" in done.stdout, done.stdout + done.stderr
    off = run_pytest(tmp_path, "-q", "-s", "-p", "no:gradaudit")
    assert "LOADED False HEAVY []" in off.stdout, off.stdout + off.stderr


def test_the_plans_warnings_are_pytest_warnings(pytester: pytest.Pytester) -> None:
    spec = small_spec(gradients={"plugin": "charrnn-bptt", "options": {"bogus": 1}})
    write(pytester.path, "spec.yaml", spec)
    result = pytester.runpytest_inprocess("spec.yaml", "--co", "-q")
    result.stdout.fnmatch_lines(["*GradauditWarning: spec.yaml: *does not accept option(s) bogus*"])
