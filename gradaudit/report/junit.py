"""JUnit XML through junit-xml: a testsuite per (spec, device, dtype), a testcase per tensor."""

from __future__ import annotations

import platform
import re

import junit_xml

from gradaudit.report.describe import detail, verdict_line
from gradaudit.runner import GroupResult
from gradaudit.spec import LoadedSpec
from gradaudit.write import write_atomic

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
MAX_BODY = 64_000


def clean(text: str, limit: int = MAX_BODY) -> str:
    """Strip ANSI colours and XML-illegal characters, and cap the length."""
    text = _ILLEGAL.sub("", _ANSI.sub("", text))
    return (
        text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} characters cut)"
    )


def suite_name(spec_name: str, device: str, dtype: str) -> str:
    return f"{spec_name}[{device},{dtype}]"


def classname(spec_name: str, device: str, dtype: str) -> str:
    return f"gradaudit.{spec_name}.{device}.{dtype}"


def to_suite(
    loaded: LoadedSpec, group: GroupResult, versions: dict[str, str]
) -> junit_xml.TestSuite:
    spec = loaded.spec
    cls = classname(spec.name, group.device, group.dtype)
    cases = []
    for s in group.tensors:
        case = junit_xml.TestCase(s.tensor, classname=cls, elapsed_sec=round(s.seconds, 3))
        if group.skipped:
            case.add_skipped_info(message=clean(group.skipped), output=clean(group.skipped))
        elif s.status == "fail":
            case.add_failure_info(
                message=clean(f"{s.tensor}: {verdict_line(s)}", 500), output=clean(detail(s))
            )
        elif s.status == "error":
            case.add_error_info(
                message=clean(f"{s.tensor}: {verdict_line(s)}", 500), output=clean(detail(s))
            )
        cases.append(case)
    b = spec.batches
    properties = {
        **versions,
        "device": group.device,
        "device_name": group.device_name or group.device,
        "dtype": group.dtype,
        "seed": str(b.seed),
        "batches": f"{b.split}: count={b.count} size={b.size} block_size={b.block_size}",
        "spec": str(loaded.path),
        "spec_sha256": loaded.sha256,
        "tolerance_mode": spec.tolerance.mode,
        "host": platform.node(),
    }
    return junit_xml.TestSuite(
        suite_name(spec.name, group.device, group.dtype),
        cases,
        properties={k: clean(v, 500) for k, v in properties.items()},
    )


def write_junit(
    path: str, loaded: LoadedSpec, groups: list[GroupResult], versions: dict[str, str]
) -> None:
    suites = [to_suite(loaded, g, versions) for g in groups]
    xml = junit_xml.to_xml_report_string(suites, prettyprint=True, encoding="utf-8")
    write_atomic(path, xml)
