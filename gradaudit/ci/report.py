"""Reading a JSON report (docs/json-report.md) defensively, for the CI add-ons.

A report may come from an older or newer gradaudit, a stopped run, a shard or a merge, or be
edited by hand: every field past the few that identify a report may be null or missing. The
functions here turn what is there into plain values (`None` where a number is unknown) and
refuse, with one line naming the file, only what is not a gradaudit report at all.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradaudit.tolerance import Tol

SCHEMA = "gradaudit-run"
SET_SCHEMA = "gradaudit-run-set"  # gradaudit.report.combine: the runs of several specs
SCHEMA_VERSIONS = (1,)  # the versions this module reads
RED = frozenset({"fail", "error"})
STATUSES = frozenset({"pass", "fail", "error", "skipped"})


class ReportError(ValueError):
    """A file that is not a readable gradaudit JSON report; the message is one line that
    names the file (the CLI maps it to exit 2)."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of one case: its verdict and its worst budget (None: nothing measured)."""

    name: str
    status: str  # pass | fail | error | skipped | unknown
    budget: float | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class Group:
    """One (device, dtype, check) case of a report, with its tensors in report order."""

    device: str
    dtype: str
    check: str
    skipped: str | None
    complete: bool
    tensors: tuple[Tensor, ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.device, self.dtype, self.check)

    @property
    def title(self) -> str:
        return f"{self.device} {self.dtype} {self.check}"


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a JSON report; ReportError (one line, naming the file) if it is not one."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ReportError(f"{name}: is a directory, not a JSON report") from None
    except UnicodeDecodeError:
        raise ReportError(f"{name}: not UTF-8 text, not a JSON report") from None
    except OSError as exc:
        raise ReportError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "empty file" if not text.strip() else f"{exc.msg} at line {exc.lineno}"
        raise ReportError(f"{name}: not JSON ({what})") from None
    return check_report(value, name)


def check_report(value: object, source: str = "report") -> dict[str, Any]:
    """`value` if it is a gradaudit report this module can read, else ReportError."""
    if not isinstance(value, dict):
        raise ReportError(
            f"{source}: not a gradaudit JSON report (a {_kind(value)}, not an object)"
        )
    schema = value.get("schema")
    if schema == SET_SCHEMA:
        return flatten_set(value, source)
    if schema != SCHEMA:
        raise ReportError(f"{source}: not a gradaudit JSON report (schema {schema!r})")
    version = value.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ReportError(f"{source}: schema_version {version!r} is not a number")
    if version not in SCHEMA_VERSIONS:
        readable = ", ".join(str(v) for v in SCHEMA_VERSIONS)
        raise ReportError(
            f"{source}: schema_version {version} is not one this gradaudit reads ({readable})"
        )
    groups_ = value.get("groups")
    if not isinstance(groups_, list):
        raise ReportError(f"{source}: 'groups' is a {_kind(groups_)}, not a list")
    for i, group in enumerate(groups_):
        if not isinstance(group, dict):
            raise ReportError(f"{source}: groups[{i}] is a {_kind(group)}, not an object")
        for field in ("device", "dtype", "check"):
            if not isinstance(group.get(field), str):
                raise ReportError(f"{source}: groups[{i}].{field} is missing or not a string")
        tensors = group.get("tensors", [])
        if not isinstance(tensors, list):
            raise ReportError(f"{source}: groups[{i}].tensors is a {_kind(tensors)}, not a list")
        for j, tensor in enumerate(tensors):
            if not isinstance(tensor, dict) or not isinstance(tensor.get("tensor"), str):
                raise ReportError(f"{source}: groups[{i}].tensors[{j}] has no tensor name")
    return value


def flatten_set(value: dict[str, Any], source: str) -> dict[str, Any]:
    """A run of several specs (gradaudit.report.combine) read as one report whose cases are
    each spec's, their device named with the spec (`charrnn/cpu`): what `diff`, the HTML page
    and the summary read. Its run facts are those all the specs share."""
    runs = value.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ReportError(f"{source}: a run of several specs without 'runs'")
    checked = [check_report(run, f"{source}: runs[{i}]") for i, run in enumerate(runs)]
    names = [spec_name(run) for run in checked]
    facts = [run_facts(run) for run in checked]
    shared = {k: v for k, v in facts[0].items() if all(f.get(k) == v for f in facts[1:])}
    shared["spec_name"] = f"{len(runs)} specs ({', '.join(names)})"
    flat = [
        {**group, "device": f"{name}/{group['device']}"}
        for name, run in zip(names, checked, strict=True)
        for group in run["groups"]
    ]
    stops = [
        f"{n}: {r['stopped']}" for n, r in zip(names, checked, strict=True) if r.get("stopped")
    ]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSIONS[-1],
        "run": shared,
        "cases": [],
        "groups": flat,
        "totals": value.get("totals"),
        "stopped": "; ".join(stops) or None,
    }


def groups(report: Mapping[str, Any]) -> list[Group]:
    """The report's cases, in report order (the report must have passed `check_report`)."""
    out = []
    for group in report.get("groups") or []:
        out.append(
            Group(
                device=group["device"],
                dtype=group["dtype"],
                check=group["check"],
                skipped=text_or_none(group.get("skipped")),
                complete=group.get("complete") is not False,
                tensors=tuple(tensor(t) for t in group.get("tensors") or []),
            )
        )
    return out


