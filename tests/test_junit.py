"""The JUnit report read the way CI consumers read it: junitparser, Jenkins, GitLab, and the
GitHub reporters (mikepenz/action-junit-report, dorny/test-reporter), emulated by ElementTree.

Every run goes through the real console script; the runs a module needs start together.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from junitparser import Error, Failure, JUnitXml, Skipped

from gradaudit.spec import load_spec
from tests.negative_controls import expected_wrong, tensor_names
from tests.test_report_schema import SCHEMA

REPO = Path(__file__).resolve().parents[1]
NEGATIVE_CONTROLS = REPO / "tests" / "negative_controls.py"
CliRun = Callable[..., "subprocess.CompletedProcess[str]"]
Job = tuple[list[Any], Mapping[str, str] | None]

TENSORS_T5 = tensor_names(5)
# bptt-tanh-sign (tanh' taken as 1 + h^2) is wrong below the last step (T = 5).
TANH_SIGN_WRONG = expected_wrong("bptt-tanh-sign", 5)
REQUIRED_PROPERTIES = {
    "gradaudit_version",
    "torch_version",
    "device",
    "device_name",
    "dtype",
    "seed",
    "batches",
    "spec",
    "spec_sha256",
    "tolerance_mode",
}
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SUITE_NAME = re.compile(r"small\[(cpu|mps),(float32|float64)\]")

HOSTILE_PLUGIN = textwrap.dedent(
    '''
    """A gradients plugin whose exception message is everything a report writer fears."""
    from gradaudit import hookimpl

    NOT_UTF8 = b"\\xff\\xfe".decode("utf-8", "surrogateescape")
    MESSAGE = (
        "ctl<\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08> "
        "\\x1b[31mred\\x1b[0m ]]> cdata-end " + NOT_UTF8 + " " + "x" * 1_000_000 + "\\x0bvt-tail"
    )

    def hostile(model, batch, forward):
        raise RuntimeError(MESSAGE)

    @hookimpl
    def register_gradients(register):
        register("hostile", hostile)
    '''
)

FLOAT64_ONLY_RAISES = textwrap.dedent(
    '''
    """The shipped BPTT, except that it refuses float64."""
    import torch
    from gradaudit_charrnn.bptt import charrnn_bptt

    from gradaudit import hookimpl

    def picky(model, batch, forward):
        if forward.loss.dtype == torch.float64:
            raise NotImplementedError("picky: no float64 support")
        return charrnn_bptt(model, batch, forward)

    @hookimpl
    def register_gradients(register):
        register("picky", picky)
    '''
)


def write_yaml(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def run_many(run_cli: CliRun, jobs: dict[str, Job]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run several gradaudit commands at once (each is mostly torch's import)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(run_cli, *args, env=env) for name, (args, env) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
    spec_dict: Callable[..., dict[str, Any]],
    run_cli: CliRun,
) -> dict[str, Any]:
    """Four runs: passing (with a skipped device), failing, hostile, float64-only error."""
    tmp = tmp_path_factory.mktemp("junit")
    (tmp / "hostile.py").write_text(HOSTILE_PLUGIN, encoding="utf-8")
    (tmp / "picky.py").write_text(FLOAT64_ONLY_RAISES, encoding="utf-8")
    specs = {
        # mps never exists on Linux: its suites are always skipped, on any runner.
        "passing": write_yaml(tmp / "passing.yaml", spec_dict(devices=["cpu", "mps"])),
        "failing": write_yaml(
            tmp / "failing.yaml",
            spec_dict(
                plugins=[str(NEGATIVE_CONTROLS)],
                gradients={"plugin": "bptt-tanh-sign"},
            ),
        ),
        "hostile": write_yaml(
            tmp / "hostile.yaml",
            spec_dict(
                plugins=["hostile.py"],
                gradients={"plugin": "hostile"},
                dtypes=["float32"],
                tensors=["logits", "V.*"],
                batches={"split": "train", "count": 1, "size": 4, "seed": 3},
            ),
        ),
        "picky": write_yaml(
            tmp / "picky.yaml",
            spec_dict(
                plugins=["picky.py"],
                gradients={"plugin": "picky"},
                dtypes=["float64", "float32"],  # the erroring group first: the next still runs
            ),
        ),
    }
    jobs: dict[str, Job] = {}
    for name, spec in specs.items():
        out = tmp / name
        jobs[name] = (["run", spec, "--junit-xml", out / "report.xml", "-q"], None)
    procs = run_many(run_cli, jobs)
    return {
        name: {"proc": procs[name], "spec": specs[name], "xml": tmp / name / "report.xml"}
        for name in specs
    }


def outcome(case: Any) -> str:
    kinds = {type(r) for r in case.result}
    for kind, label in ((Failure, "failure"), (Error, "error"), (Skipped, "skipped")):
        if kind in kinds:
            return label
    return "pass"


def reporters_view(path: Path) -> list[dict[str, Any]]:
    """What mikepenz/action-junit-report and dorny/test-reporter (java-junit) pick out.

    Both walk <testsuites>/<testsuite>/<testcase>, read name/classname/time from each case
    and take the first <failure>/<error>/<skipped> child with its `message` attribute
    (falling back to the text) as the annotation.
    """
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    float(root.attrib["time"])
    seen = []
    for suite in root.findall("testsuite"):
        assert suite.get("name"), "a testsuite without a name"
        float(suite.attrib["time"])
        cases = suite.findall("testcase")
        assert int(suite.attrib["tests"]) == len(cases)
        for case in cases:
            status, message = "pass", None
            for tag in ("failure", "error", "skipped"):
                element = case.find(tag)
                if element is not None:
                    status, message = tag, element.get("message") or element.text
                    break
            seen.append(
                {
                    "suite": suite.attrib["name"],
                    "name": case.attrib["name"],
                    "classname": case.attrib["classname"],
                    "time": case.get("time"),
                    "status": status,
                    "message": message,
                    "element": case,
                }
            )
    return seen


def suite_properties(path: Path) -> dict[str, dict[str, str]]:
    """testsuite name -> its <properties>, as every consumer reads them."""
    return {
        suite.attrib["name"]: {
            p.attrib["name"]: p.attrib["value"] for p in suite.findall("./properties/property")
        }
        for suite in ET.parse(path).getroot().findall("testsuite")
    }


def summary_property(path: Path, suite: str, case: str) -> dict[str, Any]:
    """A testcase's summary: the `gradaudit.summary:<name>` property of its suite."""
    import json

    props = suite_properties(path)[suite]
    data = json.loads(props[f"gradaudit.summary:{case}"])
    assert isinstance(data, dict)
    return data


