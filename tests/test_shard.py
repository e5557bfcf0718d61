"""Sharding (`run --shard K/N`) and `gradaudit merge`: the merged shards ARE the unsharded run.

Every run and merge goes through the real console script; independent ones start together
(each is mostly torch's import).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.negative_controls import expected_wrong, tensor_names

REPO = Path(__file__).resolve().parents[1]
NEGATIVE_CONTROLS = REPO / "tests" / "negative_controls.py"
CliRun = Callable[..., "subprocess.CompletedProcess[str]"]
Proc = subprocess.CompletedProcess[str]
COUNT = 6
DTYPES = ("float32", "float64")
TENSORS_T5 = tensor_names(5)
# bptt-tanh-sign (tanh' taken as 1 + h^2) is wrong below the last step (T = 5).
TANH_SIGN_WRONG = expected_wrong("bptt-tanh-sign", 5)


def run_many(run_cli: CliRun, jobs: Mapping[str, list[Any]]) -> dict[str, Proc]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_cli, *args) for name, args in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def no_constants(value: str) -> Any:
    raise ValueError(f"non-standard JSON constant {value}")


def load_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)
    assert isinstance(data, dict)
    return data


def without_seconds(value: Any) -> Any:
    """A report value with every timing removed (timings differ between runs)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def json_groups(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: without_seconds(v) for k, v in g.items() if k not in ("seconds",)}
        for g in data["groups"]
    ]


def junit_view(path: Path) -> dict[str, Any]:
    """Everything verdict-bearing in a JUnit report: totals, suites, each case's outcome and
    its summary (the suite's `gradaudit.summary:<name>` property; timings dropped)."""
    root = ET.parse(path).getroot()
    suites = []
    for suite in root.findall("testsuite"):
        cases = []
        props = {p.get("name"): p.get("value") for p in suite.findall("./properties/property")}
        for case in suite.findall("testcase"):
            outcome = next(
                (tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None),
                "pass",
            )
            value = props.get(f"gradaudit.summary:{case.get('name')}")
            summary = json.loads(value) if value is not None else None
            cases.append(
                {
                    "name": case.get("name"),
                    "classname": case.get("classname"),
                    "outcome": outcome,
                    "summary": without_seconds(summary),
                }
            )
        counts = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")}
        suites.append({"name": suite.get("name"), "counts": counts, "cases": cases})
    totals = {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")}
    return {"totals": totals, "suites": suites}


def summary_line(proc: Proc) -> str:
    """The `N passed, N failed, N errors, N skipped` part of the closing line."""
    lines = [line for line in proc.stdout.splitlines() if " passed, " in line]
    assert lines, proc.stdout + proc.stderr
    return lines[-1].split(" in ")[0]


@pytest.fixture(scope="module")
def sharded(
    tmp_path_factory: pytest.TempPathFactory,
    spec_dict: Callable[..., dict[str, Any]],
    run_cli: CliRun,
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("shard")
    batches = {"split": "train", "count": COUNT, "size": 4, "seed": 3}
    good = tmp / "good.yaml"
    good.write_text(
        yaml.safe_dump(spec_dict(name="sharded", batches=batches), sort_keys=False),
        encoding="utf-8",
    )
    bad = tmp / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            spec_dict(
                name="sharded",
                batches=batches,
                plugins=[str(NEGATIVE_CONTROLS)],
                gradients={"plugin": "bptt-tanh-sign"},
            ),
            sort_keys=False,
        ),
        encoding="utf-8",
    )

    def run(spec: Path, name: str, *extra: str) -> list[Any]:
        return [
            "run",
            spec,
            "-q",
            "--junit-xml",
            tmp / f"{name}.xml",
            "--json",
            tmp / f"{name}.json",
            *extra,
        ]

    runs = run_many(
        run_cli,
        {
            "full": run(good, "full"),
            **{f"s{k}": run(good, f"s{k}", "--shard", f"{k}/3") for k in (1, 2, 3)},
            "s7of7": run(good, "s7of7", "--shard", "7/7"),
            "bad-full": run(bad, "bad-full"),
            **{f"bad-s{k}": run(bad, f"bad-s{k}", "--shard", f"{k}/2") for k in (1, 2)},
        },
    )
    shards = [tmp / f"s{k}" for k in (1, 2, 3)]
    (tmp / "s1-link.json").hardlink_to(tmp / "s1.json")
    before = (tmp / "s2.json").read_bytes()
    merges = run_many(
        run_cli,
        {
            "xml": ["merge", tmp / "merged.xml", *(f"{s}.xml" for s in shards)],
            "json": ["merge", tmp / "merged.json", *(f"{s}.json" for s in shards)],
            # Shard 2/3 held the only failing batch of issue 13's example: never merge without.
            "missing": ["merge", tmp / "missing.xml", tmp / "s1.xml", tmp / "s3.xml"],
            "full-plus-shard": ["merge", tmp / "fps.json", tmp / "full.json", tmp / "s1.json"],
            "other-split": [
                "merge",
                tmp / "other.xml",
                *(f"{s}.xml" for s in shards),
                tmp / "s7of7.xml",
            ],
            "bad": ["merge", tmp / "bad-merged.xml", tmp / "bad-s1.xml", tmp / "bad-s2.xml"],
            "mixed": ["merge", tmp / "mixed.xml", tmp / "s1.xml", tmp / "bad-s2.xml"],
            "duplicate": ["merge", tmp / "duplicate.json", tmp / "s1.json", tmp / "s1.json"],
            "linked-twice": ["merge", tmp / "linked.json", tmp / "s1.json", tmp / "s1-link.json"],
            "onto-an-input": [
                "merge",
                tmp / "s2.json",
                *(f"{s}.json" for s in shards),
            ],
        },
    )
    assert (tmp / "s2.json").read_bytes() == before, "a merge overwrote one of its inputs"
    return {"tmp": tmp, "runs": runs, "merges": merges, "good": good}


def test_every_run_and_merge_exits_as_documented(sharded: dict[str, Any]) -> None:
    expected_runs = {"full": 0, "s1": 0, "s2": 0, "s3": 0, "s7of7": 5}  # 5: nothing compared
    expected_runs |= {"bad-full": 1, "bad-s1": 1, "bad-s2": 1}
    for name, code in expected_runs.items():
        proc = sharded["runs"][name]
        assert proc.returncode == code, f"{name}: {proc.stdout}{proc.stderr}"
        assert "Traceback" not in proc.stdout + proc.stderr
    expected_merges = {"xml": 0, "json": 0, "bad": 1, "mixed": 2, "duplicate": 2}
    expected_merges |= {"linked-twice": 2, "onto-an-input": 2}
    expected_merges |= {"missing": 2, "full-plus-shard": 2, "other-split": 2}
    assert set(sharded["merges"]) == set(expected_merges)
    for name, code in expected_merges.items():
        proc = sharded["merges"][name]
        assert proc.returncode == code, f"merge {name}: {proc.stdout}{proc.stderr}"
        assert "Traceback" not in proc.stdout + proc.stderr


MEASURED = ("device", "dtype", "check", "tensor", "batch", "seed", "status", "exact", "max_abs")


def _measured(case: dict[str, Any]) -> tuple[Any, ...]:
    """A case record's fields measured on every batch (gradaudit.compare.screen)."""
    return (*(case[k] for k in MEASURED), case.get("budget"), case.get("mismatched"))


def test_shards_check_disjoint_batches_that_cover_the_run(sharded: dict[str, Any]) -> None:
    tmp = sharded["tmp"]
    full = load_json(tmp / "full.json")
    all_batches = {c["batch"] for c in full["cases"]}
    assert all_batches == set(range(COUNT))
    seen: set[int] = set()
    for k in (1, 2, 3):
        shard = load_json(tmp / f"s{k}.json")
        assert shard["run"]["shard"] == f"{k}/3"
        batches = {c["batch"] for c in shard["cases"]}
        assert batches == {b for b in range(COUNT) if b % 3 == k - 1}
        assert not batches & seen, "two shards checked the same batch"
        seen |= batches
        # A shard checks its batches exactly as the unsharded run does. (Where a batch is
        # described in full depends on the batches before it: compare what every batch has.)
        mine = [_measured(c) for c in shard["cases"]]
        assert mine == [_measured(c) for c in full["cases"] if c["batch"] in batches]
    assert seen == all_batches