def tensor(raw: Mapping[str, Any]) -> Tensor:
    return Tensor(name=raw["tensor"], status=status_of(raw), budget=budget_of(raw), raw=raw)


def status_of(raw: Mapping[str, Any]) -> str:
    """The tensor's status; inferred from its other fields when absent or unknown."""
    status = raw.get("status")
    if status in STATUSES:
        return str(status)
    if raw.get("skipped"):
        return "skipped"
    worst = raw.get("worst")
    if isinstance(worst, Mapping) and worst.get("passed") is False:
        return "fail"
    if raw.get("errors") or number(raw.get("error_count")):
        return "error"
    if isinstance(worst, Mapping) and worst.get("passed") is True:
        return "pass"
    return "unknown"


def budget_of(raw: Mapping[str, Any]) -> float | None:
    """`worst.budget` as a float: None when null, missing, NaN or not a number; the report's
    string "inf" is infinity (an element whose allowance was zero, or a NaN/Inf mismatch)."""
    worst = raw.get("worst")
    if not isinstance(worst, Mapping):
        return None
    value = number(worst.get("budget"))
    return None if value is None or value < 0 else value


def number(value: object) -> float | None:
    """A JSON number (or the report's "inf"/"-inf" strings) as a float; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        result = float(value)
    elif value in ("inf", "-inf"):
        result = float(str(value))
    else:
        return None
    return None if math.isnan(result) else result


def text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def run_facts(report: Mapping[str, Any]) -> dict[str, Any]:
    run = report.get("run")
    return dict(run) if isinstance(run, Mapping) else {}


def spec_name(report: Mapping[str, Any]) -> str:
    run = run_facts(report)
    for field in ("spec_name", "spec"):
        name = text_or_none(run.get(field))
        if name:
            return name
    return "(unnamed spec)"


def totals(report: Mapping[str, Any]) -> dict[str, int]:
    """passed, failed, errors, skipped: the report's own counts where it has them (a stopped
    run counts one more error), else counted from its tensors."""
    given = report.get("totals")
    keys = ("passed", "failed", "errors", "skipped")
    if isinstance(given, Mapping) and all(isinstance(given.get(k), int) for k in keys):
        return {k: int(given[k]) for k in keys}
    counts = dict.fromkeys(keys, 0)
    names = {"pass": "passed", "fail": "failed", "error": "errors", "skipped": "skipped"}
    for group in groups(report):
        for t in group.tensors:
            if t.status in names:
                counts[names[t.status]] += 1
    if text_or_none(report.get("stopped")):
        counts["errors"] += 1
    return counts


def verdict(report: Mapping[str, Any]) -> str:
    """ "pass", "fail", or "empty" (nothing compared: every case skipped), like the run's exit."""
    counts = totals(report)
    if counts["failed"] or counts["errors"] or text_or_none(report.get("stopped")):
        return "fail"
    return "pass" if counts["passed"] else "empty"


def tensor_label(name: str, check: str) -> str:
    """The console's label: the tensor alone for the gradient check, else `name [check]`."""
    return name if check in ("gradients", "") else f"{name} [{check.replace('_', ' ')}]"


def percent(budget: float | None) -> str:
    """A budget as the console shows it: 3 significant digits of percent; '-' when unknown."""
    if budget is None:
        return "-"
    if math.isinf(budget):
        return "inf"
    value = 100 * budget
    return "<0.01%" if 0 < value < 0.01 else f"{value:.3g}%"


def reproduce_hint(report: Mapping[str, Any], raw: Mapping[str, Any]) -> str | None:
    """How to rerun the tensor's worst batch: the report's own `reproduce` field when it has
    one, else the JUnit report's hint for a model spec (an op spec's seeds are per case)."""
    own = text_or_none(raw.get("reproduce"))
    if own:
        return own
    seed = raw.get("worst_seed")
    if (
        isinstance(seed, int)
        and not isinstance(seed, bool)
        and run_facts(report).get("kind") != "op"
    ):
        return f"batches: {{seed: {seed}, count: 1}}"
    return None


def tolerance_text(tol: object) -> str | None:
    """The tolerance as the console and JUnit describe it (gradaudit.tolerance.Tol.describe),
    from the report's `tol` record; None when the record is missing."""
    if not isinstance(tol, Mapping) or not isinstance(tol.get("mode"), str):
        return None
    known = Tol.from_record(tol)
    return str(tol["mode"]) if known is None else known.describe()


def printable(text: str) -> str:
    """One line of visible text for a console: control characters as escapes (`\\x0c`)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def md_cell(text: str, limit: int | None = None) -> str:
    """One Markdown table cell: one line, no cell end, no code-span end, no HTML."""
    text = printable(" ".join(text.split()))
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    for old, new in (("|", "\\|"), ("`", "'"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(old, new)
    return text


def first_strings(value: object, limit: int) -> list[str]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [v for v in value if isinstance(v, str)][:limit]


def _kind(value: object) -> str:
    return {dict: "object", list: "list", str: "string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