# --- a passing run -------------------------------------------------------------------------------


def test_suites_and_counts_as_junitparser_reads_them(runs: dict[str, Any]) -> None:
    run = runs["passing"]
    assert run["proc"].returncode == 0, run["proc"].stdout + run["proc"].stderr
    xml = JUnitXml.fromfile(str(run["xml"]))
    suites = list(xml)
    assert [s.name for s in suites] == [
        "small[cpu,float32]",
        "small[cpu,float64]",
        "small[mps,float32]",
        "small[mps,float64]",
    ]
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    pairs: list[tuple[str, str]] = []
    for suite in suites:
        cases = list(suite)
        outcomes = [outcome(c) for c in cases]
        assert [c.name for c in cases] == TENSORS_T5
        assert suite.tests == len(cases)
        assert suite.failures == outcomes.count("failure")
        assert suite.errors == outcomes.count("error")
        assert suite.skipped == outcomes.count("skipped")
        for key, value in (
            ("tests", len(cases)),
            ("failures", outcomes.count("failure")),
            ("errors", outcomes.count("error")),
            ("skipped", outcomes.count("skipped")),
        ):
            totals[key] += value
        if suite.name.startswith("small[cpu,"):
            assert set(outcomes) == {"pass"}
        else:  # a device this machine lacks is skipped, never an error
            assert set(outcomes) == {"skipped"}
        for case in cases:
            assert case.classname, f"{suite.name}/{case.name} has no classname"
            pairs.append((case.classname, case.name))
    assert len(pairs) == len(set(pairs)), "duplicate (classname, name) pairs"
    root = ET.parse(run["xml"]).getroot()
    assert {k: int(root.attrib[k]) for k in ("tests", "failures", "errors")} == {
        k: totals[k] for k in ("tests", "failures", "errors")
    }
    assert "skipped" not in root.attrib  # junit-10.xsd has no `skipped` on <testsuites>
    assert totals == {
        "tests": 4 * len(TENSORS_T5),
        "failures": 0,
        "errors": 0,
        "skipped": 2 * len(TENSORS_T5),
    }


