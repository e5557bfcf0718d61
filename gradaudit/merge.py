"""Merging the reports of a sharded run (`--shard K/N`) into the report of the whole run.

Each shard checks every tensor on a subset of the batches; a tensor's merged summary
folds the shards' summaries together (`TensorSummary.merge`), so the merged totals and
verdicts equal those of the unsharded run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradaudit.compare import TensorSummary
from gradaudit.errors import UsageError
from gradaudit.results import GroupResult, RunSummary

Key = tuple[str, str, str]  # (device, dtype, check)


class _Groups:
    """Groups by (device, dtype) in first-seen order, tensors merged by name."""

    def __init__(self) -> None:
        self.groups: dict[Key, GroupResult] = {}
        self.tensors: dict[Key, dict[str, TensorSummary]] = {}
        self.stopped: list[str] = []
        self.spec_sha: str | None = None
        self.shards: dict[str, str] = {}  # shard -> the report it came from

    def check_shard(self, shard: str, where: str) -> None:
        """Each shard once: merging a report twice would double its batches."""
        key = shard or where
        if key in self.shards and self.shards[key] != where:
            raise UsageError(f"{where}: shard {key} is already merged from {self.shards[key]}")
        if key in self.shards:
            raise UsageError(f"{where}: given twice")
        self.shards[key] = where

    def check_spec(self, sha: str, where: str) -> None:
        if self.spec_sha is None:
            self.spec_sha = sha
        elif sha != self.spec_sha:
            raise UsageError(f"{where}: report of a different spec (sha256 {sha[:12]}…)")

    def add(self, key: Key, device_name: str, complete: bool, tensors: list[TensorSummary]) -> None:
        group = self.groups.get(key)
        if group is None:
            group = GroupResult(
                key[0], key[1], [], device_name=device_name, done=True, check=key[2]
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
    from gradaudit.report.junit import document, group_suite, read_suites, stopped_suite
    from gradaudit.write import write_atomic

    merged = _Groups()
    metadata: dict[str, str] = {}
    spec_name = ""
    shards = []
    for path in inputs:
        suites = _read(path, read_suites)
        merged.check_shard(suites[0][0].get("shard", "") if suites else "", path)
        for props, tensors, stopped in suites:
            merged.check_spec(props.get("spec_sha256", ""), path)
            spec_name = spec_name or props.get("spec_name", "")
            metadata = metadata or props
            if stopped is not None:
                merged.stopped.append(f"{path}: {stopped}")
                continue
            key = (
                props.get("device", "?"),
                props.get("dtype", "?"),
                props.get("check", "gradients"),
            )
            merged.add(key, props.get("device_name", ""), "incomplete" not in props, tensors)
        shards.append(suites[0][0].get("shard") or path if suites else path)
    summary = merged.summary()
    drop = {"device", "device_name", "dtype", "check", "incomplete", "shard"}
    facts = {k: v for k, v in metadata.items() if k not in drop}
    facts["merged_from"] = ", ".join(shards)
    suites = [group_suite(spec_name, g, facts) for g in summary.groups]
    if summary.stopped:
        suites.append(stopped_suite(spec_name, summary.stopped, facts))
    write_atomic(out, document(suites))
    return summary


def merge_json(out: str, inputs: list[str]) -> RunSummary:
    from gradaudit.report.jsonfile import SCHEMA, dumps, group_record, totals, unfinite
    from gradaudit.write import write_atomic

    merged = _Groups()
    run: dict[str, Any] = {}
    cases: list[dict[str, Any]] = []
    for path in inputs:
        data = _read(path, lambda p: json.loads(Path(p).read_text(encoding="utf-8")))
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(f"{path}: not a gradaudit JSON report")
        merged.check_spec(data["run"].get("spec_sha256", ""), path)
        merged.check_shard(data["run"].get("shard", ""), path)
        run = run or dict(data["run"])
        cases += data["cases"]
        if data.get("stopped"):
            merged.stopped.append(f"{path}: {data['stopped']}")
        for group in data["groups"]:
            tensors = [TensorSummary.from_dict(unfinite(t)) for t in group["tensors"]]
            key = (group["device"], group["dtype"], group.get("check", "gradients"))
            merged.add(key, group.get("device_name", ""), group.get("complete", True), tensors)
    summary = merged.summary()
    order = {key: i for i, key in enumerate(merged.groups)}
    cases.sort(
        key=lambda c: (
            order.get((c["device"], c["dtype"], c.get("check", "gradients")), 0),
            c["batch"],
        )
    )
    run["shard"] = ""
    run["merged_from"] = inputs
    document = {
        "schema": SCHEMA,
        "schema_version": 1,
        "run": run,
        "cases": cases,
        "groups": [group_record(g) for g in summary.groups],
        "totals": totals(summary),
        "stopped": summary.stopped,
    }
    write_atomic(out, dumps(document) + "\n")
    return summary


def _read(path: str, reader: Callable[[str], Any]) -> Any:
    try:
        return reader(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, SyntaxError) as exc:
        raise UsageError(f"{path}: not a gradaudit report: {exc}") from None
