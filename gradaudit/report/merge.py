"""Merging the reports of a sharded run (`--shard K/N`) into the report of the whole run.

Each shard checks every tensor on a subset of the batches; a tensor's merged summary
folds the shards' summaries together (`TensorSummary.merge`), so the merged totals and
verdicts equal those of the unsharded run. That holds only for a complete set: merge
takes exactly shards 1..N of one N, of the same spec (sha256) and the same plan (groups
and tensors); anything else is a usage error (exit 2) that names what is missing,
doubled or different. A missing shard would otherwise hide its batches' failures.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradaudit.compare import TensorSummary
from gradaudit.errors import UsageError
from gradaudit.results import GroupResult, RunSummary

if TYPE_CHECKING:
    from gradaudit.report.junit import ReadSuite

Key = tuple[str, str, str]  # (device, dtype, check)
Plan = dict[Key, tuple[str, ...]]  # the groups of a run and the tensors of each


@dataclass
class Report:
    """What merge checks about one input before folding it in."""

    path: str
    sha256: str
    shard: str  # "K/N", or "" for an unsharded run
    plan: Plan = field(default_factory=dict)
    plan_sha256: str = ""  # when the run recorded its plan's fingerprint
    stopped: bool = False


def check_set(reports: list[Report]) -> None:
    """Exactly shards 1..N of one N, one spec, one plan; else a UsageError saying what."""
    if not reports:
        raise UsageError("merge: no reports given")
    first = reports[0]
    for report in reports:
        if not report.sha256:
            raise UsageError(f"{report.path}: no spec_sha256: not a gradaudit report")
        if report.sha256 != first.sha256:
            raise UsageError(
                f"{report.path}: report of a different spec (sha256 {report.sha256[:12]}…) "
                f"than {first.path} ({first.sha256[:12]}…)"
            )
    shards: dict[int, Report] = {}
    total = None
    for report in reports:
        match = re.fullmatch(r"(\d+)/(\d+)(@\d+)?", report.shard)
        if not match:
            raise UsageError(
                f"{report.path}: the report of an unsharded run; merge takes the reports of "
                "--shard 1/N .. N/N"
            )
        index, count = int(match[1]), int(match[2])
        if total is None:
            total, offset = count, match[3]
        elif count != total or match[3] != offset:
            raise UsageError(
                f"{report.path}: shard {report.shard}, but {first.path} is shard {first.shard}: "
                "the shards of different splits overlap and leave batches out"
            )
        if index in shards:
            raise UsageError(
                f"{report.path}: shard {report.shard} is already given as {shards[index].path}"
            )
        shards[index] = report
    assert total is not None
    missing = [f"{k}/{total}" for k in range(1, total + 1) if k not in shards]
    if missing:
        raise UsageError(
            f"merge: shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing "
            f"(given: {', '.join(f'{k}/{total}' for k in sorted(shards))}): its batches would "
            "go unchecked"
        )
    _check_plans(reports)


def _check_plans(reports: list[Report]) -> None:
    """Same groups, same tensors. A stopped shard may lack the groups it never reached."""
    complete = [r for r in reports if not r.stopped]
    model = complete[0] if complete else reports[0]
    for report in reports:
        if report.plan_sha256 and model.plan_sha256 and report.plan_sha256 != model.plan_sha256:
            raise UsageError(f"{report.path}: a different plan than {model.path}")
        keys = set(report.plan)
        if not report.stopped and keys != set(model.plan):
            extra = ", ".join(_name(k) for k in report.plan if k not in model.plan)
            lacking = ", ".join(_name(k) for k in model.plan if k not in keys)
            raise UsageError(
                f"{report.path}: a different plan than {model.path} (groups only here: "
                f"{extra or 'none'}; groups missing here: {lacking or 'none'})"
            )
        for key in (k for k in model.plan if k in keys):
            mine, theirs = report.plan[key], model.plan[key]
            if mine != theirs:
                only = [t for t in mine if t not in theirs]
                absent = [t for t in theirs if t not in mine]
                raise UsageError(
                    f"{report.path}: {_name(key)} audits other tensors than in {model.path} "
                    f"(only here: {only or 'none'}; missing here: {absent or 'none'})"
                )


def _name(key: Key) -> str:
    return "/".join(key if key[2] != "gradients" else key[:2])


class _Groups:
    """Groups by (device, dtype, check) in first-seen order, tensors merged by name."""

    def __init__(self) -> None:
        self.groups: dict[Key, GroupResult] = {}
        self.tensors: dict[Key, dict[str, TensorSummary]] = {}
        self.stopped: list[str] = []

    def add(
        self,
        key: Key,
        device_name: str,
        complete: bool,
        tensors: list[TensorSummary],
        rerun: str = "",
    ) -> None:
        group = self.groups.get(key)
        if group is None:
            whole = re.sub(r" --shard \S+", "", rerun)  # the merge is every shard's
            group = GroupResult(
                key[0], key[1], [], device_name=device_name, done=True, check=key[2], rerun=whole
            )
            self.groups[key] = group
            self.tensors[key] = {}
        group.done &= complete
        group.device_name = group.device_name or device_name
        known = self.tensors[key]
        for tensor in tensors:
            if tensor.tensor in known:
                known[tensor.tensor].merge(tensor)
            else:
                known[tensor.tensor] = tensor
                group.tensors.append(tensor)

    def summary(self) -> RunSummary:
        summary = RunSummary()
        for group in self.groups.values():
            group.seconds = sum(t.seconds for t in group.tensors)
            summary.add(group)
        summary.stopped = "; ".join(self.stopped) or None
        return summary


def merge_junit(out: str, inputs: list[str]) -> RunSummary:
    """Merge JUnit reports: of one spec, or of a run of several (each spec's suites merged
    with the same spec's in the other inputs)."""
    from gradaudit.report.elements import document
    from gradaudit.report.junit import read_suites
    from gradaudit.write import write_atomic

    read = {path: _read(path, read_suites) for path in inputs}
    for path, suites in read.items():
        if not suites or not suites[0].properties.get("spec_sha256"):
            raise UsageError(f"{path}: no spec_sha256: not a gradaudit report")
    elements: list[ET.Element] = []
    summaries = []
    specs = {p: list(dict.fromkeys(_spec_of(s.properties) for s in v)) for p, v in read.items()}
    if all(len(found) == 1 for found in specs.values()):  # one spec each: check_set compares
        parts = [read]
    else:
        parts = [
            {p: [s for s in v if _spec_of(s.properties) == spec] for p, v in read.items()}
            for spec in _same_specs(specs)
        ]
    for part in parts:
        found, summary = _merge_junit_spec(part)
        elements += found
        summaries.append(summary)
    write_atomic(out, document(elements))
    return _total(summaries)


def _spec_of(facts: dict[str, Any]) -> tuple[str, str]:
    return (str(facts.get("spec_sha256", "")), str(facts.get("spec_name", "")))


def _same_specs(specs: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """The specs of the inputs, in the first one's order; every input must have the same."""
    first, *_ = specs
    order = specs[first]
    for path, mine in specs.items():
        if set(mine) != set(order):
            only = [f"{n} ({s[:12]}…)" for s, n in mine if (s, n) not in order]
            lacking = [f"{n} ({s[:12]}…)" for s, n in order if (s, n) not in mine]
            raise UsageError(
                f"{path}: reports other specs than {first} (only here: {only or 'none'}; "
                f"missing here: {lacking or 'none'}): merge takes the shards of one run"
            )
    return order


def _total(summaries: list[RunSummary]) -> RunSummary:
    if len(summaries) == 1:
        return summaries[0]
    total = RunSummary()
    for summary in summaries:
        for group in summary.groups:
            total.add(group)
    stops = [s.stopped for s in summaries if s.stopped]
    total.stopped = "; ".join(stops) or None
    return total


def _merge_junit_spec(read: dict[str, list[ReadSuite]]) -> tuple[list[ET.Element], RunSummary]:
    from gradaudit.report.elements import stopped_suite
    from gradaudit.report.junit import group_suite

    reports = []
    for path, suites in read.items():
        facts = suites[0].properties if suites else {}
        plan = {_key(s.properties): tuple(t.tensor for t in s.tensors) for s in suites}
        stops = [s for s in suites if s.stopped is not None]
        for stop in stops:
            plan.pop(_key(stop.properties), None)
        reports.append(
            Report(
                path,
                facts.get("spec_sha256", ""),
                facts.get("shard", ""),
                plan,
                facts.get("plan_sha256", ""),
                bool(stops),
            )
        )
    check_set(reports)

    merged = _Groups()
    metadata: dict[str, str] = {}
    for path, suites in read.items():
        for suite in suites:
            metadata = metadata or suite.properties
            if suite.stopped is not None:
                merged.stopped.append(f"{path}: {suite.stopped}")
                continue
            complete = "incomplete" not in suite.properties
            merged.add(
                _key(suite.properties),
                suite.properties.get("device_name", ""),
                complete,
                suite.tensors,
                suite.properties.get("rerun", ""),
            )
    summary = merged.summary()
    drop = {"device", "device_name", "dtype", "check", "incomplete", "shard", "rerun"}
    facts = {k: v for k, v in metadata.items() if k not in drop}
    facts["merged_from"] = ", ".join(f"{r.shard} ({r.path})" for r in reports)
    name = metadata.get("spec_name", "")
    elements = [group_suite(name, g, facts) for g in summary.groups]
    if summary.stopped:
        elements.append(stopped_suite(name, summary.stopped, facts))
    return elements, summary


def _key(props: dict[str, str]) -> Key:
    return (props.get("device", "?"), props.get("dtype", "?"), props.get("check", "gradients"))


def merge_json(out: str, inputs: list[str]) -> RunSummary:
    """Merge JSON reports: of one spec, or of a run of several (`gradaudit-run-set`
    documents, merged run by run into one)."""
    from gradaudit.report.combine import is_set, set_document
    from gradaudit.report.jsonvalues import dumps
    from gradaudit.write import write_atomic

    read: dict[str, dict[str, Any]] = {path: _read(path, _load_json) for path in inputs}
    sets = [is_set(data) for data in read.values()]
    if any(sets) and not all(sets):
        raise UsageError(
            f"{inputs[sets.index(False)]}: the report of one spec, but {inputs[sets.index(True)]} "
            "is the report of several: merge takes the shards of one run"
        )
    if not all(sets):
        document, summary = _merge_json_spec(inputs, list(read.values()))
        write_atomic(out, dumps(document) + "\n")
        return summary
    runs = {p: {_spec_of(r["run"]): r for r in d["runs"]} for p, d in read.items()}
    documents, summaries = [], []
    for spec in _same_specs({p: list(dict.fromkeys(r)) for p, r in runs.items()}):
        document, summary = _merge_json_spec(inputs, [r[spec] for r in runs.values()])
        documents.append(document)
        summaries.append(summary)
    total = _total(summaries)
    write_atomic(out, dumps(set_document(documents, 0 if total.ok else 1)) + "\n")
    return total


def _load_json(path: str) -> dict[str, Any]:
    from gradaudit.report.combine import is_set

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for run in data["runs"] if is_set(data) else [data]:
        _json_report(path, run)  # a gradaudit-run document
    return data


def _merge_json_spec(
    inputs: list[str], read: list[dict[str, Any]]
) -> tuple[dict[str, Any], RunSummary]:
    from gradaudit.report.jsonfile import group_record, totals
    from gradaudit.report.jsonvalues import SCHEMA, unfinite

    reports = [_json_report(path, data) for path, data in zip(inputs, read, strict=True)]
    check_set(reports)

    merged = _Groups()
    run_facts: dict[str, Any] = {}
    cases: list[dict[str, Any]] = []
    for path, data in zip(inputs, read, strict=True):
        run_facts = run_facts or dict(data["run"])
        cases += data["cases"]
        if data.get("stopped"):
            merged.stopped.append(f"{path}: {data['stopped']}")
        for group in data["groups"]:
            tensors = [TensorSummary.from_dict(unfinite(t)) for t in group["tensors"]]
            key = (group["device"], group["dtype"], group.get("check", "gradients"))
            merged.add(
                key,
                group.get("device_name", ""),
                group.get("complete", True),
                tensors,
                str(group.get("rerun", "")),
            )
    summary = merged.summary()
    order = {key: i for i, key in enumerate(merged.groups)}
    devices = {key[0]: i for i, key in reversed(list(enumerate(merged.groups)))}
    cases.sort(  # a run's order: device by device, batch by batch, cases in plan order
        key=lambda c: (
            devices.get(c["device"], 0),
            c["batch"],
            order.get((c["device"], c["dtype"], c.get("check", "gradients")), 0),
        )
    )
    run_facts["shard"] = ""
    run_facts["merged_from"] = inputs
    document = {
        "schema": SCHEMA,
        "schema_version": 1,
        "run": run_facts,
        "cases": cases,
        "groups": [group_record(g) for g in summary.groups],
        "totals": totals(summary),
        "stopped": summary.stopped,
    }
    return document, summary


def _json_report(path: str, data: dict[str, Any]) -> Report:
    """What merge checks of one `gradaudit-run` document (KeyError: not one)."""
    from gradaudit.report.jsonvalues import SCHEMA

    if data.get("schema") != SCHEMA:
        raise ValueError("no gradaudit-run schema")
    run = data["run"]
    plan = {
        (g["device"], g["dtype"], g.get("check", "gradients")): tuple(
            t["tensor"] for t in g["tensors"]
        )
        for g in data["groups"]
    }
    stopped = bool(data.get("stopped"))
    facts = (run.get("spec_sha256", ""), run.get("shard", ""))
    return Report(path, *facts, plan, run.get("plan_sha256", ""), stopped)


def _read(path: str, reader: Callable[[str], Any]) -> Any:
    try:
        return reader(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, SyntaxError) as exc:
        raise UsageError(f"{path}: not a gradaudit report: {exc}") from None
