"""A cancelled CI job (SIGTERM) or Ctrl-C (SIGINT) must never lose the report.

A real `gradaudit run` is started on a slow spec (its gradient function sleeps 0.2 s per batch,
100 batches), interrupted once it has audited a few batches, and its JUnit and JSON reports are
read back: the work done so far is there, and the run is marked as stopped.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from junitparser import Error, JUnitXml

REPO = Path(__file__).resolve().parents[1]
GRADAUDIT = Path(sys.executable).with_name("gradaudit")
SIGNALS = {"SIGTERM": (signal.SIGTERM, 143), "SIGINT": (signal.SIGINT, 130)}

SLOW_PLUGIN = textwrap.dedent(
    '''
    """The shipped BPTT, 0.2 s slower per batch: long enough to interrupt mid-run."""
    import time

    from gradaudit_charrnn.bptt import charrnn_bptt

    from gradaudit import hookimpl

    def slow(model, batch, forward):
        time.sleep(0.2)
        return charrnn_bptt(model, batch, forward)

    @hookimpl
    def register_gradients(register):
        register("slow-bptt", slow)
    '''
)


@dataclass
class Interrupted:
    returncode: int
    stdout: str
    stderr: str
    folder: Path
    junit: Path
    json: Path
    batches_seen: int  # the highest batch index printed (-v) before the signal was sent
    seconds_to_exit: float


def env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GRADAUDIT_", "GITHUB_"))}
    base.pop("NO_COLOR", None)
    return base


def default_sigint() -> None:
    # A shell may start background jobs with SIGINT ignored; Python then never raises
    # KeyboardInterrupt. Give the child the disposition an interactive terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(tmp: Path, spec: Path, name: str, sig: signal.Signals) -> Interrupted:
    folder = tmp / name
    folder.mkdir()
    junit, report = folder / "report.xml", folder / "report.json"
    proc = subprocess.Popen(
        [str(GRADAUDIT), "run", str(spec), "-v", "--junit-xml", str(junit), "--json", str(report)],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    out: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    seen = -1
    try:
        # Wait for per-batch lines of batch 3: batches 0..2 are then fully audited.
        while seen < 3:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "gradaudit ended before it was interrupted:\n" + "".join(out)
            out.append(line)
            if line.startswith("  cpu float32 batch "):
                seen = max(seen, int(line.split()[3]))
        proc.send_signal(sig)
        sent = time.monotonic()
        returncode = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    while not lines.empty():
        item = lines.get_nowait()
        if item is not None:
            out.append(item)
    return Interrupted(
        returncode, "".join(out), proc.stderr.read(), folder, junit, report, seen, took
    )


@pytest.fixture(scope="module")
def interrupted(
    tmp_path_factory: pytest.TempPathFactory, spec_dict: Callable[..., dict[str, Any]]
) -> dict[str, Interrupted]:
    """Both signals, on two runs started side by side (most of each is torch's import)."""
    tmp = tmp_path_factory.mktemp("interrupt")
    (tmp / "slow.py").write_text(SLOW_PLUGIN, encoding="utf-8")
    spec = tmp / "slow.yaml"
    data = spec_dict(
        name="slow",
        plugins=["slow.py"],
        gradients={"plugin": "slow-bptt"},
        batches={"split": "train", "count": 100, "size": 4, "seed": 3},
    )
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(interrupt, tmp, spec, name, sig) for name, (sig, _) in SIGNALS.items()
        }
        return {name: future.result() for name, future in futures.items()}


def summaries(path: Path, dtype: str = "float32") -> dict[str, dict[str, Any]]:
    """testcase name -> its summary (the suite's `gradaudit.summary:<name>` property), for the
    group of `dtype`."""
    root = ET.parse(path).getroot()
    found = {}
    for suite in root.iter("testsuite"):
        if suite.get("name") != f"slow[cpu,{dtype}]":
            continue
        props = {p.get("name", ""): p.get("value", "") for p in suite.iter("property")}
        for case in suite.iter("testcase"):
            value = props.get(f"gradaudit.summary:{case.get('name')}")
            assert value is not None, case.get("name")
            found[case.get("name", "")] = json.loads(value)
    return found


@pytest.mark.parametrize("name", list(SIGNALS))
def test_exit_code_and_prompt_exit(interrupted: dict[str, Interrupted], name: str) -> None:
    run = interrupted[name]
    assert run.returncode == SIGNALS[name][1], run.stdout[-2000:] + run.stderr
    assert run.seconds_to_exit < 15, "the run did not stop promptly (96+ batches were left)"
    assert "Traceback" not in run.stdout + run.stderr
    assert f"gradaudit: run stopped early: interrupted by {name}" in run.stdout
    assert sorted(p.name for p in run.folder.iterdir()) == ["report.json", "report.xml"], (
        "temp files left behind, or a report missing"
    )


