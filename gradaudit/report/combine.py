"""The reports of a run of several specs (`gradaudit run SPEC... | DIR`): one JUnit file and
one JSON document made of each spec's own reports.

Each spec's run writes its reports into a scratch folder as any run does (a "did not finish"
report first, complete after every case); the run of the set combines them after every
spec, so its report paths always hold a complete report that says what is not done yet.

- JUnit: every spec's `<testsuite>`s under one `<testsuites>`; suite names carry the spec's
  name (`charrnn[cpu,float32]`) and each suite's properties its path and sha256, so a suite
  is per spec and case, and `gradaudit merge` can pair the shards of each spec.
- JSON: a `gradaudit-run-set` document whose `runs` are the specs' `gradaudit-run`
  documents, in order, copied as they are (docs/json-report.md), with the set's totals.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradaudit.ci.report import SET_SCHEMA
from gradaudit.report.elements import document
from gradaudit.report.jsonvalues import dumps
from gradaudit.write import temp_beside, write_atomic

SET_SCHEMA_VERSION = 1
COUNTS = ("passed", "failed", "errors", "skipped")


def combine_junit(out: str | Path, parts: Sequence[str | Path]) -> None:
    """One JUnit file with every suite of `parts` (gradaudit JUnit files), in order."""
    suites: list[ET.Element] = []
    for part in parts:
        suites += list(ET.parse(part).getroot().iter("testsuite"))
    write_atomic(out, document(suites))


def combine_json(out: str | Path, parts: Sequence[str | Path], exit_code: int | None) -> None:
    """One `gradaudit-run-set` document of the `gradaudit-run` documents in `parts`, each
    copied as it is; read one at a time, so memory holds one spec's report at most."""
    counts, stopped = _tally(json.loads(Path(part).read_text(encoding="utf-8")) for part in parts)
    target = Path(out)
    fd, tmp = temp_beside(target)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(
                f'{{"schema": "{SET_SCHEMA}", "schema_version": {SET_SCHEMA_VERSION},\n'
                f' "exit_code": {dumps(exit_code)},\n "runs": [\n'
            )
            for i, part in enumerate(parts):
                text = Path(part).read_text(encoding="utf-8").rstrip()
                handle.write(("" if i == 0 else ",\n") + text)
            handle.write(f'\n ],\n "totals": {dumps(counts)},\n "stopped": {dumps(stopped)}\n}}\n')
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_set(document: Mapping[str, Any]) -> bool:
    return document.get("schema") == SET_SCHEMA


def set_document(runs: Sequence[Mapping[str, Any]], exit_code: int | None) -> dict[str, Any]:
    """A set document of run documents in memory (what `gradaudit merge` writes)."""
    counts, stopped = _tally(runs)
    return {
        "schema": SET_SCHEMA,
        "schema_version": SET_SCHEMA_VERSION,
        "exit_code": exit_code,
        "runs": list(runs),
        "totals": counts,
        "stopped": stopped,
    }


def _tally(runs: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], str | None]:
    """The set's totals (the runs' sums) and why its runs stopped early ("SPEC: why; ...")."""
    counts = dict.fromkeys(COUNTS, 0)
    stops = []
    for run in runs:
        for key in COUNTS:
            counts[key] += int(run.get("totals", {}).get(key, 0))
        if run.get("stopped"):
            stops.append(f"{run.get('run', {}).get('spec', '?')}: {run['stopped']}")
    return counts, "; ".join(stops) or None