def test_merged_json_equals_the_unsharded_run(sharded: dict[str, Any]) -> None:
    tmp = sharded["tmp"]
    full, merged = load_json(tmp / "full.json"), load_json(tmp / "merged.json")
    assert merged["schema"] == "gradaudit-run" and merged["schema_version"] == 1
    assert merged["totals"] == full["totals"]
    assert full["totals"] == {"passed": 24, "failed": 0, "errors": 0, "skipped": 0}
    assert json_groups(merged) == json_groups(full)
    assert [_measured(c) for c in merged["cases"]] == [_measured(c) for c in full["cases"]]
    assert merged["stopped"] is None
    assert merged["run"]["spec_sha256"] == full["run"]["spec_sha256"]
    assert summary_line(sharded["merges"]["json"]) == summary_line(sharded["runs"]["full"])


def test_merged_junit_equals_the_unsharded_run(sharded: dict[str, Any]) -> None:
    tmp = sharded["tmp"]
    full, merged = junit_view(tmp / "full.xml"), junit_view(tmp / "merged.xml")
    assert [s["name"] for s in full["suites"]] == ["sharded[cpu,float32]", "sharded[cpu,float64]"]
    for suite in full["suites"]:
        assert [c["name"] for c in suite["cases"]] == TENSORS_T5
        assert all(c["summary"]["batches"] == COUNT for c in suite["cases"])
    assert merged == full
    assert summary_line(sharded["merges"]["xml"]) == summary_line(sharded["runs"]["full"])


def test_a_shard_with_no_batches_skips_and_merges_away(sharded: dict[str, Any]) -> None:
    tmp = sharded["tmp"]
    proc = sharded["runs"]["s7of7"]
    assert proc.returncode == 5  # nothing was compared: pytest's "no tests ran"
    assert summary_line(proc) == f"0 passed, 0 failed, 0 errors, {2 * len(TENSORS_T5)} skipped"
    empty = load_json(tmp / "s7of7.json")
    assert empty["cases"] == []
    assert empty["totals"] == {"passed": 0, "failed": 0, "errors": 0, "skipped": 24}
    for group in empty["groups"]:
        assert [t["status"] for t in group["tensors"]] == ["skipped"] * len(TENSORS_T5)
        assert all("7/7" in t["skipped"] for t in group["tensors"])
    view = junit_view(tmp / "s7of7.xml")
    assert view["totals"] == {"tests": "24", "failures": "0", "errors": "0", "skipped": None}
    assert [s["counts"]["skipped"] for s in view["suites"]] == ["12", "12"]


def test_a_wrong_gradient_fails_the_merge_like_the_unsharded_run(sharded: dict[str, Any]) -> None:
    tmp = sharded["tmp"]
    assert sharded["runs"]["bad-full"].returncode == 1
    assert sharded["merges"]["bad"].returncode == 1

    def failing(view: dict[str, Any]) -> set[tuple[str, str]]:
        return {
            (suite["name"], case["name"])
            for suite in view["suites"]
            for case in suite["cases"]
            if case["outcome"] == "failure"
        }

    full, merged = junit_view(tmp / "bad-full.xml"), junit_view(tmp / "bad-merged.xml")
    expected = {(f"sharded[cpu,{d}]", t) for d in DTYPES for t in TANH_SIGN_WRONG}
    assert failing(full) == expected
    assert failing(merged) == failing(full)
    assert merged == full  # the same worst element, batch, seed and metrics too
    assert summary_line(sharded["merges"]["bad"]) == summary_line(sharded["runs"]["bad-full"])


def test_merging_reports_of_different_specs_is_refused(sharded: dict[str, Any]) -> None:
    proc = sharded["merges"]["mixed"]
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradaudit: error: "), proc.stderr
    assert "bad-s2.xml" in lines[0] and "different spec" in lines[0]
    assert not (sharded["tmp"] / "mixed.xml").exists()


