"""The job-summary chart (gradaudit.ci.summary_chart): failures table first, then Mermaid
`xychart-beta` charts whose every line follows Mermaid's grammar (checked against
mermaid 11.17 by hand: docs/ci-native.md), within the bars-per-chart and charts limits."""

from __future__ import annotations

import re
from typing import Any

from gradaudit.ci.summary_chart import CLIP, MAX_BARS, MAX_CHARTS, MAX_CHUNKS, render
from tests.ci_reports import budgets, group, report, tensor

NUMBER = r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)"  # Mermaid's NUMBER_WITH_DECIMAL: no exponent
STRING = r'"[^"\n]*"'


def charts(markdown: str) -> list[dict[str, Any]]:
    """Each ```mermaid block, parsed as Mermaid's xychart grammar reads it."""
    found = []
    for block in re.findall(r"```mermaid\n(.*?)\n```", markdown, re.S):
        lines = block.split("\n")
        assert lines[0].startswith("%%{init: {") and lines[0].endswith("}}%%")
        assert lines[1] == "xychart-beta horizontal"
        fields: dict[str, Any] = {}
        for line in lines[2:]:
            key, _, rest = line.strip().partition(" ")
            assert "%%" not in rest, line  # would start a comment
            if key == "title":
                assert re.fullmatch(STRING, rest), line
                fields["title"] = rest[1:-1]
            elif key == "x-axis":
                inner = re.fullmatch(rf"\[({STRING}(?:, {STRING})*)\]", rest)
                assert inner, line
                fields["labels"] = re.findall(r'"([^"]*)"', inner[1])
            elif key == "y-axis":
                assert re.fullmatch(rf"{STRING} {NUMBER} --> {NUMBER}", rest), line
            elif key in ("bar", "line"):
                inner = re.fullmatch(rf"\[({NUMBER}(?:, {NUMBER})*)\]", rest)
                assert inner, line
                fields[key] = [float(v) for v in inner[1].split(", ")]
            else:
                raise AssertionError(f"unexpected line {line!r}")
        assert len(fields["labels"]) == len(fields["bar"]) == len(fields["line"])
        found.append(fields)
    return found


def test_one_chart_per_case_with_the_limit_as_a_line() -> None:
    text = render(budgets(a=0.25, b=0.0, c=1e-7))
    (chart,) = charts(text)
    assert chart["labels"] == ["a", "b", "c"]
    assert chart["bar"] == [25.0, 0.0, 0.0]
    assert chart["line"] == [100.0] * 3
    assert chart["title"] == "cpu float32: worst budget per tensor (% of allowance)"
    assert "#### Failures" not in text and text.startswith("### ✅ gradaudit `charrnn`")


def test_failures_first_and_clipped_bars() -> None:
    data = report(
        group([tensor("ok", "pass", 0.5), tensor("bad", "fail", 4e12)]),
        group([tensor("crash", "error", None)], dtype="float64"),
    )
    text = render(data)
    assert text.index("#### Failures (2)") < text.index("```mermaid")
    table = [line for line in text.splitlines() if line.startswith("| cpu")]
    assert table[0].startswith("| cpu | float32 | `bad` | fail | 4e+14% | 1 (65) |")
    assert "RuntimeError: boom" in table[1]
    first, second = charts(text)
    assert first["labels"] == ["ok", "bad (>150%)"] and first["bar"] == [50.0, CLIP]
    assert second["labels"] == ["crash (error)"] and second["bar"] == [0.0]
    assert "#### Failures" not in render(data, include_failures=False)


def test_checks_are_labelled_and_skipped_cases_listed() -> None:
    data = report(
        group([tensor("grad.x", "pass", 0.1)], check="variant:base"),
        group([tensor("grad.x", "pass", 0.2)], check="micro_batch"),
        group([tensor("w", "skipped", None)], device="cuda", skipped="cuda is absent"),
        stopped="interrupted by SIGTERM",
    )
    text = render(data)
    (chart,) = charts(text)
    assert chart["labels"] == ["grad.x [variant:base]", "grad.x [micro batch]"]
    assert "- skipped gradients: cuda is absent" in text
    assert "**Run stopped early:** interrupted by SIGTERM" in text


def test_labels_cannot_break_the_chart_or_the_table() -> None:
    evil = 'a"b`c%%d\ne|<f>'
    text = render(report(group([tensor(evil, "fail", 2.0)], check=evil), spec_name=evil))
    (chart,) = charts(text)  # parses: no quote, backtick, %% or newline inside strings
    assert chart["labels"] == ["a'b'c%d e|<f> [a'b'c%d e|<f>] (>150%)"]
    row = next(line for line in text.splitlines() if line.startswith("| cpu"))
    assert row.count(" | ") == 6 and "<f>" not in row.replace("`", "")


def test_long_cases_are_split_then_cut_to_their_largest() -> None:
    names = {f"t{i}": i / 100 for i in range(MAX_BARS + 1)}
    split = charts(render(budgets(**names)))
    assert [len(c["labels"]) for c in split] == [MAX_BARS, 1]
    assert split[0]["title"].startswith("cpu float32 (1/2)")
    many = {f"t{i}": i / 1000 for i in range(MAX_BARS * MAX_CHUNKS + 1)}
    (top,) = charts(render(budgets(**many)))
    assert len(top["labels"]) == MAX_BARS
    assert top["labels"][0] == f"t{MAX_BARS * MAX_CHUNKS}"  # the largest first
    assert top["title"].startswith(f"cpu float32: the {MAX_BARS} largest of {len(many)}")


def test_at_most_max_charts_then_a_table() -> None:
    dtypes = [f"d{i}" for i in range(MAX_CHARTS + 3)]
    data = report(*(group([tensor("w", "pass", 0.3)], dtype=d) for d in dtypes))
    text = render(data)
    assert len(charts(text)) == MAX_CHARTS
    assert "#### 3 more cases (not charted)" in text
    assert f"| cpu {dtypes[-1]} | 1 | 30% `w` |" in text
