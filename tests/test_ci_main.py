"""`python -m gradaudit.ci`: the add-ons from a shell (the action's script uses it), and
their import weight: neither torch nor the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.ci_reports import budgets, group, report, tensor


def ci(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GITHUB_STEP_SUMMARY",)}
    clean = {k: v for k, v in clean.items() if not k.startswith(("CI_NODE", "CIRCLE_NODE"))}
    return subprocess.run(
        [sys.executable, "-m", "gradaudit.ci", *map(str, args)],
        capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60, check=False,
    )  # fmt: skip


def test_diff_html_chart_and_shard(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(budgets(w=0.2)), "utf-8")
    b.write_text(json.dumps(report(group([tensor("w", "fail", 1.5)]))), "utf-8")
    summary = tmp_path / "summary.md"
    same = ci("diff", a, a, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert same.returncode == 0 and "new failure: 0" in same.stdout
    red = ci("diff", a, b, "-v", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert red.returncode == 1 and "new failure  cpu" in red.stdout
    assert summary.read_text("utf-8").count("### ") == 2
    assert ci("diff", a, b, "--max-growth", "0.5").returncode == 2

    page = tmp_path / "out.html"
    assert ci("html", b, page).returncode == 0
    assert page.read_text("utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left

    chart = ci("chart", b)
    assert (
        chart.returncode == 0 and "```mermaid" in chart.stdout and "#### Failures" in chart.stdout
    )
    assert ci("chart", b, "--no-failures", "--append", summary).returncode == 0
    assert "xychart-beta" in summary.read_text("utf-8")

    assert ci("shard", env={"CIRCLE_NODE_INDEX": "2", "CIRCLE_NODE_TOTAL": "3"}).stdout == "3/3\n"
    missing = ci("shard")
    assert missing.returncode == 2 and "matrix.shard" in missing.stderr


def test_bad_input_is_exit_2_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]", "utf-8")
    for args in (("html", junk, tmp_path / "x.html"), ("chart", junk), ("diff", junk, junk)):
        result = ci(*args)
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1 and str(junk) in result.stderr
    assert not (tmp_path / "x.html").exists()


def test_the_add_ons_import_neither_torch_nor_the_engine() -> None:
    """Loading every CI module pulls in only gradaudit's package root (its hook marker and
    plugin types, both torch-free) besides the add-ons themselves."""
    code = (
        "import sys, gradaudit.ci.diff, gradaudit.ci.diff_format, gradaudit.ci.html, "
        "gradaudit.ci.summary_chart, gradaudit.ci.environment, gradaudit.ci.__main__\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'gradaudit', 'numpy', 'yaml', 'click'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    outside = {m for m in out if not m.startswith("gradaudit.ci")}
    # The package root's torch-free names (hooks, types, placements) and the file writer;
    # nothing of the engine (run, compare, spec) and no torch, numpy, yaml or click.
    allowed = {"gradaudit", "gradaudit.hookspecs", "gradaudit.types", "gradaudit.version"}
    allowed |= {"gradaudit.errors", "gradaudit.write", "gradaudit.targets"}
    allowed |= {"gradaudit.targets.sharded", "gradaudit.targets.sharded.layout"}
    allowed |= {"gradaudit.tolerance"}  # stdlib only: describes a report's `tol` record
    assert outside <= allowed, sorted(outside - allowed)


def test_run_html_refused_as_bad_input_leaves_no_page(tmp_path: Path) -> None:
    """Like the JUnit and JSON reports: exit 2 writes nothing, and the placeholder goes."""
    from tests.conftest import REPO, run_gradaudit

    page = tmp_path / "out.html"
    spec = REPO / "specs" / "charrnn.yaml"
    result = run_gradaudit("run", spec, "--set", "nope=1", "--html", page)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert not page.exists()
    page.write_text("<p>an older page</p>", "utf-8")  # an old page never outlives a refused run
    assert run_gradaudit("run", spec, "--set", "nope=1", "--html", page).returncode == 2
    assert not page.exists()
