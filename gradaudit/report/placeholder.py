"""Reports written before anything else, so that a run stopped at any moment (while Python
imports gradaudit, torch, the plugins, the data or the model) leaves reports that say it did
not finish, never the previous run's. Standard library only: `gradaudit run` writes them
right after reading its arguments, before importing the rest of gradaudit."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
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
    try:  # a FIFO or a device is no spec: never read it (reading a FIFO would block)
        raw = spec.read_bytes() if spec.is_file() else b""
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


def write_first(specs: Sequence[str], junit_xml: str | None, json_path: str | None) -> None:
    """The first thing `run` does: replace each report path with a "did not finish" report.
    A path that may be an input (a spec itself by any name, a Python file) or that names
    the other report is left alone: the checks after loading refuse it (exit 2). A path
    that cannot be written is left to those checks too."""
    chosen = _writable(specs, junit_xml, json_path)
    try:
        write_placeholders(specs[0], chosen.get("junit"), chosen.get("json"), reason=STARTING)
    except OSError:
        return


def remove_first(specs: Sequence[str], junit_xml: str | None, json_path: str | None) -> None:
    """Take back what `write_first` wrote, for a run refused as bad input (exit 2): files
    that still hold its placeholder, and nothing else."""
    for path in _writable(specs, junit_xml, json_path).values():
        with contextlib.suppress(OSError):
            target = Path(path)
            if target.is_file() and STARTING in target.read_text(encoding="utf-8"):
                target.unlink()


def _writable(specs: Sequence[str], junit_xml: str | None, json_path: str | None) -> dict[str, str]:
    """The report paths a placeholder may go to before the run's checks: not a spec (by any
    name), not a Python file, not one path for both reports."""
    chosen = {}
    for option, path in (("junit", junit_xml), ("json", json_path)):
        if not path or path.endswith(".py") or any(same_file(path, s) for s in specs):
            continue
        chosen[option] = path
    if len(chosen) == 2 and same_file(chosen["junit"], chosen["json"]):
        return {}
    return chosen


def interrupted(
    specs: Sequence[str], junit_xml: str | None, json_path: str | None, sigterm: bool
) -> int:
    """A run stopped before its supervisor took the signals: its reports say so; the code."""
    how = "SIGTERM" if sigterm else "SIGINT (Ctrl-C)"
    reason = f"the run did not finish: interrupted by {how} while starting"
    chosen = _writable(specs, junit_xml, json_path)
    with contextlib.suppress(OSError):
        write_placeholders(specs[0], chosen.get("junit"), chosen.get("json"), reason=reason)
    return 143 if sigterm else 130
