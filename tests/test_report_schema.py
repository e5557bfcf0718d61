"""Every JUnit file gradaudit writes is valid against junit-10.xsd (Jenkins' xUnit plugin
refuses anything else), well-formed whatever the names, and keeps what `merge` needs.

Reports are written in-process by the real writers from hand-made summaries (no torch);
tests/test_junit.py and tests/test_shard.py validate the files of real runs as well.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from gradaudit.mutate import Gate, Mutant, MutantResult, MutationReport
from gradaudit.report import mutation
from gradaudit.report.jsonfile import JsonReporter
from gradaudit.report.junit import JUnitReporter, read_suites
from gradaudit.results import Shard
from tests.report_fixtures import (
    TOL,
    every_outcome,
    group,
    loaded_spec,
    run_info,
    run_summary,
    summary,
)

SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "junit-10.xsd"
SCHEMA = xmlschema.XMLSchema10(str(SCHEMA_FILE))


def assert_valid(path: Path) -> ET.Element:
    """Well-formed, then valid against the schema; the reason in the assertion when not."""
    root = ET.parse(path).getroot()
    errors = [str(e.reason) + " at " + str(e.path) for e in SCHEMA.iter_errors(str(path))]
    assert not errors, f"{path.name} is not valid against junit-10.xsd: {errors[:3]}"
    return root


def write_junit(tmp: Path, summary_: Any, info: Any, name: str = "report.xml") -> Path:
    path = tmp / name
    reporter = JUnitReporter(str(path))
    reporter.start(info)
    reporter.finish(summary_)
    return path


def write_json(tmp: Path, summary_: Any, info: Any, name: str = "report.json") -> dict[str, Any]:
    path = tmp / name
    reporter = JsonReporter(str(path))
    reporter.start(info)
    reporter.finish(summary_)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def outcome_tags(case: ET.Element) -> list[str]:
    return [child.tag for child in case if child.tag in ("failure", "error", "skipped")]


# --- the schema itself ---------------------------------------------------------------------------


def test_the_schema_rejects_what_gradaudit_used_to_write(tmp_path: Path) -> None:
    """The control: the three causes named in the issue are each invalid."""
    base = '<testsuite name="s" tests="1" failures="0" errors="0"{suite}>{case}</testsuite>'
    bad = {
        "properties in a testcase": base.format(
            suite="",
            case='<testcase name="t"><properties><property name="a" value="b"/></properties>'
            "</testcase>",
        ),
        "disabled on a suite": base.format(suite=' disabled="0"', case='<testcase name="t"/>'),
        "skipped on testsuites": f'<testsuites skipped="0">{base.format(suite="", case="")}'
        "</testsuites>",
    }
    for what, text in bad.items():
        assert not SCHEMA.is_valid(text), what
    assert SCHEMA.is_valid(base.format(suite=' skipped="0"', case='<testcase name="t"/>'))


def test_the_shipped_schema_keeps_its_licence() -> None:
    head = SCHEMA_FILE.read_text(encoding="utf-8")[:1500]
    assert "The MIT License" in head and "Gregory Boissinot" in head


# --- run reports ---------------------------------------------------------------------------------


def test_a_run_with_every_outcome_is_valid_and_has_one_element_per_case(tmp_path: Path) -> None:
    """Jenkins' junit-4 schema allows one outcome element per testcase: a tensor that
    failed on some batches and errored on others is one failure whose message and body
    name the error too, and it counts once."""
    loaded = loaded_spec(tmp_path)
    tensors = every_outcome()
    result = run_summary(group(tensors))
    root = assert_valid(
        write_junit(tmp_path, result, run_info(loaded, [t.tensor for t in tensors]))
    )
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert {name: outcome_tags(c) for name, c in cases.items()} == {
        "ok": [],
        "wrong": ["failure"],
        "crashed": ["error"],
        "absent": ["skipped"],
        "mixed": ["failure"],  # the crash rides on the failure: neither hides the other
    }
    failure = cases["mixed"].find("failure")
    assert failure is not None
    assert "beyond" in failure.get("message", "") and "plugin crashed" in failure.get("message", "")
    assert "plugin crashed on batch 2" in (failure.text or "")
    assert "worst element" in (failure.text or "")
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "2", "1")
    assert suite.get("skipped") == "1"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "2", "1")
    assert (result.passed, result.failed, result.errors, result.skipped) == (1, 2, 1, 1)
    assert not result.ok


def test_json_counts_a_failure_beside_an_error_once(tmp_path: Path) -> None:
    loaded = loaded_spec(tmp_path)
    tensors = every_outcome()
    data = write_json(tmp_path, run_summary(group(tensors)), run_info(loaded, ["x"]))
    assert data["totals"] == {"passed": 1, "failed": 2, "errors": 1, "skipped": 1}
    mixed = next(t for t in data["groups"][0]["tensors"] if t["tensor"] == "mixed")
    assert mixed["status"] == "fail" and mixed["error_count"] == 1


def test_a_testcase_never_holds_two_outcomes() -> None:
    from gradaudit.report.elements import testcase

    with pytest.raises(ValueError, match="one outcome"):
        testcase("t", "c", 0.0, failure=("f", "f"), error=("e", "e"))
    assert testcase("t", "c", 0.0, error=("e", "e")).find("error") is not None


def test_merge_data_lives_in_suite_properties_keyed_by_testcase(tmp_path: Path) -> None:
    loaded = loaded_spec(tmp_path)
    tensors = every_outcome()
    path = write_junit(tmp_path, run_summary(group(tensors)), run_info(loaded, ["x"]))
    root = assert_valid(path)
    for case in root.iter("testcase"):
        assert case.find("properties") is None
    (read,) = read_suites(path)
    assert [t.tensor for t in read.tensors] == [t.tensor for t in tensors]
    for original, back in zip(tensors, read.tensors, strict=True):
        assert back.to_dict() | {"seconds": 0} == original.to_dict() | {"seconds": 0}
    assert read.properties["spec_sha256"] == loaded.sha256
    assert not any(k.startswith("gradaudit.results") for k in read.properties)


def test_an_interrupted_run_has_times_and_counts_its_stop(tmp_path: Path) -> None:
    """The group in progress has its time on the group only; the stop is one error case."""
    loaded = loaded_spec(tmp_path)
    running = group([summary("a", [0.1, 0.2]), summary("b", [0.1])], done=False, seconds=1.5)
    assert all(t.seconds == 0 for t in running.tensors)
    stopped = run_summary(running, stopped="interrupted by SIGTERM")
    root = assert_valid(write_junit(tmp_path, stopped, run_info(loaded, ["a", "b"])))
    times = {c.get("name"): float(c.get("time", 0)) for c in root.iter("testcase")}
    assert times["a"] == times["b"] == 0.75
    assert float(root.get("time", 0)) == 1.5
    assert root.get("errors") == "1"
    data = write_json(tmp_path, stopped, run_info(loaded, ["a", "b"]))
    assert [t["seconds"] for t in data["groups"][0]["tensors"]] == [0.75, 0.75]
    assert data["totals"]["errors"] == 1 == stopped.totals()["errors"]
    assert data["groups"][0]["complete"] is False


def test_an_internal_error_report_is_valid(tmp_path: Path) -> None:
    loaded = loaded_spec(tmp_path)
    stopped = run_summary(stopped="internal error: KeyError: 'x\x00'")
    root = assert_valid(write_junit(tmp_path, stopped, run_info(loaded, [])))
    (case,) = root.iter("testcase")
    assert outcome_tags(case) == ["error"]


# --- control characters --------------------------------------------------------------------------


NASTY = ["W.weight\x0c", "W.weight", "h\x00.1", "lone\udcff", "\x1b[31mred\x1b[0m"]


def test_control_characters_in_names_and_spec_path(tmp_path: Path) -> None:
    loaded = loaded_spec(tmp_path / "odd\x0cdir", "spec\x01.yaml")
    tensors = [summary(name, [0.5]) for name in NASTY]
    tensors[1] = summary("W.weight", [9.0], ("RuntimeError: \x00bad\x1b[0m",))
    result = run_summary(group(tensors), stopped="interrupted by \x07SIGTERM")
    path = write_junit(tmp_path, result, run_info(loaded, NASTY))
    root = assert_valid(path)
    names = [c.get("name") for c in root.iter("testcase") if c.get("name") != "run"]
    assert names == ["W.weight\\x0c", "W.weight", "h\\x00.1", "lone\\udcff", "red"]
    assert len(set(names)) == len(NASTY), "cleaning merged two tensors"
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["spec"] == str(loaded.path).replace("\x0c", "\\x0c").replace("\x01", "\\x01")
    data = write_json(tmp_path, result, run_info(loaded, NASTY))
    assert [t["tensor"] for t in data["groups"][0]["tensors"]] == names
    assert data["run"]["spec"] == props["spec"]
    assert data["run"]["tensors"] == names
    # merge reads them back under the same names
    assert [t.tensor for t in read_suites(path)[0].tensors] == names


# --- mutate --------------------------------------------------------------------------------------


def test_mutation_reports_are_valid(tmp_path: Path) -> None:
    loaded = loaded_spec(tmp_path / "mutate\x0b")

    def mutant(operator: str, tensor: str, delta: float | None = None) -> Mutant:
        return Mutant(operator, tensor, lambda g, b: None, delta)

    results = [
        MutantResult(mutant("scale-1e-3", "W", 1e-3), True, True, True, "W batch 0"),
        MutantResult(mutant("scale-1e-9", "W", 1e-9), True, True, False, "", 0.2),
        MutantResult(mutant("zero", "b"), True, False),
        MutantResult(mutant("swap", "x\x0c"), False),
    ]
    report = MutationReport("cpu", "float32", results, {"W": 1e-6}, {"W": TOL})
    for gate in (True, False):
        path = tmp_path / f"mutants-{gate}.xml"
        mutation.write_junit(str(path), loaded, [report], Gate(fail_on_survivor=gate))
        root = assert_valid(path)
        tags = [outcome_tags(c) for c in root.iter("testcase")]
        assert tags == [[], ["failure" if gate else "skipped"], ["skipped"], ["skipped"]]
    for score, outcome in ((50.0, []), (50.1, ["failure"])):  # 1 of 2 counted is killed
        path = tmp_path / f"mutants-{score}.xml"
        mutation.write_junit(str(path), loaded, [report], Gate(min_score=score))
        cases = list(assert_valid(path).iter("testcase"))
        assert cases[-1].get("name") == f"mutation score >= {score:g}%"
        assert [outcome_tags(c) for c in cases] == [
            [],
            ["skipped"],
            ["skipped"],
            ["skipped"],
            outcome,
        ]


def test_mutate_on_a_red_audit_writes_an_error_report(tmp_path: Path) -> None:
    loaded = loaded_spec(tmp_path)
    path = tmp_path / "mutants.xml"
    path.write_text("a stale report\n", encoding="utf-8")
    reason = "the audit itself is not green (2 failed, 0 errors): fix that first"
    mutation.write_not_green(str(path), loaded, reason)
    root = assert_valid(path)
    (case,) = root.iter("testcase")
    error = case.find("error")
    assert error is not None and error.get("message") == reason
    assert root.get("errors") == "1"


@pytest.mark.parametrize("shards", [2])
def test_merged_reports_are_valid(tmp_path: Path, shards: int) -> None:
    from gradaudit.report.merge import merge_junit

    loaded = loaded_spec(tmp_path)
    paths = []
    for k in range(1, shards + 1):
        tensors = [summary("a", [0.1 * k]), summary("b", [2.0 * k], ("E\x00",))]
        result = run_summary(group(tensors))
        paths.append(
            str(
                write_junit(
                    tmp_path, result, run_info(loaded, ["a", "b"], Shard(k, shards)), f"{k}.xml"
                )
            )
        )
    merged = merge_junit(str(tmp_path / "merged.xml"), paths)
    root = assert_valid(tmp_path / "merged.xml")
    assert (merged.failed, merged.errors) == (1, 0)  # b failed and errored: one failure
    (read,) = read_suites(tmp_path / "merged.xml")
    assert [t.batches for t in read.tensors] == [shards, shards]
    assert root.get("failures") == "1" and root.get("errors") == "0"
