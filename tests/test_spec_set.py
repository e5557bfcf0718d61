"""`gradaudit run SPEC... | DIR`: several specs in one step give one console table, one JUnit
file (a suite per spec and case, valid for Jenkins), one JSON document, the worst exit code;
`--shard` spreads the whole set, and the shards merge into the unsharded run."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_gradaudit, small_spec
from tests.test_ops_shard import IN_PLACE
from tests.test_ops_shard import cases as junit_cases
from tests.test_report_schema import assert_valid

# The in-place RMSNorm of the op sharding tests, in float64 without long variants (planned in
# half types only, they would count in the shards' numbering without running), and the
# correct op in its place: red only where writing into an expanded input raises.
OP_BUG = IN_PLACE.replace(
    "  checks: {micro_batch: {reduction: none}, saved_tensors: {}}\n", ""
).replace("dtypes: [float64, float32]", "  variants: {long: false}\ndtypes: [float64]")
OP_OK = OP_BUG.replace("rmsnorm-in-place", "rmsnorm-ok").replace(
    "gradaudit_ops.gallery:RMSNormInPlace", "gradaudit_ops.rmsnorm:RMSNormFunction.apply"
)


def specs(folder: Path, red: bool = True) -> Path:
    """A folder with a small model spec, a correct op and (red) an op with a bug."""
    folder.mkdir()
    model = small_spec(
        batches={"split": "train", "count": 3, "size": 4, "seed": 3}, dtypes=["float32"]
    )
    (folder / "a-model.yaml").write_text(yaml.safe_dump(model), "utf-8")
    (folder / "b-op.yml").write_text(OP_OK, "utf-8")
    if red:
        (folder / "c-op-bug.yaml").write_text(OP_BUG, "utf-8")
    (folder / "notes.txt").write_text("not a spec", "utf-8")
    (folder / "sub").mkdir()  # sub-folders are not read
    (folder / "sub" / "x.yaml").write_text("not: a spec", "utf-8")
    return folder


def statuses(document: dict[str, Any]) -> dict[tuple[str, ...], str]:
    """(spec, device, dtype, check, tensor) -> status, over every run of a set document."""
    assert document["schema"] == "gradaudit-run-set"
    return {
        (r["run"]["spec_name"], g["device"], g["dtype"], g["check"], t["tensor"]): t["status"]
        for r in document["runs"]
        for g in r["groups"]
        for t in g["tensors"]
    }


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The red folder run whole: (folder, completed process)."""
    tmp = tmp_path_factory.mktemp("set")
    specs(tmp / "specs")
    result = run_gradaudit(
        "run", "specs", "--junit-xml", "out/all.xml", "--json", "out/all.json",
        "--html", "out/all.html", cwd=tmp,
    )  # fmt: skip
    return tmp, result


def test_a_folder_gives_one_report_of_every_spec_and_the_worst_exit_code(
    whole: tuple[Path, Any],
) -> None:
    tmp, result = whole
    assert result.returncode == 1, result.stdout + result.stderr  # the bug's spec is red
    table = result.stdout[result.stdout.index("gradaudit: 3 specs") :].splitlines()
    assert table[1].split()[:2] == ["specs/a-model.yaml", "PASS"]
    assert table[2].split()[:2] == ["specs/b-op.yml", "PASS"]
    assert table[3].split()[:2] == ["specs/c-op-bug.yaml", "FAIL"]
    assert table[4].startswith("3 of 3 specs run:")

    document = json.loads((tmp / "out" / "all.json").read_text("utf-8"))
    assert [r["run"]["spec_name"] for r in document["runs"]] == [
        "small", "rmsnorm-ok", "rmsnorm-in-place",
    ]  # fmt: skip
    assert document["exit_code"] == 1
    found = statuses(document)
    red = Counter(spec for (spec, *_), status in found.items() if status in ("fail", "error"))
    assert set(red) == {"rmsnorm-in-place"}
    totals = Counter(status for status in found.values())
    assert document["totals"]["passed"] == totals["pass"] > 0
    assert document["totals"]["failed"] == totals["fail"]
    assert document["totals"]["errors"] == totals["error"]

    root = assert_valid(tmp / "out" / "all.xml")  # one file, valid for Jenkins' xUnit
    suites = list(root.iter("testsuite"))
    names = {s.get("name", "").split("[")[0] for s in suites}
    assert names == {"small", "rmsnorm-ok", "rmsnorm-in-place"}  # a suite per spec and case
    assert int(root.get("failures", 0)) == totals["fail"]
    assert int(root.get("errors", 0)) == totals["error"]
    assert len(junit_cases(tmp / "out" / "all.xml")) == len(found)

    page = (tmp / "out" / "all.html").read_text("utf-8")
    assert "3 specs (small, rmsnorm-ok, rmsnorm-in-place)" in page
    assert "rmsnorm-in-place/cpu" in page  # each case named with its spec


