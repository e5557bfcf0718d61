"""`gradaudit run/plan --shard K/N` on op specs: the shards' reports, merged, are the
unsharded run's (same test cases, each once, same verdicts); a bug fails in exactly the
shard that runs its exposing case; a shard with no case is not a green."""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.conftest import REPO, run_gradaudit

RMSNORM = REPO / "specs" / "op-rmsnorm.yaml"
IN_PLACE = """\
name: rmsnorm-in-place
op:
  candidate: gradaudit_ops.gallery:RMSNormInPlace
  reference: rmsnorm-reference
  dims: {N: 6, D: 16}
  inputs:
    x: {shape: [N, D]}
    weight: {shape: [D]}
  args: {eps: 1.0e-6}
  checks: {micro_batch: {reduction: none}, saved_tensors: {}}
dtypes: [float64, float32]
"""
DTYPES = ("--dtype", "float64", "--dtype", "float32")


def cases(path: Path) -> dict[tuple[str, str], str]:
    """JUnit test cases: (suite, case) -> pass, failure, error or skipped."""
    out = {}
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for case in suite.iter("testcase"):
            key = (suite.get("name", ""), case.get("name", ""))
            assert key not in out, f"{key} twice in {path}"
            kinds = [k for k in ("failure", "error", "skipped") if case.find(k) is not None]
            out[key] = kinds[0] if kinds else "pass"
    return out


def statuses(path: Path) -> dict[tuple[str, str, str, str], str]:
    data = json.loads(path.read_text())
    return {
        (g["device"], g["dtype"], g["check"], t["tensor"]): t["status"]
        for g in data["groups"]
        for t in g["tensors"]
    }