def one_line_error(proc: Proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradaudit: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("merge", "output", "words"),
    [
        ("duplicate", "duplicate.json", ["s1.json", "given twice"]),
        ("linked-twice", "linked.json", ["s1-link.json", "given twice"]),
        ("onto-an-input", "", ["OUT", "s2.json", "is an input of this run"]),
        ("missing", "missing.xml", ["2/3 missing"]),
        ("full-plus-shard", "fps.json", ["full.json", "unsharded"]),
        ("other-split", "other.xml", ["s7of7.xml", "7/7", "1/3"]),
    ],
)
def test_an_incomplete_or_overlapping_shard_set_is_refused(
    sharded: dict[str, Any], merge: str, output: str, words: list[str]
) -> None:
    line = one_line_error(sharded["merges"][merge])
    for word in words:
        assert word in line, line
    assert not output or not (sharded["tmp"] / output).exists()


def test_shard_and_merged_reports_are_valid_against_the_xunit_schema(
    sharded: dict[str, Any],
) -> None:
    from tests.test_report_schema import SCHEMA

    tmp = sharded["tmp"]
    for name in ("full", "s1", "s2", "s3", "s7of7", "bad-s1", "merged", "bad-merged"):
        errors = [str(e.reason) for e in SCHEMA.iter_errors(str(tmp / f"{name}.xml"))]
        assert not errors, f"{name}.xml: {errors[:3]}"


# --- GitLab: parallel jobs upload reports that GitLab folds into one suite ----------------------


def gitlab_keys(paths: list[Path]) -> Counter[tuple[str, str, str]]:
    """How GitLab keys test cases of one job's reports: the job's suite name (every parallel
    instance of a job shares it), classname, name."""
    keys: Counter[tuple[str, str, str]] = Counter()
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            keys[("gradaudit", case.get("classname", ""), case.get("name", ""))] += 1
    return keys


def test_gitlab_shard_reports_collide_so_the_merged_report_is_uploaded(
    sharded: dict[str, Any],
) -> None:
    tmp = sharded["tmp"]
    shards = gitlab_keys([tmp / f"s{k}.xml" for k in (1, 2, 3)])
    assert max(shards.values()) == 3, "the premise: shard reports name their cases alike"
    merged = gitlab_keys([tmp / "merged.xml"])
    assert set(merged.values()) == {1} and set(merged) == set(shards)
    for job in gitlab_jobs():
        junit = job.get("artifacts", {}).get("reports", {}).get("junit")
        if "parallel" in job:
            assert junit is None, f"a parallel job uploads shard reports as JUnit: {job}"
        elif junit:
            merge = [line for line in job["script"] if line.startswith("gradaudit merge ")]
            assert merge and merge[0].split()[2] == junit, job
            assert job.get("when") == "always", "the merge must run when a shard failed"


def gitlab_jobs() -> list[dict[str, Any]]:
    """The jobs of every GitLab example (a YAML block with `parallel:`) in the docs."""
    jobs = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
            if "parallel:" not in block:
                continue
            data = yaml.safe_load(block)
            jobs += [v for v in data.values() if isinstance(v, dict) and "script" in v]
    assert any("parallel" in job for job in jobs), "no GitLab example found in the docs"
    return jobs


@pytest.mark.parametrize("shard", ["0/3", "4/3", "x", ""])
def test_bad_shard_is_a_usage_error(
    tmp_path: Path, shard: str, run_cli: CliRun, spec_dict: Callable[..., dict[str, Any]]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(), sort_keys=False), encoding="utf-8")
    report = tmp_path / "report.xml"
    proc = run_cli("run", spec, "--shard", shard, "--junit-xml", report)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradaudit: error: --shard"), proc.stderr
    assert not report.exists()


# --- merge rules, in-process on hand-made shard reports -----------------------------------------


def write_shard(
    tmp: Path, name: str, shard: str | None, tensors: list[Any], dtypes: tuple[str, ...] = DTYPES
) -> dict[str, str]:
    """JUnit and JSON reports of one shard ("K/N", or None for an unsharded run)."""
    from gradaudit.report.jsonfile import JsonReporter
    from gradaudit.report.junit import JUnitReporter
    from gradaudit.results import Shard
    from tests.report_fixtures import group, loaded_spec, run_info, run_summary

    loaded = loaded_spec(tmp / "spec")  # the same file, so the same sha256, for every shard
    cut = Shard(*map(int, shard.split("/"))) if shard else None
    info = run_info(loaded, [t.tensor for t in tensors], cut)
    result = run_summary(*(group(copy.deepcopy(tensors), dtype=d) for d in dtypes))
    paths = {"xml": str(tmp / f"{name}.xml"), "json": str(tmp / f"{name}.json")}
    for reporter in (JUnitReporter(paths["xml"]), JsonReporter(paths["json"])):
        reporter.start(info)
        reporter.finish(result)
    return paths