def test_a_green_set_exits_0_and_diffs_clean_against_itself(tmp_path: Path) -> None:
    specs(tmp_path / "specs", red=False)
    first = run_gradaudit(
        "run", "specs/a-model.yaml", "specs/b-op.yml", "--json", "one.json", "-q", cwd=tmp_path
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "gradaudit: 2 specs" in first.stdout
    again = run_gradaudit("run", "specs", "--json", "two.json", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    diff = run_gradaudit("diff", "one.json", "two.json", "-v", cwd=tmp_path)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert "rmsnorm-ok/cpu" in diff.stdout and "small/cpu" in diff.stdout


def test_a_spec_that_cannot_start_is_its_error_and_the_set_goes_on(tmp_path: Path) -> None:
    specs(tmp_path / "specs", red=False)
    broken = "name: broken\nplugins: [no_such_module_xyz]\n"
    broken += "model: {plugin: charrnn}\ngradients: {plugin: charrnn-bptt}\n"
    (tmp_path / "specs" / "a-broken.yaml").write_text(broken, "utf-8")
    result = run_gradaudit("run", "specs", "--json", "out.json", "-q", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "specs/a-broken.yaml:2: plugin 'no_such_module_xyz' failed to import" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[-4].split()[:2] == ["specs/a-broken.yaml", "ERROR"]
    assert [line.split()[1] for line in lines[-3:-1]] == ["PASS", "PASS"]  # the rest ran
    document = json.loads((tmp_path / "out.json").read_text("utf-8"))
    assert document["exit_code"] == 2 and "could not start" in document["runs"][0]["stopped"]
    assert f"{document['totals']['errors']} errors" in lines[-1]


def test_a_bad_spec_anywhere_in_the_set_is_exit_2_before_anything_runs(tmp_path: Path) -> None:
    specs(tmp_path / "specs")
    (tmp_path / "specs" / "d-bad.yaml").write_text(OP_OK + "typo: 1\n", "utf-8")
    (tmp_path / "old.json").write_text("kept", "utf-8")
    result = run_gradaudit("run", "specs", "--json", "old.json", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("gradaudit: error: specs/d-bad.yaml:12")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""  # nothing ran
    assert not (tmp_path / "old.json").exists()  # as for one spec: no old report survives


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["empty"], "empty: is a directory without a spec"),
        (["specs/b-op.yml", "specs"], "given twice"),
        (["specs", "--variant", "base"], "--batch and --variant take one spec"),
        (["specs", "--json", "specs/b-op.yml"], "b-op.yml"),
        (["specs", "same-name.yaml"], "named 'rmsnorm-ok' like specs/b-op.yml"),
    ],
)
def test_bad_arguments_of_a_set_are_exit_2_in_one_line(
    tmp_path: Path, arguments: list[str], says: str
) -> None:
    specs(tmp_path / "specs")
    (tmp_path / "empty").mkdir()
    (tmp_path / "same-name.yaml").write_text(OP_OK, "utf-8")
    spec_text = (tmp_path / "specs" / "b-op.yml").read_text("utf-8")
    result = run_gradaudit("run", *arguments, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and len(result.stderr.splitlines()) == 1
    assert (tmp_path / "specs" / "b-op.yml").read_text("utf-8") == spec_text


def test_the_shards_of_a_set_are_even_and_merge_into_the_unsharded_run(
    whole: tuple[Path, Any],
) -> None:
    tmp, _ = whole
    samples = []
    for k in (1, 2, 3):
        env = {"CI_NODE_INDEX": str(k), "CI_NODE_TOTAL": "3"}
        result = run_gradaudit(
            "run", "specs", "--shard", "auto", "--json", f"out/s{k}.json",
            "--junit-xml", f"out/s{k}.xml", "-q", cwd=tmp, env=env,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stdout + result.stderr
        document = json.loads((tmp / "out" / f"s{k}.json").read_text("utf-8"))
        shards = [r["run"]["shard"] for r in document["runs"]]
        assert shards[0] == f"{k}/3" and all(s.startswith(f"{k}/3") for s in shards)
        samples.append(
            len({(i, c["batch"]) for i, r in enumerate(document["runs"]) for c in r["cases"]})
        )
    # 3 batches + 12 variants + 12 variants, numbered one after the other: 9, 9, 9
    assert sorted(samples) == [9, 9, 9], samples

    merged = run_gradaudit("merge", "out/m.json", *(f"out/s{k}.json" for k in (1, 2, 3)), cwd=tmp)
    assert merged.returncode == 1, merged.stdout + merged.stderr  # the bug is in the set
    whole_run = json.loads((tmp / "out" / "all.json").read_text("utf-8"))
    merged_run = json.loads((tmp / "out" / "m.json").read_text("utf-8"))
    assert statuses(merged_run) == statuses(whole_run)

    merged = run_gradaudit("merge", "out/m.xml", *(f"out/s{k}.xml" for k in (1, 2, 3)), cwd=tmp)
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert junit_cases(tmp / "out" / "m.xml") == junit_cases(tmp / "out" / "all.xml")
    assert_valid(tmp / "out" / "m.xml")

    lacking = run_gradaudit("merge", "out/x.json", "out/s1.json", "out/s2.json", cwd=tmp)
    assert lacking.returncode == 2 and "3/3 missing" in lacking.stderr


def test_a_signal_stops_the_set_and_its_reports_say_what_did_not_run(tmp_path: Path) -> None:
    """SIGTERM while the second of three specs runs: exit 143 promptly; the first spec's
    results are kept, the second is stopped, the third says it never ran."""
    from tests.test_interrupt import SLOW_PLUGIN, interrupt

    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "slow.py").write_text(SLOW_PLUGIN, "utf-8")
    quick = small_spec(name="quick", dtypes=["float32"])
    slow = small_spec(
        name="slow", plugins=["slow.py"], gradients={"plugin": "slow-bptt"}, dtypes=["float32"],
        batches={"split": "train", "count": 100, "size": 4, "seed": 3},
    )  # fmt: skip
    for name, spec in (("a.yaml", quick), ("b.yaml", slow), ("c.yaml", quick | {"name": "c"})):
        (folder / name).write_text(yaml.safe_dump(spec), "utf-8")
    run = interrupt(tmp_path, folder, "stopped", signal.SIGTERM)
    assert run.returncode == 143, run.stdout[-2000:] + run.stderr
    assert run.seconds_to_exit < 15 and "Traceback" not in run.stdout + run.stderr
    assert "c.yaml  NOT RUN" in run.stdout

    document = json.loads(run.json.read_text("utf-8"))
    assert document["exit_code"] == 143
    first, second, third = document["runs"]
    assert first["stopped"] is None and first["totals"]["passed"] > 0
    assert "interrupted by SIGTERM" in second["stopped"]
    assert second["groups"][0]["tensors"][0]["batches"] >= 3  # the batches done are kept
    assert "before this spec ran" in third["stopped"] and not third["groups"]
    root = assert_valid(run.junit)
    assert {s.get("name") for s in root.iter("testsuite")} >= {"quick[cpu,float32]", "c[run]"}
