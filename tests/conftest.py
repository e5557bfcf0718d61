"""Shared fixtures: the repo root, a small CharRNN spec writer and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import cli_zygote

REPO = Path(__file__).resolve().parents[1]
# The console script installed next to this interpreter (there is no `python -m gradaudit`).
GRADAUDIT = Path(sys.executable).with_name("gradaudit")

ZYGOTE = "GRADAUDIT_ZYGOTE"
SpecWriter = Callable[..., Path]
CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]


def small_spec(**overrides: Any) -> dict[str, Any]:
    """A charrnn spec small enough to audit in well under a second (after torch's import)."""
    spec: dict[str, Any] = {
        "name": "small",
        "model": {"plugin": "charrnn", "options": {"d_model": 8, "n_hidden": 16, "h0": 0.1}},
        "gradients": {"plugin": "charrnn-bptt"},
        "data": {"plugin": "text", "options": {"source": "builtin", "block_size": 5}},
        "batches": {"split": "train", "count": 2, "size": 4, "seed": 3},
        "devices": ["cpu"],
        "dtypes": ["float32", "float64"],
        "tensors": ["*"],
    }
    spec.update(overrides)
    return spec


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without gradaudit's own variables (but this session's
    zygote), plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRADAUDIT_") or k == ZYGOTE}
    base.pop("NO_COLOR", None)
    base.update(env or {})
    return base


def run_gradaudit(
    *args: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the real `gradaudit` command and capture its output: forked from this session's
    command-line zygote when it has one (tests/cli_zygote.py), else the console script in
    a subprocess."""
    assert GRADAUDIT.is_file(), f"no gradaudit console script at {GRADAUDIT}"
    argv = [str(GRADAUDIT), *map(str, args)]
    forked = cli_zygote.run(argv, Path(cwd or REPO), cli_env(env), timeout)
    if forked is not None:
        return forked
    return subprocess.run(
        argv,
        cwd=cwd or REPO,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session", autouse=True)
def zygote() -> Iterator[None]:
    """One zygote per test process (gradaudit.run.zygote): the runs of this session fork
    their executors from it instead of importing torch each time. The session waits for it
    to be ready (a few seconds): the slowest modules run first, and their runs, started
    before it, each imported torch themselves (a gallery run took 4.7 s of CPU instead of
    1.6). Tests that unset GRADAUDIT_ZYGOTE start executors as users' runs do.
    GRADAUDIT_ZYGOTE=0 switches it off for the whole session, and the command-line zygote
    beside it (tests/cli_zygote.py, which `run_gradaudit` forks commands from)."""
    if os.environ.get(ZYGOTE) == "0":
        os.environ.pop(ZYGOTE)
        yield
        return
    from gradaudit.run import zygote as zygotes

    folder = Path(tempfile.mkdtemp(prefix="gradaudit-zygote-"))
    server = zygotes.start(folder / "socket")
    commands = zygotes.start(folder / "cli", preload=cli_zygote.PRELOAD)
    deadline = time.monotonic() + 60
    for path, process in ((folder / "socket", server), (folder / "cli", commands)):
        while not path.exists() and process.poll() is None:
            if time.monotonic() > deadline:
                break  # a slow machine: runs start processes themselves until it is ready
            time.sleep(0.05)
    os.environ[ZYGOTE] = str(folder / "socket")
    os.environ[cli_zygote.VARIABLE] = str(folder / "cli")
    try:
        yield
    finally:
        os.environ.pop(ZYGOTE, None)
        os.environ.pop(cli_zygote.VARIABLE, None)
        for process in (server, commands):
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def spec_dict() -> Callable[..., dict[str, Any]]:
    """spec_dict(**overrides) -> the small charrnn spec as a dict (top-level keys replaced)."""
    return small_spec


@pytest.fixture
def write_spec(tmp_path: Path) -> SpecWriter:
    """write_spec(filename="spec.yaml", **overrides) -> path of a small charrnn spec."""

    def write(filename: str = "spec.yaml", **overrides: Any) -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(small_spec(**overrides), sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def run_cli() -> CliRunner:
    """run_cli(*args, cwd=None, env=None) -> CompletedProcess of the gradaudit console script."""
    return run_gradaudit


def run_groups(
    loaded: Any,
    devices: list[str] | None = None,
    dtypes: list[str] | None = None,
    **options: Any,
) -> list[Any]:
    """Every case's result of a loaded spec, run in this process (gradaudit.api)."""
    from gradaudit.api import run_loaded

    return run_loaded(loaded, devices=devices or (), dtypes=dtypes or (), **options).groups


def plan_for(loaded: Any, devices: list[str] | None = None, dtypes: list[str] | None = None) -> Any:
    """The plan of a loaded spec, made in this process."""
    from gradaudit.api import plan_loaded

    return plan_loaded(loaded, devices=devices or (), dtypes=dtypes or ())


def engine_events(loaded: Any, target: Any = None, share: bool = True, **job: Any) -> list[Any]:
    """Every event the engine's loop sends for a loaded spec, run in this process."""
    from gradaudit.run.executor import Job, run_job

    if target is None and not share:
        from gradaudit.targets.model.target import ModelTarget

        target = ModelTarget(loaded, share=False)
    found: list[Any] = []
    run_job(Job(str(loaded.path), loaded.sets, threads=0, **job), found.extend, loaded, target)
    return found


def run_op_spec(
    path: str | Path, devices: list[str] | None = None, dtypes: list[str] | None = None
) -> list[Any]:
    """Every case's result of an op spec, run in this process (gradaudit.api.run)."""
    from gradaudit.api import run

    return run(path, devices=devices or (), dtypes=dtypes or ()).groups


# The modules that take longest (seconds of CPU, measured with --durations=0): run first, so
# that `-n 2 --dist loadfile` does not leave one worker alone with one of them at the end.
SLOWEST_FIRST = (
    "test_distributed.py",
    "test_pytest_vs_run.py",
    "test_ops_shard.py",
    "test_pytest_plugin.py",
    "test_gallery.py",
    "test_triton_ops.py",
    "test_verdicts.py",
    "test_spec_fuzz.py",
    "test_docs_generated.py",
    "test_spec_set.py",
    "test_green_is_true.py",
    "test_cli.py",
    "test_core_contracts.py",
    "test_triton_crash.py",
    "test_zygote.py",
    "test_mlp.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept
