"""Runs are reproducible, and resource problems are refused up front with one line.

- Two runs of one spec (separate processes, different hash seeds) write the same JSON cases,
  groups and totals, and the same JUnit text, apart from timings and the start time.
- A batch that cannot fit in memory is refused before anything is allocated, with a one-line
  message in GiB.
- A report path that cannot be written fails the run before it starts.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GRADAUDIT, cli_env, run_gradaudit, small_spec

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny tensors on a shared machine


def write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    everything = proc.stdout + proc.stderr
    assert proc.returncode == 2, everything
    assert "Traceback" not in everything, everything
    assert proc.stdout == "", everything  # nothing ran: no banner, no table
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gradaudit: error: "), lines[0]
    return lines[0]


# --- determinism -------------------------------------------------------------------------------


def without_seconds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


TIMES = re.compile(r'\b(time|timestamp)="[^"]*"')


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, Path, Path]]:
    """The same spec run twice at once, in two processes with different hash seeds."""
    folder = tmp_path_factory.mktemp("determinism")
    spec = small_spec(checks={"repeat": {"count": 2}, "finite_difference": {"directions": 2}})
    path = write(folder / "spec.yaml", spec)

    def one(i: int) -> tuple[Any, Path, Path]:
        junit, json_path = folder / f"run{i}.xml", folder / f"run{i}.json"
        proc = run_gradaudit(
            "run",
            path,
            "--junit-xml",
            junit,
            "--json",
            json_path,
            env={**ONE_THREAD, "PYTHONHASHSEED": str(i)},
        )
        return proc, junit, json_path

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(one, [1, 2]))
    for proc, _, _ in runs:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return runs


def test_two_runs_write_the_same_json(two_runs: list[tuple[Any, Path, Path]]) -> None:
    first, second = (json.loads(p.read_text(encoding="utf-8")) for _, _, p in two_runs)
    assert first["cases"], "no cases recorded"
    assert {c["check"] for c in first["cases"]} == {"gradients", "repeat", "finite_difference"}
    for key in ("cases", "groups", "totals", "stopped", "schema", "schema_version"):
        assert without_seconds(first[key]) == without_seconds(second[key]), key
    for doc in (first, second):
        del doc["run"]["started"], doc["run"]["host"]
    assert first["run"] == second["run"]
    assert first["totals"]["failed"] == first["totals"]["errors"] == 0


def test_two_runs_write_the_same_junit(two_runs: list[tuple[Any, Path, Path]]) -> None:
    texts = [junit.read_text(encoding="utf-8") for _, junit, _ in two_runs]
    assert TIMES.search(texts[0]), "no time attributes to normalise?"
    first, second = (TIMES.sub(r'\1="-"', text) for text in texts)
    assert first == second


def test_two_runs_print_the_same_table(two_runs: list[tuple[Any, Path, Path]]) -> None:
    def table(out: str) -> list[str]:  # minus the closing line, which has the wall time
        return [line for line in out.splitlines() if not re.search(r" in \d+\.\d+s$", line)]

    (first, _, _), (second, _, _) = two_runs
    assert table(first.stdout) == table(second.stdout)


# --- memory ------------------------------------------------------------------------------------


def limit_address_space() -> None:
    """A safety net: if gradaudit does try to allocate the batch, it fails instead of swapping
    (or taking the machine's memory from everyone else) - the test then fails on its own terms."""
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def test_a_batch_bigger_than_memory_is_refused_before_allocating(tmp_path: Path) -> None:
    spec = small_spec(
        model={"plugin": "charrnn", "options": {"d_model": 24, "n_hidden": 200, "h0": 0.1}},
        batches={"split": "train", "count": 2, "size": 10**9, "seed": 3},
    )
    path = write(tmp_path / "huge-batch.yaml", spec)
    start = time.perf_counter()
    proc = subprocess.run(
        [str(GRADAUDIT), "run", str(path)],
        env=cli_env(ONE_THREAD),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_address_space,
        check=False,
    )
    seconds = time.perf_counter() - start
    line = one_line_error(proc)
    assert "GiB" in line, line
    assert "batches.size" in line or "block_size" in line, line
    assert seconds < 30, seconds


# --- report paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_an_unwritable_json_path_fails_before_running(tmp_path: Path, where: str) -> None:
    spec = write(tmp_path / "spec.yaml", small_spec())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    target = blocker / "out.json" if where == "under-a-file" else tmp_path
    junit = tmp_path / "fine.xml"
    proc = run_gradaudit("run", spec, "--junit-xml", junit, "--json", target, env=ONE_THREAD)
    line = one_line_error(proc)
    assert str(target) in line, line
    assert not junit.exists()  # nothing ran, so nothing was reported
    assert blocker.read_text(encoding="utf-8") == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "spec.yaml"]
