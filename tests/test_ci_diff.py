"""`gradaudit diff` (gradaudit.ci.diff): each class of change on hand-made reports, each alarm
with a case that must stay quiet, then the acceptance test on real runs: two runs of the same
code are exit 0, a manual gradient rounded to 20 significand bits (still green) is exit 1
naming that tensor."""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from gradaudit.ci.diff import (
    ADDED,
    DEFAULT_FLOOR,
    DEFAULT_MAX_GROWTH,
    FIXED,
    GREW,
    NEW_FAILURE,
    NOT_COMPARED,
    REMOVED,
    STILL_FAILING,
    UNCHANGED,
    ReportDiff,
    TensorDiff,
    diff_reports,
)
from gradaudit.ci.diff_format import format_console, format_markdown, run_diff
from gradaudit.ci.report import ReportError
from tests.ci_reports import budgets, group, report, tensor
from tests.conftest import REPO, run_gradaudit
from tests.rounded_plugins import round_significand

ROUNDED = Path(__file__).resolve().with_name("rounded_plugins.py")


def kinds(diff: ReportDiff) -> dict[str, str]:
    return {r.tensor: r.kind for r in diff.rows}


def one(
    before: float | None,
    after: float | None,
    max_growth: float = DEFAULT_MAX_GROWTH,
    floor: float = DEFAULT_FLOOR,
) -> TensorDiff:
    diff = diff_reports(budgets(w=before), budgets(w=after), max_growth=max_growth, floor=floor)
    (row,) = diff.rows
    return row


# --- growth: the alarm and what must not raise it -------------------------------------------


def test_identical_reports_are_quiet() -> None:
    a = budgets(a=0.1, b=0.9, c=0.0)
    diff = diff_reports(a, a)
    assert set(kinds(diff).values()) == {UNCHANGED} and diff.exit_code == 0


def test_growth_beyond_the_ratio_and_above_the_floor_is_an_alarm() -> None:
    row = one(0.2, 0.68)
    assert row.kind == GREW and row.ratio == pytest.approx(3.4)
    assert diff_reports(budgets(w=0.2), budgets(w=0.68)).exit_code == 1


@pytest.mark.parametrize(
    ("before", "after", "why"),
    [
        (0.001, 0.004, "4x, but 0.4% of the allowance is under the 5% floor"),
        (0.02, 0.05, "2.5x, ending exactly at the floor (the floor is exclusive)"),
        (0.3, 0.57, "1.9x: within a seed's variation"),
        (0.3, 0.6, "exactly 2x (the ratio is exclusive)"),
        (0.6, 0.2, "shrank"),
        (0.0, 0.04, "from exact to under the floor"),
    ],
)
def test_growth_that_stays_quiet(before: float, after: float, why: str) -> None:
    assert one(before, after).kind == UNCHANGED, why


def test_growth_from_an_exact_match_is_infinite() -> None:
    row = one(0.0, 0.3)
    assert row.kind == GREW and math.isinf(row.ratio or 0)


def test_the_limits_are_parameters() -> None:
    assert one(0.3, 0.57, max_growth=1.5).kind == GREW
    assert one(0.001, 0.004, floor=0.0).kind == GREW
    assert one(0.2, 0.68, max_growth=4.0).kind == UNCHANGED
    assert (DEFAULT_MAX_GROWTH, DEFAULT_FLOOR) == (2.0, 0.05)
    with pytest.raises(ValueError, match="max_growth"):
        diff_reports(budgets(w=1), budgets(w=1), max_growth=0.5)
    with pytest.raises(ValueError, match="floor"):
        diff_reports(budgets(w=1), budgets(w=1), floor=-1)


# --- status changes -------------------------------------------------------------------------


def test_status_changes() -> None:
    before = report(
        group(
            [
                tensor("newfail", "pass", 0.3),
                tensor("newerror", "pass", 0.3),
                tensor("fixed", "fail", 4.0),
                tensor("still", "error", None),
                tensor("uncompared", "pass", 0.3),
                tensor("gone", "pass", 0.3),
                tensor("same", "pass", 0.3),
            ]
        )
    )
    after = report(
        group(
            [
                tensor("newfail", "fail", 1.2),
                tensor("newerror", "error", None),
                tensor("fixed", "pass", 0.5),
                tensor("still", "fail", 7.0),
                tensor("uncompared", "skipped", None),
                tensor("same", "pass", 0.31),
                tensor("new green", "pass", 0.9),
                tensor("new red", "fail", 2.0),
            ]
        )
    )
    diff = diff_reports(before, after)
    assert kinds(diff) == {
        "newfail": NEW_FAILURE,
        "newerror": NEW_FAILURE,  # a null budget does not hide an error
        "fixed": FIXED,
        "still": STILL_FAILING,
        "uncompared": NOT_COMPARED,
        "gone": REMOVED,
        "same": UNCHANGED,
        "new green": ADDED,
        "new red": NEW_FAILURE,
    }
    assert diff.exit_code == 1


