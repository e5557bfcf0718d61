"""gradaudit.ci.report: reading JSON reports defensively."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gradaudit.ci.report import (
    ReportError,
    budget_of,
    check_report,
    groups,
    load_report,
    md_cell,
    percent,
    printable,
    reproduce_hint,
    status_of,
    tolerance_text,
    totals,
    verdict,
)
from tests.ci_reports import budgets, group, report, tensor


def write(tmp_path: Path, content: Any, name: str = "r.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


def test_a_good_report_loads(tmp_path: Path) -> None:
    loaded = load_report(write(tmp_path, budgets(a=0.5)))
    assert [(g.key, [t.name for t in g.tensors]) for g in groups(loaded)] == [
        (("cpu", "float32", "gradients"), ["a"])
    ]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "not JSON (empty file)"),
        ("{", "not JSON"),
        ([], "a list, not an object"),
        ({"schema": "other"}, "schema 'other'"),
        ({"schema": "gradaudit-run", "schema_version": 2, "groups": []}, "schema_version 2"),
        ({"schema": "gradaudit-run", "schema_version": "1", "groups": []}, "not a number"),
        ({"schema": "gradaudit-run", "schema_version": 1, "groups": {}}, "'groups'"),
        ({"schema": "gradaudit-run", "schema_version": 1, "groups": [{"device": "cpu"}]}, "dtype"),
        (report(group([{"status": "pass"}])), "has no tensor name"),
    ],
)
def test_what_is_not_a_report_is_one_line_naming_the_file(
    tmp_path: Path, content: Any, says: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ReportError) as caught:
        load_report(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such file"):
        load_report(tmp_path / "absent.json")
    with pytest.raises(ReportError, match="is a directory"):
        load_report(tmp_path)
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ReportError, match="not UTF-8"):
        load_report(binary)
    assert issubclass(ReportError, ValueError)


@pytest.mark.parametrize(
    ("worst", "expected"),
    [
        ({"budget": 0.25}, 0.25),
        ({"budget": 0}, 0.0),
        ({"budget": "inf"}, float("inf")),
        ({"budget": "nan"}, None),
        ({"budget": float("nan")}, None),
        ({"budget": None}, None),
        ({"budget": True}, None),
        ({"budget": "0.3"}, None),
        ({"budget": -1.0}, None),
        ({}, None),
        (None, None),
        ("junk", None),
    ],
)
def test_budgets_are_numbers_or_none(worst: Any, expected: float | None) -> None:
    assert budget_of({"tensor": "x", "worst": worst}) == expected


def test_status_is_inferred_when_missing() -> None:
    assert status_of({"status": "fail"}) == "fail"
    assert status_of({"skipped": "no cuda"}) == "skipped"
    assert status_of({"worst": {"passed": False}}) == "fail"
    assert status_of({"errors": ["boom"]}) == "error"
    assert status_of({"error_count": 2}) == "error"
    assert status_of({"worst": {"passed": True}}) == "pass"
    assert status_of({"status": "weird"}) == "unknown"


def test_totals_and_verdict() -> None:
    green = budgets(a=0.1)
    assert totals(green) == {"passed": 1, "failed": 0, "errors": 0, "skipped": 0}
    assert verdict(green) == "pass"
    red = report(group([tensor("a", "fail", 3.0)]))
    assert verdict(red) == "fail"
    skipped = report(group([tensor("a", "skipped", None)], skipped="no cuda"))
    assert verdict(skipped) == "empty"
    stopped = report(group([tensor("a")]), stopped="interrupted by SIGTERM")
    assert verdict(stopped) == "fail" and totals(stopped)["errors"] == 1
    # Without (or with broken) totals, they are counted from the tensors.
    counted = dict(red, totals=None, stopped="killed")
    assert totals(counted) == {"passed": 0, "failed": 1, "errors": 1, "skipped": 0}


def test_percent_and_text_helpers() -> None:
    assert [percent(b) for b in (None, 0.0, 0.223, 1e-5, 12.5, float("inf"))] == [
        "-", "0%", "22.3%", "<0.01%", "1.25e+03%", "inf",
    ]  # fmt: skip
    assert printable("W.weight\x0c\x1b") == "W.weight\\x0c\\x1b"
    assert md_cell("a|b`c<d>\ne") == "a\\|b'c&lt;d&gt; e"
    assert md_cell("x" * 10, limit=4) == "xxxx…"


def test_tolerance_text_mirrors_the_console() -> None:
    assert tolerance_text(
        {"mode": "baseline", "k": 2.0, "floor_ulps": 8.0, "systematic": True}
    ) == ("baseline k=2 floor=8 ulps + bias")
    assert tolerance_text({"mode": "ulps", "floor_ulps": 32, "batch_ulps": 64}) == (
        "ulps 32 own + 64 batch"
    )
    assert tolerance_text({"mode": "allclose", "rtol": 1e-5}) == "allclose rtol=1e-05 atol=?"
    assert tolerance_text({"mode": "exact"}) == "exact (bitwise)"
    assert tolerance_text(None) is None and tolerance_text({"mode": 3}) is None


def test_reproduce_hint() -> None:
    model = budgets(a=0.1)
    raw = model["groups"][0]["tensors"][0]
    assert reproduce_hint(model, raw) == "batches: {seed: 65, count: 1}"
    assert reproduce_hint(model, dict(raw, reproduce="run this")) == "run this"
    op = report(group([tensor("out")]), kind="op")
    assert reproduce_hint(op, op["groups"][0]["tensors"][0]) is None
    assert reproduce_hint(model, dict(raw, worst_seed=None)) is None


def test_check_report_accepts_what_a_report_may_leave_out() -> None:
    minimal = {"schema": "gradaudit-run", "schema_version": 1, "groups": []}
    assert check_report(minimal) is minimal
    no_tensors = dict(minimal, groups=[{"device": "cpu", "dtype": "float32", "check": "x"}])
    assert groups(check_report(no_tensors))[0].tensors == ()