@pytest.mark.parametrize("name", list(SIGNALS))
def test_junit_keeps_the_cases_done_so_far(interrupted: dict[str, Interrupted], name: str) -> None:
    run = interrupted[name]
    xml = JUnitXml.fromfile(str(run.junit))
    suites = {suite.name: suite for suite in xml}
    # The passes of a device take each batch in turn: both groups are in progress, and each
    # is reported as far as it got (its `incomplete` property says so).
    assert list(suites) == ["slow[cpu,float32]", "slow[cpu,float64]", "slow[run]"]
    for dtype in ("float32", "float64"):
        group = suites[f"slow[cpu,{dtype}]"]
        suite = ET.parse(run.junit).getroot().find(f"testsuite[@name='slow[cpu,{dtype}]']")
        assert suite is not None
        props = {
            p.attrib["name"]: p.attrib["value"] for p in suite.findall("./properties/property")
        }
        assert "incomplete" in props
        found = summaries(run.junit, dtype)
        assert len(found) == 12 and next(iter(found)) == "logits"
        for tensor, summary in found.items():
            assert summary["batches"] >= 3, (tensor, summary["batches"])  # batches 0..2 at least
            # what ran passed; what did not is an error naming those batches and the signal
            assert summary["status"] == "error" and summary["failed_batches"] == 0
            assert summary["worst_batch"] is not None
            assert f"not run: interrupted by {name}" in summary["errors"][0]
        counts = {s["batches"] for s in found.values()}
        assert max(counts) - min(counts) <= 1  # a batch interrupted half-way, at most
        # Results arrive a few batches at a time (a pass screens batches in chunks): the
        # report holds what the console printed, and a batch in flight at most.
        printed = [
            int(line.split()[3]) for line in run.stdout.splitlines()
            if line.startswith(f"  cpu {dtype} batch ")
        ]  # fmt: skip
        assert max(counts) <= max(printed, default=-1) + 2
        assert (group.tests, group.failures, group.errors, group.skipped) == (12, 0, 12, 0)
        times = [float(c.get("time", 0)) for c in suite.iter("testcase")]
        assert all(t > 0 for t in times), f"times of the interrupted group: {times}"

    stopped = list(suites["slow[run]"])
    assert [c.name for c in stopped] == ["run"]
    (error,) = stopped[0].result
    assert isinstance(error, Error)
    assert error.message and "interrupted" in error.message and name in error.message
    root = ET.parse(run.junit).getroot()
    assert root.get("errors") == "25" and root.get("tests") == "25"


@pytest.mark.parametrize("name", list(SIGNALS))
def test_json_keeps_the_cases_done_so_far(interrupted: dict[str, Interrupted], name: str) -> None:
    run = interrupted[name]

    def no_constants(value: str) -> Any:
        raise ValueError(f"non-standard JSON constant {value}")

    data = json.loads(run.json.read_text(encoding="utf-8"), parse_constant=no_constants)
    assert data["schema"] == "gradaudit-run"
    assert data["stopped"] and name in data["stopped"] and "interrupted" in data["stopped"]
    cases = data["cases"]
    assert cases and {c["dtype"] for c in cases} == {"float32", "float64"}
    assert [(g["dtype"], g["complete"]) for g in data["groups"]] == [
        ("float32", False),
        ("float64", False),
    ]
    for group in data["groups"]:
        # The streamed cases made it to disk and agree with the group's tensor summaries, and
        # with the JUnit report of the same run. Known race: the signal can land between
        # TensorSummary.add and the on_case callback, so a summary may count one batch whose
        # case record was never streamed; more than that would be lost data.
        mine = [c for c in cases if c["dtype"] == group["dtype"]]
        per_tensor = Counter(c["tensor"] for c in mine)
        batches = {t["tensor"]: t["batches"] for t in group["tensors"]}
        assert batches == {t: s["batches"] for t, s in summaries(run.junit, group["dtype"]).items()}
        assert set(batches) == set(per_tensor)
        lag = {t: batches[t] - per_tensor[t] for t in batches}
        assert set(lag.values()) <= {0, 1} and sum(lag.values()) <= 1, lag
        assert all(t["seconds"] > 0 for t in group["tensors"]), "an interrupted group took no time"
        assert sorted({c["batch"] for c in mine}) == list(range(max(per_tensor.values())))
    # Every tensor that did not run all its batches is an error, and the stop is one more,
    # as in the JUnit report (its `slow[run]` error case).
    assert data["totals"] == {"passed": 0, "failed": 0, "errors": 25, "skipped": 0}


KILL_AT_FIRST_HEAVY_IMPORT = textwrap.dedent(
    """
    import os, signal, sys

    class KillOnPydantic:
        # The first module a run imports after its arguments that is not the CLI's own.
        def find_spec(self, name, path=None, target=None):
            if name == "pydantic":
                os.kill(os.getpid(), signal.SIGTERM)
            return None

    sys.meta_path.insert(0, KillOnPydantic())
    sys.argv = ["gradaudit", *sys.argv[1:]]
    from gradaudit.cli import main
    main()
    """
)


def test_a_run_killed_while_starting_leaves_no_old_green(tmp_path: Path) -> None:
    """The previous run's green reports are replaced by "did not finish" reports before the
    run imports anything slow: a job cancelled in its first moments cannot pass."""
    spec = tmp_path / "spec.yaml"
    spec.write_text((REPO / "specs" / "charrnn.yaml").read_text(encoding="utf-8"))
    xml, data = tmp_path / "r.xml", tmp_path / "r.json"
    green = subprocess.run(
        [str(GRADAUDIT), "run", str(spec), "--dtype", "float32", "-q"]
        + ["--junit-xml", str(xml), "--json", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert green.returncode == 0 and json.loads(data.read_text())["totals"]["failed"] == 0
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_FIRST_HEAVY_IMPORT, "run", str(spec)]
        + ["--junit-xml", str(xml), "--json", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == 143, killed.stdout + killed.stderr  # its handler comes first
    report = json.loads(data.read_text())
    assert report["totals"]["errors"] == 1 and "did not finish" in report["stopped"]
    root = ET.parse(xml).getroot()
    assert (root.get("tests"), root.get("errors")) == ("1", "1")
    assert "did not finish" in ET.tostring(root, encoding="unicode")