def test_a_red_tensor_that_is_now_skipped_is_not_fixed() -> None:
    red = report(group([tensor("w", "fail", 3.0)]))
    skipped = report(group([tensor("w", "skipped", None)], skipped="no cuda"))
    row = diff_reports(red, skipped).rows[0]
    assert row.kind == NOT_COMPARED and diff_reports(red, skipped).exit_code == 0


def test_fixes_and_removals_alone_are_exit_0() -> None:
    before = report(group([tensor("a", "fail", 3.0), tensor("b", "pass", 0.3)]))
    after = report(group([tensor("a", "pass", 0.3)]))
    diff = diff_reports(before, after)
    assert kinds(diff) == {"a": FIXED, "b": REMOVED} and diff.exit_code == 0


def test_null_budgets_are_never_a_growth() -> None:
    skipped = report(group([tensor("w", "skipped", None)], skipped="no cuda"))
    assert diff_reports(skipped, budgets(w=0.9)).rows[0].kind == UNCHANGED  # newly compared
    assert diff_reports(skipped, skipped).rows[0].kind == UNCHANGED
    row = diff_reports(budgets(w=0.3), skipped).rows[0]
    assert row.kind == NOT_COMPARED and row.ratio is None


def test_cases_added_and_removed() -> None:
    cpu = group([tensor("a", "pass", 0.3)])
    cuda_green = group([tensor("a", "pass", 0.3)], device="cuda")
    cuda_red = group([tensor("a", "fail", 2.0)], device="cuda")
    diff = diff_reports(report(cpu), report(cpu, cuda_green))
    assert diff.cases_added == [("cuda", "float32", "gradients")] and diff.exit_code == 0
    assert diff.shown() == []  # a new case's green tensors need -v
    assert [r.kind for r in diff.shown(verbose=True)] == [ADDED, UNCHANGED]
    red = diff_reports(report(cpu), report(cpu, cuda_red))
    assert [r.kind for r in red.shown()] == [NEW_FAILURE] and red.exit_code == 1
    gone = diff_reports(report(cpu, cuda_green), report(cpu))
    assert gone.cases_removed == [("cuda", "float32", "gradients")] and gone.exit_code == 0


def test_a_run_that_stopped_is_a_new_failure() -> None:
    green = budgets(a=0.3)
    stopped = dict(budgets(a=0.3), stopped="interrupted by SIGTERM")
    diff = diff_reports(green, stopped)
    assert diff.exit_code == 1
    assert [(r.kind, r.tensor) for r in diff.shown()] == [(NEW_FAILURE, "[run]")]
    assert any("stopped early: interrupted by SIGTERM" in n for n in diff.notes)
    back = diff_reports(stopped, green)
    assert back.exit_code == 0 and any("stopped early" in n for n in back.notes)


def test_a_tensor_or_case_given_twice_is_bad_input() -> None:
    twice = report(group([tensor("a"), tensor("a")]))
    with pytest.raises(ReportError, match="'a' appears twice"):
        diff_reports(twice, budgets(a=0.1), before_name="x.json")
    cases = report(group([tensor("a")]), group([tensor("b")]))
    with pytest.raises(ReportError, match="case cpu float32 gradients appears twice"):
        diff_reports(budgets(a=0.1), cases)


def test_runs_of_another_configuration_are_noted() -> None:
    other = report(group([tensor("w", "pass", 0.2)]), torch_version="2.14.0")
    diff = diff_reports(budgets(w=0.2), other)
    assert diff.exit_code == 0
    assert any("torch_version 2.13.0+cpu -> 2.14.0" in n for n in diff.notes)
    assert diff_reports(budgets(w=0.2), budgets(w=0.2)).notes == []


def test_checks_and_dtypes_are_separate_cases() -> None:
    before = report(
        group([tensor("x", "pass", 0.1)], dtype="float32"),
        group([tensor("x", "pass", 0.1)], dtype="float64"),
        group([tensor("x", "pass", 0.1)], check="micro_batch"),
    )
    after = report(
        group([tensor("x", "pass", 0.1)], dtype="float32"),
        group([tensor("x", "pass", 0.9)], dtype="float64"),
        group([tensor("x", "pass", 0.1)], check="micro_batch"),
    )
    (grew,) = [r for r in diff_reports(before, after).rows if r.kind == GREW]
    assert (grew.dtype, grew.check) == ("float64", "gradients")


