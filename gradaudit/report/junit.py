"""JUnit XML that Jenkins, GitLab and the GitHub reporters all read the same way.

junit-xml builds the elements; this adapter cleans text first (ANSI colours and
XML-illegal characters; junit-xml strips those only after serialising), gives every
failure a short `message` (Jenkins) and a full body (GitLab), writes times with 3
decimals, and stores each tensor's summary as a testcase property so that shard
reports can be merged exactly (`gradaudit merge`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import junit_xml

from gradaudit.compare import TensorSummary
from gradaudit.report.base import EndOfRunReporter
from gradaudit.report.describe import detail, verdict_line
from gradaudit.report.jsonfile import dumps, unfinite
from gradaudit.results import GroupResult, RunSummary
from gradaudit.text import clean as clean_text
from gradaudit.write import write_atomic

MAX_BODY = 64_000
MAX_MESSAGE = 300
SUMMARY_PROPERTY = "gradaudit.summary"


def clean(text: str, limit: int = MAX_BODY) -> str:
    """Report text: no ANSI escapes, no XML-illegal characters, capped."""
    return clean_text(text, limit)


def suite_name(spec_name: str, device: str, dtype: str, check: str = "gradients") -> str:
    extra = "" if check == "gradients" else f",{check}"
    return f"{spec_name}[{device},{dtype}{extra}]"


def classname(spec_name: str, device: str, dtype: str, check: str = "gradients") -> str:
    extra = "" if check == "gradients" else f".{check}"
    return f"gradaudit.{spec_name}.{device}.{dtype}{extra}"


def _testcase(cls: str, s: TensorSummary) -> junit_xml.TestCase:
    case = junit_xml.TestCase(s.tensor, classname=cls, elapsed_sec=s.seconds)
    status = s.status
    message = clean(f"{s.tensor}: {verdict_line(s)}", MAX_MESSAGE).replace("\n", " ")
    if status == "fail":
        case.add_failure_info(message=message, output=clean(detail(s)))
    elif status == "error":
        case.add_error_info(message=message, output=clean(detail(s)))
    elif status == "skipped":
        reason = clean(s.skipped or "not run", MAX_MESSAGE)
        case.add_skipped_info(message=reason, output=reason)
    return case


def group_suite(spec_name: str, group: GroupResult, metadata: dict[str, str]) -> ET.Element:
    """One <testsuite> for a (device, dtype) group, with run facts as properties."""
    cls = classname(spec_name, group.device, group.dtype, group.check)
    properties = {
        **metadata,
        "device": group.device,
        "device_name": group.device_name or group.device,
        "dtype": group.dtype,
        "check": group.check,
    }
    if not group.done:
        properties["incomplete"] = "the run stopped while this group was running"
    suite = junit_xml.TestSuite(
        suite_name(spec_name, group.device, group.dtype, group.check),
        [_testcase(cls, s) for s in group.tensors],
        properties={k: clean(v, MAX_MESSAGE) for k, v in properties.items() if v},
    )
    element: ET.Element = suite.build_xml_doc(encoding="utf-8")
    for case_element, s in zip(element.iter("testcase"), group.tensors, strict=True):
        props = ET.Element("properties")
        summary = dumps(_without_time(s.to_dict()))
        ET.SubElement(props, "property", name=SUMMARY_PROPERTY, value=summary)
        case_element.insert(0, props)
    return element


def _without_time(summary: dict[str, object]) -> dict[str, object]:
    """Two runs of a spec give the same XML apart from time attributes (seconds live there)."""
    return {k: v for k, v in summary.items() if k != "seconds"}


def stopped_suite(spec_name: str, reason: str, metadata: dict[str, str]) -> ET.Element:
    """An error case saying the run stopped early, so the report cannot look complete."""
    case = junit_xml.TestCase("run", classname=f"gradaudit.{spec_name}.run", elapsed_sec=0.0)
    case.add_error_info(message=clean(reason, MAX_MESSAGE), output=clean(reason))
    suite = junit_xml.TestSuite(
        f"{spec_name}[run]", [case], properties={k: v for k, v in metadata.items() if v}
    )
    element: ET.Element = suite.build_xml_doc(encoding="utf-8")
    return element


def document(suites: Iterable[ET.Element]) -> str:
    """<testsuites> with totals; every time attribute with 3 decimals."""
    root = ET.Element("testsuites")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped", "disabled"), 0)
    seconds = 0.0
    for suite in suites:
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, 0))
        seconds += float(suite.get("time", 0))
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{seconds:.3f}")
    for element in root.iter():
        if element.tag in ("testsuite", "testcase") or "time" in element.attrib:
            element.set("time", f"{float(element.get('time', 0) or 0):.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


class JUnitReporter(EndOfRunReporter):
    """Writes the JUnit file at the end of the run, also when the run stops early."""

    def __init__(self, path: str) -> None:
        self.path = path

    def checkpoint(self, summary: RunSummary) -> None:
        self.finish(summary)

    def finish(self, summary: RunSummary) -> None:
        assert self.info is not None
        name = self.info.loaded.spec.name
        metadata = {k: v for k, v in self.info.metadata().items() if k != "started"}
        suites = [group_suite(name, g, metadata) for g in summary.groups]
        if summary.stopped:
            suites.append(stopped_suite(name, summary.stopped, metadata))
        write_atomic(self.path, document(suites))


def read_suites(path: str | Path) -> list[tuple[dict[str, str], list[TensorSummary], str | None]]:
    """Parse a gradaudit JUnit file back: (suite properties, tensor summaries, stop reason)."""
    root = ET.parse(path).getroot()
    result = []
    for suite in root.iter("testsuite"):
        props = {
            p.get("name", ""): p.get("value", "") for p in suite.findall("./properties/property")
        }
        tensors, stopped = [], None
        for case in suite.iter("testcase"):
            raw = case.find(f"./properties/property[@name='{SUMMARY_PROPERTY}']")
            if raw is not None:
                data = unfinite(json.loads(raw.get("value", "{}")))
                assert isinstance(data, dict)
                data["seconds"] = float(case.get("time", 0) or 0)
                tensors.append(TensorSummary.from_dict(data))
            else:
                error = case.find("error")
                stopped = error.get("message", "stopped") if error is not None else "stopped"
        result.append((props, tensors, stopped))
    return result