def test_every_time_attribute_has_three_decimals(runs: dict[str, Any]) -> None:
    for name in ("passing", "failing", "picky"):
        raw = runs[name]["xml"].read_text(encoding="utf-8")
        times = re.findall(r'\stime="([^"]*)"', raw)
        assert len(times) >= 1 + 2 + 2 * len(TENSORS_T5)  # root, suites, cases
        bad = [t for t in times if not re.fullmatch(r"\d+\.\d{3}", t)]
        assert not bad, f"{name}: time attributes without exactly 3 decimals: {bad[:5]}"


def test_suite_properties(runs: dict[str, Any]) -> None:
    run = runs["passing"]
    sha = hashlib.sha256(run["spec"].read_bytes()).hexdigest()
    mode = load_spec(run["spec"]).spec.tolerance.mode  # the spec's default, whatever it is
    assert mode
    for suite in JUnitXml.fromfile(str(run["xml"])):
        props = suite_properties(run["xml"])[suite.name]
        missing = REQUIRED_PROPERTIES - set(props)
        assert not missing, f"{suite.name}: missing properties {sorted(missing)}"
        match = SUITE_NAME.fullmatch(suite.name)
        assert match, suite.name
        assert props["device"] == match[1]
        assert props["dtype"] == match[2]
        assert props["device_name"] == match[1]  # cpu, and an absent device, by name
        assert props["gradaudit_version"] == version("gradaudit")
        assert props["torch_version"] == version("torch")
        assert props["seed"] == "3"
        assert "count=2" in props["batches"] and "size=4" in props["batches"]
        assert props["spec"] == str(run["spec"])
        assert props["spec_sha256"] == sha
        assert props["tolerance_mode"] == mode


def test_reporters_see_every_case(runs: dict[str, Any]) -> None:
    for name in ("passing", "failing", "picky"):
        view = reporters_view(runs[name]["xml"])
        assert len(view) == (4 if name == "passing" else 2) * len(TENSORS_T5)
        for case in view:
            assert case["name"] and case["classname"]
            if case["time"] is not None:
                assert float(case["time"]) >= 0
            if case["status"] in ("failure", "error"):
                assert case["element"].find(case["status"]).get("message"), case


def test_every_report_is_valid_against_the_xunit_schema(runs: dict[str, Any]) -> None:
    """Jenkins' xUnit plugin validates its input against junit-10.xsd before reading it."""
    for name in ("passing", "failing", "hostile", "picky"):
        errors = [str(e.reason) for e in SCHEMA.iter_errors(str(runs[name]["xml"]))]
        assert not errors, f"{name}: {errors[:3]}"


def test_every_testcase_has_a_time_for_the_reporters(runs: dict[str, Any]) -> None:
    view = reporters_view(runs["passing"]["xml"])
    missing = [f"{c['suite']}/{c['name']}" for c in view if c["time"] is None]
    assert not missing, f"testcases without a time attribute: {missing[:4]} ..."


def test_no_temp_files_left_beside_the_report(runs: dict[str, Any]) -> None:
    for name in ("passing", "failing", "hostile", "picky"):
        folder = runs[name]["xml"].parent
        assert sorted(p.name for p in folder.iterdir()) == ["report.xml"], name


# --- a failing run -------------------------------------------------------------------------------


def test_failures_have_a_one_line_message_and_a_reproducing_body(runs: dict[str, Any]) -> None:
    run = runs["failing"]
    assert run["proc"].returncode == 1, run["proc"].stdout + run["proc"].stderr
    view = reporters_view(run["xml"])
    for dtype in ("float32", "float64"):
        failing = {
            c["name"]
            for c in view
            if c["suite"] == f"small[cpu,{dtype}]" and c["status"] == "failure"
        }
        assert failing == TANH_SIGN_WRONG
    assert {c["status"] for c in view} == {"pass", "failure"}

    junitparser_failures = 0
    for suite in JUnitXml.fromfile(str(run["xml"])):
        for case in suite:
            for result in case.result:
                if isinstance(result, Failure):
                    junitparser_failures += 1
                    assert result.message and result.text
    assert junitparser_failures == 2 * len(TANH_SIGN_WRONG)

    for seen in (c for c in view if c["status"] == "failure"):
        failure = seen["element"].find("failure")
        message = failure.get("message")
        assert message and message.strip() == message
        assert len(message.splitlines()) == 1, message  # Jenkins shows it as a title
        assert message.startswith(f"{seen['name']}: ")
        body = failure.text or ""
        assert body.strip(), "GitLab shows the element text: it must not be empty"
        summary = summary_property(run["xml"], seen["suite"], seen["name"])
        assert summary["status"] == "fail"
        index = ", ".join(str(i) for i in summary["worst"]["worst_index"])
        batch, seed = summary["worst_batch"], summary["worst_seed"]
        assert seed == 3 + batch  # batch k is seeded with seed + k
        assert f"worst element: [{index}] in batch {batch} (seed {seed})" in body
        dtype = seen["suite"].split(",")[1].rstrip("]")
        reproduce = f"--device cpu --dtype {dtype} --batch {batch}"
        assert "reproduce: gradaudit run " in body and reproduce in body