# --- output ---------------------------------------------------------------------------------


def mixed() -> ReportDiff:
    before = report(
        group(
            [tensor(n, "pass", 0.1) for n in ("quiet", "grew2", "grew9", "newfail")]
            + [tensor("fixed", "fail", 2.0)]
        )
    )
    after = report(
        group(
            [
                tensor("quiet", "pass", 0.1),
                tensor("grew2", "pass", 0.25),
                tensor("grew9", "pass", 0.9),
                tensor("newfail", "fail", 1.5),
                tensor("fixed", "pass", 0.1),
            ]
        )
    )
    return diff_reports(before, after, before_name="main.json", after_name="pr.json")


def test_the_table_is_sorted_new_failures_growth_fixes_then_the_rest_with_v() -> None:
    diff = mixed()
    assert [r.tensor for r in diff.shown()] == ["newfail", "grew9", "grew2", "fixed"]
    assert [r.tensor for r in diff.shown(verbose=True)][-1] == "quiet"


def test_the_console_table_is_fixed_width() -> None:
    text = format_console(mixed())
    lines = text.splitlines()
    assert lines[0].startswith("gradaudit diff main.json -> pr.json: new failure: 1, grew: 2")
    table = lines[1:-1]
    assert table[0].split() == [
        "change", "device", "dtype", "tensor", "before", "after", "ratio", "status",
    ]  # fmt: skip
    column = table[0].index("tensor")
    assert [line[column:].split()[0] for line in table[1:]] == [
        "newfail", "grew9", "grew2", "fixed",
    ]  # fmt: skip
    assert "9x" in table[2] and "10%" in table[2] and "90%" in table[2]
    assert lines[-1] == "(1 unchanged tensors not shown; -v shows them)"
    assert "quiet" in format_console(mixed(), verbose=True)


def test_the_markdown_section() -> None:
    named = report(group([tensor("a|b`c<script>", "pass", 0.9)]))
    diff = diff_reports(report(group([tensor("a|b`c<script>", "pass", 0.1)])), named)
    text = format_markdown(diff)
    assert text.startswith("### ❌ gradaudit diff")
    row = next(line for line in text.splitlines() if line.startswith("| **grew**"))
    assert "`a\\|b'c&lt;script&gt;`" in row and "<script>" not in text
    assert row.count(" | ") == 7  # eight cells: the name did not split the row
    assert format_markdown(diff_reports(named, named)).startswith("### ✅")


def test_run_diff_exit_codes_and_summary(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(budgets(w=0.2)), "utf-8")
    b.write_text(json.dumps(budgets(w=0.9)), "utf-8")
    summary = tmp_path / "summary.md"
    out, err = io.StringIO(), io.StringIO()
    assert run_diff(a, a, out=out, err=err, summary_path=str(summary)) == 0
    assert run_diff(a, b, out=out, err=err, summary_path=str(summary)) == 1
    assert summary.read_text("utf-8").count("### ") == 2 and err.getvalue() == ""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", "utf-8")
    for first, second in ((bad, a), (a, tmp_path / "missing.json")):
        err = io.StringIO()
        assert run_diff(first, second, out=io.StringIO(), err=err) == 2
        assert err.getvalue().count("\n") == 1 and "gradaudit diff: error: " in err.getvalue()
    assert str(tmp_path / "missing.json") in err.getvalue()


# --- real runs ------------------------------------------------------------------------------


def test_the_rounding_plugin_moves_each_element_by_at_most_8_ulps() -> None:
    g = torch.randn(1000, dtype=torch.float32) * 1e-3
    rounded = round_significand(g, 4)
    ulps = ((rounded - g).abs() / (torch.finfo(torch.float32).eps * g.abs())).max().item()
    assert 4 < ulps <= 8  # 2^(4-1) ULPs of each element at most, and it does move them
    assert torch.equal(round_significand(rounded, 4), rounded)


