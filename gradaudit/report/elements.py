"""JUnit XML elements, built with ElementTree and nothing heavier (the "did not finish"
placeholder is written from them before anything else is imported).

Every file is valid against `junit-10.xsd`, the schema Jenkins' xUnit plugin validates its
input against: no `<properties>` inside `<testcase>`, no `disabled` attribute, no `skipped`
on `<testsuites>`, at most one outcome element per testcase. Every attribute and text goes
through `gradaudit.text.clean`, so that no plugin message, tensor name or spec path can make
the file not well-formed.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

from gradaudit.text import clean as clean_text

MAX_BODY = 64_000
MAX_MESSAGE = 300
STOPPED = "stopped"  # the property of the suite that says the run stopped early
OUTCOMES = ("failure", "error", "skipped")
Outcome = tuple[str, str]  # (one-line message, body)


def clean(text: str, limit: int | None = MAX_BODY) -> str:
    """Report text: see gradaudit.text.clean; bodies are capped at 64 KB by default."""
    return clean_text(text, limit)


def message(text: str) -> str:
    """A one-line, capped `message` attribute."""
    return " ".join(clean(text, MAX_MESSAGE).split("\n"))


def _seconds(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) and value > 0 else "0.000"


def element(
    tag: str, attrs: Mapping[str, str] | None = None, text: str | None = None
) -> ET.Element:
    """Every element of a gradaudit JUnit file is made here: attributes and text cleaned."""
    made = ET.Element(tag, {k: clean(v, None) for k, v in (attrs or {}).items()})
    if text:
        made.text = clean(text)
    return made


def testcase(
    name: str,
    classname: str,
    seconds: float,
    *,
    failure: Outcome | None = None,
    error: Outcome | None = None,
    skipped: Outcome | None = None,
    stdout: str | None = None,
) -> ET.Element:
    """A <testcase> with at most one outcome element (Jenkins' junit schema allows one)."""
    given = [o for o in (failure, error, skipped) if o is not None]
    if len(given) > 1:
        raise ValueError("a testcase has one outcome: failure, error or skipped")
    case = element("testcase", {"name": name, "classname": classname, "time": _seconds(seconds)})
    for tag, outcome in zip(OUTCOMES, (failure, error, skipped), strict=True):
        if outcome is not None:
            case.append(element(tag, {"message": message(outcome[0]), "type": tag}, outcome[1]))
    if stdout:
        case.append(element("system-out", text=stdout))
    return case


def testsuite(
    name: str,
    cases: list[ET.Element],
    properties: Mapping[str, str],
    seconds: float | None = None,
) -> ET.Element:
    """A <testsuite> whose counts are read off its cases."""
    counts = {tag: sum(c.find(tag) is not None for c in cases) for tag in OUTCOMES}
    total = sum(float(c.get("time", 0)) for c in cases) if seconds is None else seconds
    suite = element(
        "testsuite",
        {
            "name": name,
            "tests": str(len(cases)),
            "failures": str(counts["failure"]),
            "errors": str(counts["error"]),
            "skipped": str(counts["skipped"]),
            "time": _seconds(total),
        },
    )
    props = element("properties")
    for key, value in properties.items():
        if value:
            props.append(element("property", {"name": key, "value": value}))
    if len(props):
        suite.append(props)
    suite.extend(cases)
    return suite


def stopped_suite(spec_name: str, reason: str, metadata: Mapping[str, str]) -> ET.Element:
    """An error case saying the run stopped early, so the report cannot look complete."""
    case = testcase("run", f"gradaudit.{spec_name}.run", 0.0, error=(reason, reason))
    return testsuite(f"{spec_name}[run]", [case], {**metadata, STOPPED: reason})


def document(suites: Iterable[ET.Element]) -> str:
    """<testsuites> with totals (tests, failures, errors, time: what the schema allows)."""
    root = element("testsuites", {"name": "gradaudit"})
    totals = dict.fromkeys(("tests", "failures", "errors"), 0)
    seconds = 0.0
    for suite in suites:
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, 0))
        seconds += float(suite.get("time", 0))
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", _seconds(seconds))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
