"""JUnit XML that Jenkins (junit and xUnit), GitLab and the GitHub reporters all read the same way.

Every file is valid against `junit-10.xsd`, the schema Jenkins' xUnit plugin validates its
input against (a copy is in tests/schemas/): no `<properties>` inside `<testcase>`, no
`disabled` attribute, no `skipped` on `<testsuites>`. Elements are built here directly with
ElementTree, every attribute and text through `gradaudit.text.clean`, so that no plugin
message, tensor name or spec path can make the file not well-formed. Each failure has a
one-line `message` (Jenkins' title) and a full body (what GitLab shows); times have 3
decimals.

`gradaudit merge` needs each tensor's summary (counts, maxima, the worst element). It is a
suite-level property named `gradaudit.summary:<testcase name>` holding the summary as JSON.
Properties are the schema's place for machine-readable facts and every consumer keeps them
out of sight; a `<system-out>` blob would instead be shown to people as the test's output
by Jenkins and GitLab, and Jenkins trims long output of passing tests.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gradaudit.compare import TensorSummary
from gradaudit.report.base import EndOfRunReporter
from gradaudit.report.describe import detail, verdict_line
from gradaudit.report.elements import (
    STOPPED,
    clean,
    document,
    stopped_suite,
    testcase,
    testsuite,
)
from gradaudit.report.jsonfile import summary_record, tensor_seconds
from gradaudit.report.jsonvalues import dumps, unfinite
from gradaudit.results import GroupResult, RunSummary
from gradaudit.write import write_atomic

SUMMARY_PREFIX = "gradaudit.summary:"


def suite_name(spec_name: str, device: str, dtype: str, check: str = "gradients") -> str:
    extra = "" if check == "gradients" else f",{check}"
    return f"{spec_name}[{device},{dtype}{extra}]"


def classname(spec_name: str, device: str, dtype: str, check: str = "gradients") -> str:
    extra = "" if check == "gradients" else f".{check}"
    return f"gradaudit.{spec_name}.{device}.{dtype}{extra}"


def _tensor_case(cls: str, s: TensorSummary, seconds: float, rerun: str = "") -> ET.Element:
    """One testcase with at most one outcome element: a tensor that failed on some batches
    and errored on others is a failure whose message and body name the errors too."""
    line = f"{s.tensor}: {verdict_line(s)}"
    body = detail(s, rerun)
    if s.status == "fail":
        return testcase(s.tensor, cls, seconds, failure=(line, body))
    if s.status == "error":
        return testcase(s.tensor, cls, seconds, error=(line, body))
    if s.status == "skipped":
        reason = s.skipped or "not run"
        return testcase(s.tensor, cls, seconds, skipped=(reason, reason))
    return testcase(s.tensor, cls, seconds)


def group_suite(spec_name: str, group: GroupResult, metadata: Mapping[str, str]) -> ET.Element:
    """One <testsuite> for a (device, dtype, check) group, with run facts as properties."""
    cls = classname(spec_name, group.device, group.dtype, group.check)
    properties = {
        **metadata,
        "device": group.device,
        "device_name": group.device_name or group.device,
        "dtype": group.dtype,
        "check": group.check,
        "rerun": group.rerun,
    }
    if not group.done:
        properties["incomplete"] = "the run stopped while this group was running"
    seconds = tensor_seconds(group)
    for s in group.tensors:
        properties[SUMMARY_PREFIX + clean(s.tensor, None)] = dumps(summary_record(s))
    cases = [
        _tensor_case(cls, s, t, group.rerun) for s, t in zip(group.tensors, seconds, strict=True)
    ]
    name = suite_name(spec_name, group.device, group.dtype, group.check)
    return testsuite(name, cases, properties, max(group.seconds, sum(seconds)))


def run_document(spec_name: str, summary: RunSummary, metadata: Mapping[str, str]) -> str:
    """The whole report of a run (or of merged shards)."""
    suites = [group_suite(spec_name, g, metadata) for g in summary.groups]
    if summary.stopped:
        suites.append(stopped_suite(spec_name, summary.stopped, metadata))
    return document(suites)


class JUnitReporter(EndOfRunReporter):
    """Writes the JUnit file at the end of the run, also when the run stops early."""

    def __init__(self, path: str) -> None:
        self.path = path

    def checkpoint(self, summary: RunSummary) -> None:
        self.finish(summary)

    def finish(self, summary: RunSummary) -> None:
        assert self.info is not None
        metadata = {k: v for k, v in self.info.metadata().items() if k != "started"}
        write_atomic(self.path, run_document(self.info.loaded.spec.name, summary, metadata))


@dataclass
class ReadSuite:
    """One <testsuite> of a gradaudit JUnit file, read back for `gradaudit merge`."""

    properties: dict[str, str]  # the run and group facts (summaries taken out)
    tensors: list[TensorSummary] = field(default_factory=list)
    stopped: str | None = None  # the reason, for the suite that says the run stopped


def read_suites(path: str | Path) -> list[ReadSuite]:
    """Parse a gradaudit JUnit file back: facts, tensor summaries (with their times), stops."""
    root = ET.parse(path).getroot()
    result = []
    for suite in root.iter("testsuite"):
        facts, summaries = {}, {}
        for prop in suite.findall("./properties/property"):
            name, value = prop.get("name", ""), prop.get("value", "")
            if name.startswith(SUMMARY_PREFIX):
                summaries[name[len(SUMMARY_PREFIX) :]] = value
            else:
                facts[name] = value
        read = ReadSuite(facts, stopped=facts.pop(STOPPED, None))
        times = {case.get("name", ""): float(case.get("time", 0) or 0) for case in suite}
        for name, value in summaries.items():
            data = unfinite(json.loads(value))
            if not isinstance(data, dict):
                raise ValueError(f"summary of {name} is not an object")
            data["seconds"] = times.get(name, 0.0)
            read.tensors.append(TensorSummary.from_dict(data))
        result.append(read)
    return result
