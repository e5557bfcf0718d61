"""The test suite's zygote (gradaudit.run.zygote): a forked executor must be what a started
one is (the run's working directory, environment, PYTHONPATH, verdicts), and must die with
its run, even when the run is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gradaudit.run import zygote
from tests.conftest import GRADAUDIT, CliRunner, SpecWriter, cli_env

PLUGIN = """
import json, os, sys, time
from gradaudit import hookimpl
from gradaudit_charrnn.bptt import charrnn_bptt

def recording(model, batch, forward):
    with open(os.environ["RECORD"], "w") as f:
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
                   "marker": os.environ.get("MARKER"), "sid": os.getsid(0)}, f)
    return charrnn_bptt(model, batch, forward)

def hanging(model, batch, forward):
    with open(os.environ["RECORD"], "w") as f:
        json.dump({"pid": os.getpid()}, f)
    time.sleep(600)

@hookimpl
def register_gradients(register):
    register("recording", recording)
    register("hanging", hanging)
"""


@pytest.fixture(scope="module")
def own_zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A zygote of these tests' own, ready (its socket exists): (socket path, its pid)."""
    path = tmp_path_factory.mktemp("zygote") / "zygote.sock"
    server = zygote.start(path)
    deadline = time.monotonic() + 120
    while not path.exists():
        assert server.poll() is None, "the zygote ended before it was ready"
        assert time.monotonic() < deadline, "the zygote was not ready in 120 s"
        time.sleep(0.05)
    try:
        yield str(path), server.pid
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "zygote_plugins.py").write_text(PLUGIN, encoding="utf-8")
    return folder


def run(spec: Path, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRADAUDIT), "run", str(spec), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(env),
        timeout=300,
        check=False,
    )


def verdicts(report: Path) -> list[tuple[Any, ...]]:
    data = json.loads(report.read_text(encoding="utf-8"))
    keys = ("device", "dtype", "check", "tensor", "batch", "status", "worst_index")
    return sorted(tuple(str(c.get(k)) for k in keys) for c in data["cases"])


def test_a_forked_executor_runs_where_and_as_a_started_one_does(
    tmp_path: Path, write_spec: SpecWriter, own_zygote: tuple[str, int], plugin_dir: Path
) -> None:
    socket_path, zygote_pid = own_zygote
    spec = write_spec(plugins=["zygote_plugins"], gradients={"plugin": "recording"})
    work = tmp_path / "work"
    work.mkdir()
    record = tmp_path / "record.json"
    env = {"PYTHONPATH": str(plugin_dir), "RECORD": str(record), "MARKER": "forked"}
    forked = run(spec, work, {**env, zygote.VARIABLE: socket_path}, "--json", "forked.json")
    seen = json.loads(record.read_text(encoding="utf-8"))
    started = run(spec, work, {**env, zygote.VARIABLE: ""}, "--json", "started.json")
    assert forked.returncode == started.returncode == 0, forked.stderr + started.stderr
    assert seen["ppid"] == zygote_pid  # it was forked, not started
    assert seen["sid"] == seen["pid"]  # in a session of its own, as a started executor
    assert seen["cwd"] == str(work)
    assert seen["marker"] == "forked"  # the run's environment, not the zygote's
    assert verdicts(work / "forked.json") == verdicts(work / "started.json")
    unforked = json.loads(record.read_text(encoding="utf-8"))
    assert unforked["ppid"] != zygote_pid


def test_a_forked_executor_reports_a_bug_as_a_started_one_does(
    tmp_path: Path, write_spec: SpecWriter, own_zygote: tuple[str, int]
) -> None:
    spec = write_spec(
        plugins=["gradaudit_charrnn.gallery"],
        gradients={"plugin": "charrnn-bptt-bug-dW-misses-h0"},
    )
    forked = run(spec, tmp_path, {zygote.VARIABLE: own_zygote[0]}, "--json", "f.json")
    started = run(spec, tmp_path, {zygote.VARIABLE: ""}, "--json", "s.json")
    assert forked.returncode == started.returncode == 1
    assert verdicts(tmp_path / "f.json") == verdicts(tmp_path / "s.json")


def test_an_unreachable_zygote_means_a_started_executor(
    tmp_path: Path, write_spec: SpecWriter, run_cli: CliRunner
) -> None:
    spec = write_spec()
    result = run(spec, tmp_path, {zygote.VARIABLE: str(tmp_path / "nobody.sock")})
    assert result.returncode == 0, result.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of the zygote's, not yet reaped, counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z"


def test_a_killed_run_takes_its_forked_executor_with_it(
    tmp_path: Path, write_spec: SpecWriter, own_zygote: tuple[str, int], plugin_dir: Path
) -> None:
    spec = write_spec(plugins=["zygote_plugins"], gradients={"plugin": "hanging"})
    record = tmp_path / "record.json"
    env = {"PYTHONPATH": str(plugin_dir), "RECORD": str(record), zygote.VARIABLE: own_zygote[0]}
    proc = subprocess.Popen(
        [str(GRADAUDIT), "run", str(spec)],
        cwd=tmp_path,
        env=cli_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not record.exists() or not record.read_text(encoding="utf-8"):
            assert proc.poll() is None, "the run ended before its gradient hung"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        executor = json.loads(record.read_text(encoding="utf-8"))["pid"]
        assert not _gone(executor)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while not _gone(executor):
            assert time.monotonic() < deadline, "the forked executor outlived its run"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


def test_a_command_forked_from_the_cli_zygote_is_what_the_console_script_gives(
    tmp_path: Path, write_spec: SpecWriter
) -> None:
    """tests/cli_zygote.py forks `gradaudit` commands for run_gradaudit: same output, exit
    code, working directory and environment as the console script started afresh."""
    from tests import cli_zygote

    assert os.environ.get(cli_zygote.VARIABLE), "the session's command-line zygote is missing"
    spec = write_spec(dtypes=["float64"])
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    env = cli_env({"NO_COLOR": "1"})
    for args in (
        ["--version"],
        ["validate", "bad.yaml"],
        ["run", spec.name, "-q", "--json", "r.json"],
        ["plan", spec.name],
    ):
        argv = [str(GRADAUDIT), *args]
        forked = cli_zygote.run(argv, tmp_path, env, 120)
        assert forked is not None
        started = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert forked.returncode == started.returncode, (args, forked, started)
        assert forked.stderr == started.stderr, args
        if args[0] != "run":  # a run's closing line has its seconds
            assert forked.stdout == started.stdout, args
        else:
            assert forked.stdout.split(" in ")[0] == started.stdout.split(" in ")[0]
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["failed"] == 0
    # a dead zygote, or none: run_gradaudit starts the console script
    assert cli_zygote.run([str(GRADAUDIT), "--version"], tmp_path, env, 10) is not None
    os.environ[cli_zygote.VARIABLE], saved = str(tmp_path / "none"), os.environ[cli_zygote.VARIABLE]
    try:
        assert cli_zygote.run([str(GRADAUDIT), "--version"], tmp_path, env, 10) is None
    finally:
        os.environ[cli_zygote.VARIABLE] = saved
