"""Markdown for `$GITHUB_STEP_SUMMARY`: the failures as a table, then per case a Mermaid bar
chart of each tensor's worst budget (in % of its allowance) with the 100% limit as a line.

The charts are horizontal (`xychart-beta horizontal`): tensor names are stacked down the side,
where a vertical chart would print 30 names over each other along 700 pixels. Checked with
mermaid 11.17 in headless Chromium (docs/ci-native.md); the `%%{init: ...}%%` directive sets
the height (20 px a bar) and the colours (bars blue, the limit red).

Mermaid's `xychart-beta` (https://mermaid.js.org/syntax/xyChart.html; GitHub renders fenced
```mermaid blocks) takes one `x-axis [...]` of categories, `bar [...]` and `line [...]`
series of plain decimals (its grammar has no exponent: `[+-]?(\\d+(\\.\\d+)?|\\.\\d+)`), and
quoted strings that cannot hold a `"`; `%%` starts a comment. So labels lose `"`, backticks
and `%%`, values are written with two decimals, and bars are clipped at 150% (a failing
budget can be 10^15 %, which would flatten every other bar; the failures table above has the
real numbers). A case is (device, dtype); its checks' tensors are labelled `name [check]` as
on the console. Charts hold at most MAX_BARS bars: a longer case is split into charts of
MAX_BARS, up to MAX_CHUNKS of them, and a case longer than that shows its MAX_BARS largest
budgets; after MAX_CHARTS charts the remaining cases are one table row each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradaudit.ci.report import (
    Group,
    Tensor,
    check_report,
    first_strings,
    groups,
    percent,
    spec_name,
    tensor_label,
    text_or_none,
    totals,
    verdict,
)
from gradaudit.ci.report import md_cell as _cell

MAX_BARS = 30  # bars per chart: beyond that the labels of a 700px chart overlap
MAX_CHUNKS = 3  # charts per case before it shows only its largest budgets
MAX_CHARTS = 20  # charts per summary (GitHub renders each in its own frame)
MAX_FAILURES = 50  # rows of the failures table
CLIP = 150.0  # % at which bars are clipped, and the top of the y-axis
PALETTE = "#4c78a8, #cf222e"  # bars blue, the 100% line red
ICONS = {"pass": "✅", "fail": "❌", "empty": "⚪"}


def render(report: Mapping[str, Any], *, include_failures: bool = True) -> str:
    """The Markdown section for a report (ReportError if it is not one). Without
    `include_failures` only the charts (for a summary that already tabulates failures, as
    the run's own GitHub summary does)."""
    check_report(dict(report))
    counts = totals(report)
    state = verdict(report)
    lines = [
        f"### {ICONS[state]} gradaudit `{_cell(spec_name(report))}`: budgets",
        "",
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped",
    ]
    stopped = text_or_none(report.get("stopped"))
    if stopped:
        lines += ["", f"**Run stopped early:** {_cell(stopped)}"]
    cases = _cases(groups(report))
    if include_failures:
        lines += _failures(cases)
    lines += _charts(cases)
    return "\n".join(lines) + "\n\n"


Case = tuple[str, str, list[tuple[Group, Tensor]], list[str]]  # device, dtype, tensors, skips


def _cases(found: list[Group]) -> list[Case]:
    cases: dict[tuple[str, str], Case] = {}
    for group in found:
        case = cases.setdefault((group.device, group.dtype), (group.device, group.dtype, [], []))
        if group.skipped:
            case[3].append(f"{group.check}: {group.skipped}")
        else:
            case[2].extend((group, t) for t in group.tensors)
    return list(cases.values())


def _failures(cases: list[Case]) -> list[str]:
    red = [(d, t, g, x) for d, t, tensors, _ in cases for g, x in tensors
           if x.status in ("fail", "error")]  # fmt: skip
    if not red:
        return []
    lines = [
        "",
        f"#### Failures ({len(red)})",
        "",
        "| device | dtype | tensor | result | budget used | worst batch (seed) | why |",
        "|---|---|---|---|---:|---|---|",
    ]
    for device, dtype, group, t in red[:MAX_FAILURES]:
        raw = t.raw
        batch, seed = raw.get("worst_batch"), raw.get("worst_seed")
        where = "" if batch is None else f"{batch}" + (f" ({seed})" if seed is not None else "")
        why = (first_strings(raw.get("errors"), 1) or [""])[0] if t.status == "error" else ""
        if not why and raw.get("mismatched") is not None:
            why = f"{raw.get('mismatched')}/{raw.get('numel', '?')} elements beyond tolerance"
        lines.append(
            f"| {_cell(device)} | {_cell(dtype)} | `{_cell(tensor_label(t.name, group.check))}`"
            f" | {t.status} | {percent(t.budget)} | {where} | {_cell(why, 200)} |"
        )
    if len(red) > MAX_FAILURES:
        lines.append(f"\n{len(red) - MAX_FAILURES} more: see the JUnit, JSON or HTML report.")
    return lines


def _charts(cases: list[Case]) -> list[str]:
    lines: list[str] = []
    charts = 0
    overflow: list[str] = []
    for device, dtype, tensors, skips in cases:
        if charts >= MAX_CHARTS:
            overflow.append(_overflow_row(device, dtype, tensors, skips))
            continue
        lines += ["", f"#### {_cell(device)} · {_cell(dtype)}"]
        lines += [f"- skipped {_cell(s)}" for s in skips]
        if not tensors:
            continue
        for title, chunk in _chunks(device, dtype, tensors)[: MAX_CHARTS - charts]:
            lines += ["", *chart(title, [(tensor_label(t.name, g.check), t) for g, t in chunk])]
            charts += 1
    if overflow:
        lines += [
            "",
            f"#### {len(overflow)} more cases (not charted)",
            "",
            "| case | tensors | largest budget |",
            "|---|---:|---|",
            *overflow,
        ]
    return lines


def _chunks(
    device: str, dtype: str, tensors: list[tuple[Group, Tensor]]
) -> list[tuple[str, list[tuple[Group, Tensor]]]]:
    name = f"{device} {dtype}"
    if len(tensors) <= MAX_BARS:
        return [(name, tensors)]
    if len(tensors) <= MAX_BARS * MAX_CHUNKS:
        parts = [tensors[i : i + MAX_BARS] for i in range(0, len(tensors), MAX_BARS)]
        return [(f"{name} ({k + 1}/{len(parts)})", p) for k, p in enumerate(parts)]
    top = sorted(tensors, key=lambda gt: -(gt[1].budget if gt[1].budget is not None else -1))
    return [(f"{name}: the {MAX_BARS} largest of {len(tensors)}", top[:MAX_BARS])]


def chart(title: str, bars: list[tuple[str, Tensor]]) -> list[str]:
    """One fenced Mermaid xychart: a bar per (label, tensor), the 100% limit as a line."""
    labels = ", ".join(f'"{_label(label, t)}"' for label, t in bars)
    values = ", ".join(_value(t) for _, t in bars)
    limit = ", ".join("100" for _ in bars)
    height = max(240, 90 + 20 * len(bars))  # room for one label per bar, stacked
    config = (
        f'{{"xyChart": {{"height": {height}}}, '
        f'"themeVariables": {{"xyChart": {{"plotColorPalette": "{PALETTE}"}}}}}}'
    )
    return [
        "```mermaid",
        f"%%{{init: {config}}}%%",
        "xychart-beta horizontal",
        f'    title "{_text(title)}: worst budget per tensor (% of allowance)"',
        f"    x-axis [{labels}]",
        f'    y-axis "budget used (%)" 0 --> {CLIP:g}',
        f"    bar [{values}]",
        f"    line [{limit}]",
        "```",
    ]


def _value(t: Tensor) -> str:
    if t.budget is None:
        return "0"
    return f"{min(100 * t.budget, CLIP):.2f}"


def _label(label: str, t: Tensor) -> str:
    """The bar's label: marked when its bar is clipped or has no budget."""
    if t.budget is None:
        label += f" ({t.status})"
    elif 100 * t.budget > CLIP:
        label += " (>150%)"
    return _text(label)


def _overflow_row(
    device: str, dtype: str, tensors: list[tuple[Group, Tensor]], skips: list[str]
) -> str:
    measured = [
        (t.budget, tensor_label(t.name, g.check)) for g, t in tensors if t.budget is not None
    ]
    largest = max(measured, default=None)
    text = "-" if largest is None else f"{percent(largest[0])} `{_cell(largest[1])}`"
    if skips and not tensors:
        text = "skipped"
    return f"| {_cell(device)} {_cell(dtype)} | {len(tensors)} | {text} |"


def _text(text: str) -> str:
    """A Mermaid string's content: one line, without `"`, backticks or `%%`."""
    text = " ".join(text.split()).replace('"', "'").replace("`", "'")
    while "%%" in text:
        text = text.replace("%%", "%")
    return text