def sharded(tmp_path: Path, spec: Path, total: int) -> list[int]:
    codes = []
    for k in range(1, total + 1):
        result = run_gradaudit(
            "run", spec, "--shard", f"{k}/{total}", *DTYPES,
            "--junit-xml", tmp_path / f"s{k}.xml", "--json", tmp_path / f"s{k}.json",
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stdout + result.stderr
        codes.append(result.returncode)
    return codes


def test_merged_shards_are_the_unsharded_run_and_a_bug_is_red_in_its_shard_only(
    tmp_path: Path,
) -> None:
    """The in-place gallery op, sharded 3 ways: the merge is the unsharded run, and each
    stated red case is red in exactly the shard `plan --shard` names for it (the green
    spec's merge: test_the_documented_sharding_commands_run)."""
    spec = tmp_path / "bug.yaml"
    spec.write_text(IN_PLACE)
    plan = json.loads(run_gradaudit("plan", spec, *DTYPES, "--json", "--shard", "1/3").stdout)
    owner = {
        (c["dtype"], c["check"].removeprefix("variant:")): (
            c["skip"] or "run by shard 1/3"
        ).removeprefix("run by shard ")
        for c in plan["cases"]
    }
    whole = run_gradaudit(
        "run", spec, *DTYPES, "--junit-xml", tmp_path / "all.xml", "--json", tmp_path / "all.json"
    )
    assert whole.returncode == 1, whole.stdout + whole.stderr
    codes = sharded(tmp_path, spec, 3)
    xmls = [tmp_path / f"s{k}.xml" for k in (1, 2, 3)]
    jsons = [tmp_path / f"s{k}.json" for k in (1, 2, 3)]
    merged_xml = run_gradaudit("merge", tmp_path / "m.xml", *xmls)
    merged_json = run_gradaudit("merge", tmp_path / "m.json", *jsons)
    assert merged_xml.returncode == merged_json.returncode == 1
    unsharded = cases(tmp_path / "all.xml")
    assert cases(tmp_path / "m.xml") == unsharded
    assert statuses(tmp_path / "m.json") == statuses(tmp_path / "all.json")
    assert "skipped" not in unsharded.values()
    # each case ran in exactly one shard; the others list it as skipped
    ran = [{k for k, v in cases(x).items() if v != "skipped"} for x in xmls]
    assert sum(map(len, ran)) == len(unsharded)
    assert set().union(*ran) == set(unsharded)
    assert all(ran), "every shard ran something"
    # a shard is red exactly when it runs a failing case
    assert codes == [1 if any(unsharded[k] != "pass" for k in r) else 0 for r in ran]
    red: dict[tuple[str, str], set[str]] = {}
    for k in (1, 2, 3):
        for (_, dtype, check, _), status in statuses(tmp_path / f"s{k}.json").items():
            if status in ("fail", "error"):
                red.setdefault((dtype, check.removeprefix("variant:")), set()).add(f"{k}/3")
    # the gallery's stated cases (tests/test_ops_gallery.py), each red in its own shard only
    stated = ("saved_tensors", "expanded")
    assert set(red) == {(d, c) for d in ("float64", "float32") for c in stated}
    assert all(shards == {owner[case]} for case, shards in red.items()), (red, owner)


def test_plan_shows_the_shard(tmp_path: Path) -> None:
    """A shard takes the variants k with k % N == K-1 (the invariance checks run on the base
    variant, so with it); every other case is in its plan, "run by shard J/N"."""
    whole = json.loads(run_gradaudit("plan", RMSNORM, "--json").stdout)
    parts = [
        json.loads(run_gradaudit("plan", RMSNORM, "--json", "--shard", f"{k}/3").stdout)
        for k in (1, 2, 3)
    ]
    keys = [(c["device"], c["dtype"], c["check"]) for c in whole["cases"]]
    ran: list[tuple[str, str, str]] = []
    for k, part in enumerate(parts, 1):
        assert part["shard"] == f"{k}/3"
        assert [(c["device"], c["dtype"], c["check"]) for c in part["cases"]] == keys
        mine = [c for c in part["cases"] if c["skip"] is None]
        assert all(s % 3 == k - 1 for c in mine for s in c["samples"])
        assert all(c["skip"].startswith("run by shard ") for c in part["cases"] if c["skip"])
        ran += [(c["device"], c["dtype"], c["check"]) for c in mine]
    assert sorted(ran) == sorted(keys)  # each case in exactly one shard
    names = [c["check"] for c in whole["cases"] if c["dtype"] == "float64"]
    assert names[-2:] == ["micro_batch", "saved_tensors"] and names[0] == "variant:base"
    text = run_gradaudit("plan", RMSNORM, "--shard", "2/3").stdout
    shown = "variants N=7, D=1, transposed, zeros, D=16384 (shard 2/3)"
    assert text.splitlines()[0].endswith(shown)


def test_a_shard_with_no_cases_is_not_green(tmp_path: Path) -> None:
    total = 15  # the spec has 14 cases per device and dtype
    result = run_gradaudit(
        "run", RMSNORM, "--shard", f"{total}/{total}", "--dtype", "float64",
        "--json", tmp_path / "r.json",
    )  # fmt: skip
    assert result.returncode == 5, result.stdout + result.stderr
    assert "nothing was proven" in result.stdout
    groups = json.loads((tmp_path / "r.json").read_text())["groups"]
    assert groups and all(g["skipped"].startswith("run by shard ") for g in groups)
    plan = run_gradaudit("plan", RMSNORM, "--shard", f"{total}/{total}")
    assert "variants none (shard 15/15)" in plan.stdout.splitlines()[0]


def test_a_bad_shard_is_a_usage_error() -> None:
    result = run_gradaudit("run", RMSNORM, "--shard", "4/3")
    assert result.returncode == 2 and "expected K/N" in result.stderr


def test_the_documented_sharding_commands_run(tmp_path: Path) -> None:
    """docs/ops.md's sharding section, as written, in a folder holding the spec."""
    text = (REPO / "docs" / "ops.md").read_text()
    section = text.split("## Sharding", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "op-rmsnorm.yaml").write_text(RMSNORM.read_text())
    outputs = []
    for command in block.strip().splitlines():
        result = run_gradaudit(*shlex.split(command)[1:], cwd=tmp_path)
        assert result.returncode == 0, command + "\n" + result.stdout + result.stderr
        outputs.append(result.stdout)
    assert "variants N=7, D=1, transposed, zeros, D=16384 (shard 2/3)" in outputs[0]
    assert outputs[-1].startswith("178 passed, 0 failed, 0 errors, 0 skipped")
    merged = cases(tmp_path / "all.xml")
    assert merged and "skipped" not in merged.values()
    # each case ran in exactly one shard (that the merge is the unsharded run, verdict for
    # verdict: test_merged_shards_are_the_unsharded_run_and_a_bug_is_red_in_its_shard_only)
    ran = [{k for k, v in cases(tmp_path / f"shard{k}.xml").items() if v != "skipped"}
           for k in (1, 2, 3)]  # fmt: skip
    assert all(ran) and sum(map(len, ran)) == len(merged) == len(set().union(*ran))
