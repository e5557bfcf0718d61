"""Reports written before anything else, so that a run stopped at any moment (while Python
imports gradaudit, torch, the plugins, the data or the model) leaves reports that say it did
not finish, never the previous run's. Standard library only: `gradaudit run` writes them
right after reading its arguments, before importing the rest of gradaudit."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gradaudit.report.elements import document, stopped_suite
from gradaudit.report.jsonvalues import SCHEMA, SCHEMA_VERSION, dumps
from gradaudit.write import same_file, write_atomic

STARTING = "the run did not finish: it stopped while starting (before the spec was read)"
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


def write_first(spec_path: str, junit_xml: str | None, json_path: str | None) -> None:
    """The first thing `run` does: replace each report path with a "did not finish" report.
    A path that may be an input (the spec itself by any name, a Python file) or that names
    the other report is left alone: the checks after loading refuse it (exit 2). A path
    that cannot be written is left to those checks too."""
    chosen = {}
    for option, path in (("junit", junit_xml), ("json", json_path)):
        if not path or path.endswith(".py") or same_file(path, spec_path):
            continue
        chosen[option] = path
    if len(chosen) == 2 and same_file(chosen["junit"], chosen["json"]):
        return
    try:
        write_placeholders(spec_path, chosen.get("junit"), chosen.get("json"), reason=STARTING)
    except OSError:
        return