# --- hostile plugin messages ---------------------------------------------------------------------


def test_hostile_message_still_gives_a_well_formed_report(runs: dict[str, Any]) -> None:
    run = runs["hostile"]
    proc = run["proc"]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    raw_bytes = run["xml"].read_bytes()
    raw = raw_bytes.decode("utf-8")  # strict: no lone surrogates or other non-UTF-8 made it out
    assert not CONTROL.search(raw), "XML-illegal control characters in the file"
    assert "\x1b" not in raw
    ET.fromstring(raw_bytes)
    suites = list(JUnitXml.fromfile(str(run["xml"])))
    assert [s.name for s in suites] == ["small[cpu,float32]"]
    cases = list(suites[0])
    assert [c.name for c in cases] == ["logits", "V.weight", "V.bias"]
    for case in cases:
        errors = [r for r in case.result if isinstance(r, Error)]
        assert len(errors) == 1, case.name
        message = errors[0].message
        assert message and len(message.splitlines()) == 1, message[:200]
        assert len(message) < 1000  # a title, not a megabyte
        assert "hostile" in message and "RuntimeError" in message and "ctl<" in message
        assert "red" in message and "[31m" not in message and "[0m" not in message
        body = errors[0].text or ""
        assert "ctl<" in body and "[31m" not in body
        assert len(body) < 100_000


def test_hostile_message_is_capped_and_free_of_ansi_everywhere(runs: dict[str, Any]) -> None:
    run = runs["hostile"]
    assert run["proc"].returncode == 1
    raw = run["xml"].read_text(encoding="utf-8")
    assert "[31m" not in raw, "ANSI colour codes leaked into the JUnit file"
    assert run["xml"].stat().st_size < 1_000_000, "bodies are capped: the report stays small"


# --- unwritable report paths ----------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--junit-xml", "--json"])
@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_unwritable_report_path_fails_before_the_audit(
    tmp_path: Path,
    option: str,
    where: str,
    run_cli: CliRun,
    spec_dict: Callable[..., dict[str, Any]],
) -> None:
    spec = write_yaml(tmp_path / "spec.yaml", spec_dict())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "a-dir").mkdir()
    target = blocker / "report.out" if where == "under-a-file" else tmp_path / "a-dir"
    proc = run_cli("run", spec, option, target)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "", "the audit started (the table header was printed)"
    assert "device   dtype" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gradaudit: error: ") and str(target) in lines[0]
    assert "Traceback" not in proc.stderr
    assert blocker.read_text(encoding="utf-8") == "not a folder\n"
    assert list((tmp_path / "a-dir").iterdir()) == []


# --- a plugin that raises for one dtype ----------------------------------------------------------


def test_plugin_error_is_an_error_case_and_other_groups_still_run(runs: dict[str, Any]) -> None:
    run = runs["picky"]
    proc = run["proc"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("12 passed, 0 failed, 12 errors, ")
    suites = {s.name: s for s in JUnitXml.fromfile(str(run["xml"]))}
    assert list(suites) == ["small[cpu,float64]", "small[cpu,float32]"]
    f64, f32 = suites["small[cpu,float64]"], suites["small[cpu,float32]"]
    assert (f64.tests, f64.failures, f64.errors, f64.skipped) == (12, 0, 12, 0)
    assert (f32.tests, f32.failures, f32.errors, f32.skipped) == (12, 0, 0, 0)
    for case in f64:
        (error,) = case.result
        assert isinstance(error, Error)
        assert "NotImplementedError: picky: no float64 support" in (error.message or "")
        assert "picky" in (error.text or "")
    assert all(outcome(c) == "pass" for c in f32)
    for seen in (c for c in reporters_view(run["xml"]) if c["suite"] == "small[cpu,float32]"):
        summary = summary_property(run["xml"], seen["suite"], seen["name"])
        assert summary["batches"] == 2 and summary["status"] == "pass"