def merge_both(tmp: Path, reports: list[dict[str, str]]) -> list[Any]:
    from gradaudit.report.merge import merge_json, merge_junit

    return [
        merge_junit(str(tmp / "out.xml"), [r["xml"] for r in reports]),
        merge_json(str(tmp / "out.json"), [r["json"] for r in reports]),
    ]


def refusal(tmp: Path, reports: list[dict[str, str]]) -> list[str]:
    from gradaudit.errors import UsageError
    from gradaudit.report.merge import merge_json, merge_junit

    messages = []
    for kind, merge in (("xml", merge_junit), ("json", merge_json)):
        with pytest.raises(UsageError) as caught:
            merge(str(tmp / f"out.{kind}"), [r[kind] for r in reports])
        assert caught.value.exit_code == 2
        assert not (tmp / f"out.{kind}").exists()
        messages.append(str(caught.value))
    return messages


def tensors_ok() -> list[Any]:
    from tests.report_fixtures import summary

    return [summary("a", [0.1]), summary("b", [0.2])]


def test_merge_refuses_shards_of_different_splits(tmp_path: Path) -> None:
    one_of_two = write_shard(tmp_path, "1of2", "1/2", tensors_ok())
    one_of_three = write_shard(tmp_path, "1of3", "1/3", tensors_ok())
    for message in refusal(tmp_path, [one_of_two, one_of_three]):
        assert "1of3" in message and "1/3" in message and "1/2" in message


def test_merge_refuses_a_full_report_with_a_shard(tmp_path: Path) -> None:
    full = write_shard(tmp_path, "full", None, tensors_ok())
    first = write_shard(tmp_path, "first", "1/2", tensors_ok())
    second = write_shard(tmp_path, "second", "2/2", tensors_ok())
    for message in refusal(tmp_path, [full, first, second]):
        assert "full" in message and "unsharded" in message
    for message in refusal(tmp_path, [full]):
        assert "unsharded" in message


def test_merge_refuses_other_plans(tmp_path: Path) -> None:
    from tests.report_fixtures import summary

    first = write_shard(tmp_path, "first", "1/2", tensors_ok())
    other_tensors = write_shard(tmp_path, "t", "2/2", [summary("a", [0.1]), summary("c", [0.1])])
    for message in refusal(tmp_path, [first, other_tensors]):
        assert "other tensors" in message and "cpu/float32" in message
    one_dtype = write_shard(tmp_path, "d", "2/2", tensors_ok(), dtypes=("float32",))
    for message in refusal(tmp_path, [first, one_dtype]):
        assert "different plan" in message and "cpu/float64" in message


def test_a_complete_set_merges_in_any_order_with_an_empty_shard(tmp_path: Path) -> None:
    """The quiet side: shards 1..N of one N merge, an empty shard's "skipped" does not stick,
    and a failure in any shard fails the merge."""
    from tests.report_fixtures import summary

    empty = [summary("a", [], skipped="shard 3/3 has no batches"), summary("b", [], skipped="x")]
    shards = [
        write_shard(tmp_path, "s3", "3/3", empty),
        write_shard(tmp_path, "s2", "2/3", [summary("a", [0.4]), summary("b", [5.0])]),
        write_shard(tmp_path, "s1", "1/3", tensors_ok()),
    ]
    for merged in merge_both(tmp_path, shards):
        assert (merged.passed, merged.failed, merged.errors, merged.skipped) == (2, 2, 0, 0)
        assert [t.batches for g in merged.groups for t in g.tensors] == [2, 2, 2, 2]
    data = load_json(tmp_path / "out.json")
    assert data["run"]["shard"] == ""
    assert junit_view(tmp_path / "out.xml")["totals"]["failures"] == "2"
