"""Reports written before anything else, so that a run killed while loading torch, the
plugins, the data or the model still leaves reports that say it did not finish."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gradaudit.report.jsonfile import SCHEMA, SCHEMA_VERSION, dumps
from gradaudit.report.junit import document, stopped_suite
from gradaudit.write import write_atomic

LOADING = "the run did not finish: it stopped while loading (torch, plugins, data, model)"


def write_placeholders(
    spec_path: str,
    junit_xml: str | None,
    json_path: str | None,
    sets: tuple[str, ...] = (),
    reason: str = LOADING,
) -> None:
    """Reports with one error case: `reason` (by default, that the run did not finish)."""
    spec = Path(spec_path)
    try:
        raw = spec.read_bytes()
    except OSError:
        raw = b""
    metadata = {
        "spec": str(spec),
        "spec_sha256": hashlib.sha256(raw + "\n".join(sets).encode()).hexdigest(),
    }
    name = spec.stem
    if junit_xml:
        write_atomic(junit_xml, document([stopped_suite(name, reason, metadata)]))
    if json_path:
        totals = {"passed": 0, "failed": 0, "errors": 1, "skipped": 0}
        write_atomic(
            json_path,
            f'{{"schema": "{SCHEMA}", "schema_version": {SCHEMA_VERSION},\n'
            f' "run": {dumps(metadata)},\n "cases": [],\n "groups": [],\n'
            f' "totals": {dumps(totals)},\n "stopped": {dumps(reason)}\n}}\n',
        )
