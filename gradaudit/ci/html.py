"""`--html PATH`: one self-contained HTML page of a JSON report (docs/json-report.md).

No network: the CSS is inline, there are no scripts, fonts or images, so the page opens from a
CI artifact as it is, on a laptop or a phone. Failures come first with what the JUnit body
tells (worst element, both values, the allowance, how to reproduce), then every case with a
budget bar per tensor: the bar's length is min(budget, 1.5) / 1.5 of its track, the mark at
two thirds is 100% of the allowance, its colour is the tensor's status. Every string from the
report (tensor names come from plugins) is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from gradaudit.ci.report import (
    Group,
    Tensor,
    check_report,
    first_strings,
    groups,
    number,
    percent,
    reproduce_hint,
    run_facts,
    spec_name,
    tensor_label,
    text_or_none,
    tolerance_text,
    totals,
    verdict,
)

BAR_MAX = 1.5  # a bar's track holds budgets up to 150%; the 100% mark sits at 2/3
MAX_FAILURES = 100  # failure blocks shown in full; the cases below still list every tensor
MAX_ERRORS = 5  # error messages per block
FACTS = (
    ("spec", "spec"), ("spec sha256", "spec_sha256"), ("kind", "kind"),
    ("gradaudit", "gradaudit_version"), ("torch", "torch_version"),
    ("python", "python_version"), ("seed", "seed"), ("batches", "batches"),
    ("variants", "variants"), ("tolerance", "tolerance_mode"), ("shard", "shard"),
    ("started", "started"), ("host", "host"), ("warnings", "warnings"),
)  # fmt: skip
VERDICTS = {
    "pass": ("PASS", "passed"),
    "fail": ("FAIL", "failed"),
    "empty": ("EMPTY", "compared nothing"),
}

CSS = """
:root{--bg:#fff;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--card:#f6f8fa;
--pass:#1a7f37;--fail:#cf222e;--error:#bc4c00;--skipped:#8c959f;--track:#e6eaef}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;
--line:#3d444d;--card:#151b23;--pass:#3fb950;--fail:#f85149;--error:#db6d28;
--skipped:#656c76;--track:#262c36}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);line-height:1.45;
font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Ubuntu,sans-serif}
main{max-width:60rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .4rem}
h3{font-size:1rem;margin:1rem 0 .3rem;overflow-wrap:anywhere}.failure h3{margin-top:0}
code,pre{font:.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:.3rem 0}
.muted{color:var(--muted)}
header{border-left:.4rem solid var(--skipped);padding:.2rem 0 .2rem .8rem}
header.pass{border-color:var(--pass)}header.fail{border-color:var(--fail)}
.stopped{background:var(--card);border:1px solid var(--fail);padding:.5rem .8rem;margin:.8rem 0}
details.facts dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.1rem .8rem}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
.failure{background:var(--card);border:1px solid var(--line);border-left:.3rem solid var(--fail);
border-radius:.4rem;padding:.6rem .8rem;margin:.6rem 0}
.failure.error{border-left-color:var(--error)}
.failure dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.1rem .8rem}
.badge{display:inline-block;padding:0 .4em;border-radius:1em;color:#fff;font-size:.8rem}
.badge.pass{background:var(--pass)}.badge.fail{background:var(--fail)}
.badge.error{background:var(--error)}
.badge.skipped,.badge.unknown,.badge.empty{background:var(--skipped)}
h1 .badge{font-size:.9rem;vertical-align:middle}
ol.tensors{list-style:none;padding:0;margin:.3rem 0}
li.t{display:grid;grid-template-columns:minmax(5rem,32%) minmax(3rem,1fr) 5.4rem;gap:.6rem;
align-items:center;padding:.2rem 0;border-bottom:1px solid var(--line)}
.name{overflow-wrap:anywhere;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
font-size:.9rem}
.value{text-align:right;font-variant-numeric:tabular-nums;font-size:.9rem}
.bar{position:relative;display:block;height:.8rem;background:var(--track);border-radius:.2rem}
.bar::after{content:"";position:absolute;left:66.6667%;top:-.2rem;bottom:-.2rem;
border-left:2px dashed var(--fg);opacity:.55}
.fill{display:block;height:100%;border-radius:.2rem;background:var(--skipped)}
.pass .fill{background:var(--pass)}.fail .fill{background:var(--fail)}
.error .fill{background:var(--error)}
.t .badge{margin-left:.3em;font-family:system-ui,sans-serif}
@media (max-width:36rem){main{padding:.7rem}li.t{gap:.4rem}}
@media (max-width:20rem){li.t{grid-template-columns:minmax(0,1fr) 5.4rem}
li.t .name{grid-column:1/-1}}
"""


def render(report: Mapping[str, Any]) -> str:
    """The page for a report (checked with `report.check_report`; ReportError if it is not
    one). Works on shards, merged reports, skipped and errored cases and stopped runs."""
    check_report(dict(report))
    cases = groups(report)
    state = verdict(report)
    icon, word = VERDICTS[state]
    name = spec_name(report)
    counts = totals(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gradaudit {_e(name)}: {word}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f'<header class="{state}"><h1><span class="badge {state}">{icon}</span> '
        f"gradaudit <code>{_e(name)}</code> {word}</h1>",
        f'<p class="muted">{counts["passed"]} passed, {counts["failed"]} failed, '
        f"{counts['errors']} errors, {counts['skipped']} skipped</p></header>",
    ]
    stopped = text_or_none(report.get("stopped"))
    if stopped:
        parts.append(
            f'<p class="stopped"><strong>The run stopped early:</strong> {_e(stopped)}. '
            "Cases it did not finish are marked below.</p>"
        )
    parts.append(_facts(report))
    parts.append(_failures(report, cases))
    parts.append("<h2>Cases</h2>" if cases else "<p>The report has no cases.</p>")
    parts += [_case(group) for group in cases]
    parts.append(
        '<p class="muted">Bars: the worst budget of each tensor (|diff| / allowed at its worst '
        "element, over all batches); the dashed mark is 100% of the allowance, the bar ends "
        "at 150%.</p></main></body></html>"
    )
    return "\n".join(p for p in parts if p) + "\n"


def _facts(report: Mapping[str, Any]) -> str:
    run = run_facts(report)
    rows = [
        f"<dt>{label}</dt><dd>{_e(str(run[key]))}</dd>"
        for label, key in FACTS
        if run.get(key) not in (None, "", [])
    ]
    merged = first_strings(run.get("merged_from"), 64)
    if merged:
        rows.append(f"<dt>merged from</dt><dd>{_e(', '.join(merged))}</dd>")
    if not rows:
        return ""
    return f'<details class="facts"><summary>Run</summary><dl>{"".join(rows)}</dl></details>'


def _failures(report: Mapping[str, Any], cases: list[Group]) -> str:
    failing = [(g, t) for g in cases for t in g.tensors if t.status == "fail"]
    errors: dict[str, list[str]] = {}
    for g in cases:
        for t in g.tensors:
            if t.status == "error" or (t.status == "fail" and t.raw.get("error_count")):
                text = (first_strings(t.raw.get("errors"), 1) or ["error (no message)"])[0]
                errors.setdefault(text, []).append(f"{g.device} {g.dtype} {_label(g, t)}")
    if not failing and not errors:
        return ""
    blocks = [f"<h2>Failures ({len(failing)} failed, {sum(map(len, errors.values()))} errors)</h2>"]
    blocks += [_failure(report, g, t) for g, t in failing[:MAX_FAILURES]]
    if len(failing) > MAX_FAILURES:
        blocks.append(f"<p>{len(failing) - MAX_FAILURES} more failing tensors: see below.</p>")
    for text, places in list(errors.items())[:MAX_FAILURES]:
        hit = ", ".join(places[:20]) + (f" and {len(places) - 20} more" if len(places) > 20 else "")
        blocks.append(
            f'<article class="failure error"><h3><span class="badge error">error</span> '
            f"{len(places)} tensor{'s' if len(places) > 1 else ''}</h3>"
            f'<p class="muted">{_e(hit)}</p><pre>{_e(text)}</pre></article>'
        )
    return "\n".join(blocks)


def _failure(report: Mapping[str, Any], group: Group, t: Tensor) -> str:
    raw = t.raw
    found = raw.get("worst")
    worst: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    rows: list[tuple[str, str]] = [("why", _why(raw))]
    index = worst.get("worst_index")
    if isinstance(index, list):
        where = f"[{', '.join(str(i) for i in index)}]"
        batch, seed = raw.get("worst_batch"), raw.get("worst_seed")
        if batch is not None:
            where += f" in batch {batch}" + (f" (seed {seed})" if seed is not None else "")
        rows.append(("worst element", where))
    manual, reference = number(worst.get("manual_value")), number(worst.get("reference_value"))
    rows += [("manual", _num(manual)), ("reference", _num(reference))]
    if manual is not None and reference is not None:
        rows.append(("|difference|", _num(abs(manual - reference))))
    rows += [("allowed", _num(number(worst.get("allowed")))), ("budget used", percent(t.budget))]
    tolerance = tolerance_text(raw.get("tol"))
    if tolerance:
        rows.append(("tolerance", tolerance))
    hint = reproduce_hint(report, raw)
    if hint:
        rows.append(("reproduce", f"<code>{_e(hint)}</code>"))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{v if k == 'reproduce' else _e(v)}</dd>" for k, v in rows)
    return (
        f'<article class="failure"><h3><span class="badge fail">fail</span> '
        f"{_e(group.device)} {_e(group.dtype)} · <code>{_e(_label(group, t))}</code></h3>"
        f"<dl>{body}</dl></article>"
    )


def _why(raw: Mapping[str, Any]) -> str:
    failed, batches = raw.get("failed_batches"), raw.get("batches")
    systematic = raw.get("systematic")
    if failed == 0 and isinstance(systematic, Mapping) and systematic.get("verdict") == "fail":
        return (
            f"systematic error: bias {_num(number(systematic.get('bias')))} of the true "
            f"gradient beyond its bound {_num(number(systematic.get('bound')))} "
            "(every element within the tolerance)"
        )
    return (
        f"{raw.get('mismatched', '?')} of {raw.get('numel', '?')} elements beyond the "
        f"tolerance in {failed if failed is not None else '?'} of "
        f"{batches if batches is not None else '?'} batches; max abs diff "
        f"{_num(number(raw.get('max_abs')))}"
    )


def _case(group: Group) -> str:
    counts: dict[str, int] = {}
    for t in group.tensors:
        counts[t.status] = counts.get(t.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no tensors"
    notes = []
    if group.skipped:
        notes.append(f"skipped: {group.skipped}")
    if not group.complete:
        notes.append("cut short: the run stopped before this case finished")
    items = "".join(_tensor(t) for t in group.tensors)
    title = f"{_e(group.device)} · {_e(group.dtype)} · {_e(group.check)}"
    head = f'<section class="case"><h3>{title}</h3><p class="muted">{_e(summary)}'
    head += "".join(f"<br>{_e(n)}" for n in notes) + "</p>"
    tensors = f'<ol class="tensors">{items}</ol>'
    if group.skipped:
        tensors = f"<details><summary>{len(group.tensors)} tensors</summary>{tensors}</details>"
    return f"{head}{tensors}</section>"


def _tensor(t: Tensor) -> str:
    budget = t.budget
    width = 0.0 if budget is None else min(budget, BAR_MAX) / BAR_MAX * 100
    value = percent(budget)
    badge = (
        "" if t.status == "pass" else f' <span class="badge {_e(t.status)}">{_e(t.status)}</span>'
    )
    described = "no budget" if budget is None else f"{percent(budget)} of the allowance"
    if budget is not None and math.isinf(budget):
        width = 100.0
    return (
        f'<li class="t {_e(t.status)}"><span class="name">{_e(t.name)}{badge}</span>'
        f'<span class="bar" role="img" aria-label="budget {_e(described)}, {_e(t.status)}">'
        f'<span class="fill" style="width:{width:.2f}%"></span></span>'
        f'<span class="value">{_e(value)}</span></li>'
    )


def _label(group: Group, t: Tensor) -> str:
    return tensor_label(t.name, group.check)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.9g}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