def audit(
    folder: Path, name: str, *args: str, env: dict[str, str] | None = None, **gradients: Any
) -> Path:
    """Run specs/charrnn.yaml on cpu float32 and float64 (optionally with the rounded BPTT);
    returns the JSON report's path."""
    spec = yaml.safe_load((REPO / "specs" / "charrnn.yaml").read_text("utf-8"))
    spec["devices"] = ["cpu"]
    spec["dtypes"] = ["float32", "float64"]
    if gradients:
        spec["plugins"] = [str(ROUNDED)]
        spec["gradients"] = {"plugin": "charrnn-bptt-rounded", "options": gradients}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), "utf-8")
    out = folder / f"{name}.json"
    result = run_gradaudit("run", path, "--json", out, "-q", *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("diff")
    with ThreadPoolExecutor(max_workers=3) as pool:  # each run is mostly torch's import
        jobs = {
            "main": pool.submit(audit, folder, "main"),
            "again": pool.submit(audit, folder, "again", "--html", str(folder / "again.html")),
            "rounded": pool.submit(audit, folder, "rounded", tensor="W.weight", drop_bits=4),
            "s1": pool.submit(audit, folder, "s1", "--shard", "1/2"),
            "s2": pool.submit(  # GitLab's parallel job 2 of 2
                audit,
                folder,
                "s2",
                "--shard",
                "auto",
                env={"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "2"},
            ),
        }
        runs = {name: job.result() for name, job in jobs.items()}
    merged = folder / "merged.json"
    result = run_gradaudit("merge", merged, runs["s1"], runs["s2"])
    assert result.returncode == 0, result.stdout + result.stderr
    return runs | {"merged": merged}


def worst(path: Path, dtype: str, name: str) -> tuple[str, float]:
    data = json.loads(path.read_text("utf-8"))
    (t,) = [t for g in data["groups"] if g["dtype"] == dtype for t in g["tensors"]
            if t["tensor"] == name]  # fmt: skip
    return t["status"], t["worst"]["budget"]


def test_two_runs_of_the_same_code_are_exit_0(real: dict[str, Path]) -> None:
    out = io.StringIO()
    assert run_diff(real["main"], real["again"], out=out) == 0
    assert "new failure: 0, grew: 0, fixed: 0 (30 tensors" in out.getvalue()


def test_a_green_rounding_of_one_gradient_is_exit_1_naming_it(real: dict[str, Path]) -> None:
    status0, before = worst(real["main"], "float32", "W.weight")
    status1, after = worst(real["rounded"], "float32", "W.weight")
    assert status0 == status1 == "pass"  # still green ...
    assert 0.1 < before < 0.4 and 0.5 < after < 1.0 and after / before > 2.5  # ... but 3x
    out = io.StringIO()
    assert run_diff(real["main"], real["rounded"], out=out) == 1
    grew = [line for line in out.getvalue().splitlines() if line.startswith("grew")]
    assert len(grew) == 1 and "float32" in grew[0] and "W.weight" in grew[0], out.getvalue()
    # float64 W.weight also doubled, but at ~1% of its allowance: under the floor, quiet.
    _, f64_before = worst(real["main"], "float64", "W.weight")
    _, f64_after = worst(real["rounded"], "float64", "W.weight")
    assert f64_after > f64_before and f64_after < DEFAULT_FLOOR


def test_a_merged_report_diffs_like_the_whole_run(real: dict[str, Path]) -> None:
    out = io.StringIO()
    assert run_diff(real["main"], real["merged"], out=out) == 0
    assert run_diff(real["merged"], real["rounded"], out=io.StringIO()) == 1
    # The shard itself misses half the batches: comparing it is allowed, and noted.
    shard = diff_reports(
        json.loads(real["main"].read_text("utf-8")), json.loads(real["s1"].read_text("utf-8"))
    )
    assert any("shard  -> 1/2" in n for n in shard.notes)


def test_gradaudit_diff_from_the_command_line(real: dict[str, Path]) -> None:
    same = run_gradaudit("diff", real["main"], real["again"])
    assert same.returncode == 0, same.stdout + same.stderr
    grew = run_gradaudit("diff", real["main"], real["rounded"])
    assert grew.returncode == 1 and "W.weight" in grew.stdout, grew.stdout + grew.stderr
    assert run_gradaudit("diff", real["main"], real["rounded"], "--max-growth", "9").returncode == 0
    missing = run_gradaudit("diff", real["main"], real["main"].with_name("none.json"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr


def test_shard_auto_takes_the_ci_variables_and_the_shards_merge_into_the_run(
    real: dict[str, Path],
) -> None:
    data = json.loads(real["s2"].read_text("utf-8"))
    assert data["run"]["shard"] == "2/2"
    assert run_diff(real["main"], real["merged"], out=io.StringIO()) == 0
    bare = run_gradaudit("plan", REPO / "specs" / "charrnn.yaml", "--shard", "auto")
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1 and "CI_NODE_INDEX" in bare.stderr


def test_run_html_writes_one_self_contained_page(real: dict[str, Path]) -> None:
    from html.parser import HTMLParser

    page = real["again"].with_name("again.html").read_text("utf-8")
    seen: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            seen.append(tag)
            assert not any(k in ("src", "href") and v and "//" in v for k, v in attrs)

    Tags().feed(page)
    assert {"html", "body", "details", "summary"} <= set(seen), seen
    assert "W.weight" in page and "did not finish" not in page
