"""Report files kept complete while a run goes (commands.Reports.checkpoint): written when
the plan arrives and as cases finish, at most once a second, only for reporters that keep
files. Rewriting whole documents after each of an op spec's 70 cases took 5 s of CPU in a
0.7 s run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from gradaudit.commands import Reports, RunOptions
from gradaudit.report.console import ConsoleReporter
from gradaudit.results import RunSummary
from tests.conftest import GRADAUDIT, cli_env

PLUGINS = Path(__file__).resolve().with_name("misbehaving_plugins.py")


class Counting:
    """A file-keeping reporter that counts its checkpoints."""

    def __init__(self) -> None:
        self.checkpoints = 0

    def case(self, result: Any) -> None: ...

    def group(self, group: Any) -> None: ...

    def checkpoint(self, summary: RunSummary) -> None:
        self.checkpoints += 1


class Fold:
    def __init__(self) -> None:
        self.folded = 0

    def provisional(self, reason: str) -> RunSummary:
        self.folded += 1
        return RunSummary()


def _reports(*reporters: Any) -> tuple[Reports, Fold]:
    reports = Reports(SimpleNamespace(), RunOptions())  # type: ignore[arg-type]
    fold = Fold()
    reports.supervisor = SimpleNamespace(outcome=SimpleNamespace(fold=fold))  # type: ignore[assignment]
    reports.reporters = list(reporters)
    return reports, fold


def test_checkpoints_are_at_most_one_a_second_and_a_put_off_one_is_written_later() -> None:
    counting = Counting()
    reports, fold = _reports(counting, ConsoleReporter(verbosity=-1))
    for _ in range(100):  # a hundred cases finishing at once
        reports.group(None)  # type: ignore[arg-type]
    assert counting.checkpoints == 1 and fold.folded == 1  # one fold for every reporter
    time.sleep(1.05)
    reports.case(None)  # type: ignore[arg-type]
    assert counting.checkpoints == 2  # the one put off, at the next event once due
    reports.case(None)  # type: ignore[arg-type]
    assert counting.checkpoints == 2  # nothing put off since


def test_no_fold_when_no_reporter_keeps_a_file() -> None:
    reports, fold = _reports(ConsoleReporter(verbosity=-1))
    for _ in range(10):
        reports.group(None)  # type: ignore[arg-type]
    assert fold.folded == 0


def test_a_run_killed_mid_way_leaves_the_cases_it_finished(tmp_path: Path) -> None:
    """An op whose candidate sleeps on one row (variant N=1): the variants before it finish
    at once. The JSON on disk shows them while N=1 sleeps; SIGKILL then leaves them, and
    the rest as not finished."""
    (tmp_path / "sleepy.py").write_text(
        "import time\n"
        "def op(x):\n"
        "    if x.shape[0] == 1:\n"
        "        time.sleep(60)\n"
        "    return x * 2\n"
        "def reference(x):\n"
        "    return x * 2\n"
    )
    spec = {
        "name": "sleepy",
        "op": {"candidate": "sleepy:op", "reference": "sleepy:reference",
               "inputs": {"x": {"shape": [4, 3]}}},
        "dtypes": ["float64"],
    }  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [str(GRADAUDIT), "run", str(path), "--json", str(report), "-q"],
        env=cli_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, seen = time.monotonic() + 30, set()
        while time.monotonic() < deadline and "variant:base" not in seen:
            time.sleep(0.1)
            try:
                groups = json.loads(report.read_text())["groups"]
            except (OSError, ValueError, KeyError):
                continue
            seen = {g["check"] for g in groups if g["complete"]}
        assert "variant:base" in seen and proc.poll() is None, seen
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    doc = json.loads(report.read_text())
    assert "did not finish" in doc["stopped"]
    by_check = {g["check"]: g for g in doc["groups"]}
    assert {t["status"] for t in by_check["variant:base"]["tensors"]} == {"pass"}
    assert {t["status"] for t in by_check["variant:x.0=1"]["tensors"]} == {"error"}
