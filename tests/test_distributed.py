"""Distributed audits: torchrun-launched ranks, per-rank reports, failures that name the rank,
ranks that raise, hang or die, and bad input refused before any rank starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from junitparser import Error, Failure, JUnitXml

from gradaudit.targets.sharded.events import read_progress
from tests.conftest import GRADAUDIT, REPO, cli_env

PLUGINS = str(REPO / "tests" / "dist_plugins.py")
RANK_GROUPS = ("rank0", "rank1", "rank1.replicas")


def tp_spec(tmp_path: Path, **overrides: Any) -> Path:
    spec: dict[str, Any] = yaml.safe_load((REPO / "specs" / "tp-mlp.yaml").read_text())
    spec["batches"] = {"count": 3, "size": 8, "seed": 1}
    spec["plugins"] = [PLUGINS, "gradaudit_tp.gallery"]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_dist(
    tmp_path: Path, spec: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`gradaudit run SPEC` with reports in tmp_path; the ranks' folder under tmp_path too
    (TMPDIR), so that leftover processes can be found by their command line."""
    reports = ["--junit-xml", str(tmp_path / "report.xml"), "--json", str(tmp_path / "report.json")]
    return subprocess.run(
        [str(GRADAUDIT), "run", str(spec), *reports, *args],
        cwd=REPO, env=cli_env({"TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def leftovers(tmp_path: Path) -> list[int]:
    """Live processes whose command line mentions tmp_path (the launcher and its ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            mine = str(tmp_path).encode() in (entry / "cmdline").read_bytes()
            if mine and not (entry / "stat").read_text().split(") ")[1].startswith("Z"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def outcomes(tmp_path: Path) -> dict[tuple[str, str, str], str]:
    """(suite, tensor) -> pass / fail / error, from the JUnit report."""
    result = {}
    for suite in JUnitXml.fromfile(str(tmp_path / "report.xml")):
        for case in suite:
            kinds = {type(r) for r in case.result}
            status = "fail" if Failure in kinds else "error" if Error in kinds else "pass"
            result[(suite.name, case.classname, case.name)] = status
    return result


def bad(status: dict[tuple[str, str, str], str]) -> set[tuple[str, str]]:
    """(group, tensor) of every failure or error; group is `rank1`, `rank1.replicas`, ..."""
    return {
        (name.split(",")[-1].rstrip("]"), tensor)
        for (name, _, tensor), s in status.items()
        if s != "pass"
    }


def test_green_in_float64_and_float32_one_report_for_all_ranks(tmp_path: Path) -> None:
    start = time.monotonic()
    result = run_dist(tmp_path, tp_spec(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - start < 60
    status = outcomes(tmp_path)
    suites = {name for name, _, _ in status}
    assert suites == {f"tp-mlp[cpu,{d},{g}]" for d in ("float64", "float32") for g in RANK_GROUPS}
    assert ("tp-mlp[cpu,float32,rank1]", "gradaudit.tp-mlp.cpu.float32.rank1", "W1") in status
    assert len(status) == 2 * (10 + 10 + 5) and set(status.values()) == {"pass"}
    data = yaml.safe_load((tmp_path / "report.json").read_text())  # JSON is YAML
    assert data["totals"] == {"passed": 50, "failed": 0, "errors": 0, "skipped": 0}
    assert len(data["cases"]) == 50 * 3  # every tensor, every batch
    assert all(g["complete"] for g in data["groups"])
    # Ranks describe a piece in full only when it beats its worst so far; each summary's
    # worst batch is some rank's worst, so it is described (located, with its numbers).
    worst = [t["worst"] for g in data["groups"] for t in g["tensors"]]
    assert len(worst) == 50 and all(w["located"] and w["worst_index"] is not None for w in worst)
    assert all(isinstance(t["max_rel"], float) for g in data["groups"] for t in g["tensors"])
    assert any(not c["located"] for c in data["cases"])  # and not every batch was
    assert "W1 [rank1]" in result.stdout
    assert not leftovers(tmp_path)


@pytest.mark.parametrize(
    ("bug", "wrong"),
    [
        pytest.param("rank1-only", {("rank1", "b1")}, id="rank1-only"),
        pytest.param(
            "no-allreduce",
            {(g, t) for g in RANK_GROUPS for t in ("u", "W0", "b0")},
            marks=pytest.mark.slow, id="no-allreduce",
        ),
        pytest.param(
            "world-size-twice", {("rank0", "b2"), ("rank1", "b2")},
            marks=pytest.mark.slow, id="world-size-twice",
        ),
        pytest.param(
            "bias-unsynced", {(g, "b2") for g in RANK_GROUPS},
            marks=pytest.mark.slow, id="bias-unsynced",
        ),
    ],
)  # fmt: skip
def test_every_gallery_bug_fails_on_the_ranks_it_breaks(
    tmp_path: Path, bug: str, wrong: set[tuple[str, str]]
) -> None:
    spec = tp_spec(tmp_path, gradients={"plugin": f"tp-mlp-bug-{bug}"}, dtypes=["float64"])
    result = run_dist(tmp_path, spec)
    assert result.returncode == 1, result.stdout + result.stderr
    assert bad(outcomes(tmp_path)) == wrong
    for group, tensor in wrong:
        assert f"{tensor} [{group}]" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("replicas", "code"), [("exact", 1), ("tolerance", 0)])
def test_replicated_drift_within_tolerance_is_caught_only_by_the_replica_check(
    tmp_path: Path, replicas: str, code: int
) -> None:
    spec = tp_spec(
        tmp_path,
        gradients={"plugin": "tp-test-drift"},
        dtypes=["float64"],
        distributed={"replicas": replicas},
        # allclose without the systematic check: the drift (1e-12 relative) must pass against
        # autograd, so that only the replica check can see it (auto's float64 rule, and the
        # systematic check of a drift on every batch, would catch it there too)
        tolerance={"mode": "allclose", "systematic": False},
    )
    result = run_dist(tmp_path, spec)
    assert result.returncode == code, result.stdout + result.stderr
    assert bad(outcomes(tmp_path)) == ({("rank1.replicas", "b2")} if code else set())


def test_replicas_held_across_exchanges_keep_their_batches(tmp_path: Path) -> None:
    """Ranks settle and exchange replicated gradients once per CHUNK_BATCHES batches (and at
    the end): a drift on one batch of the first exchange and one of the second fails exactly
    those batches, and every batch still gets its replica verdict."""
    from gradaudit.targets.sharded.case import CHUNK_BATCHES

    count, drifted = CHUNK_BATCHES + 4, [1, CHUNK_BATCHES + 2]
    spec = tp_spec(
        tmp_path,
        batches={"count": count, "size": 4, "seed": 1},
        gradients={"plugin": "tp-test-drift-at", "options": {"batches": drifted}},
        dtypes=["float64"],
        tolerance={"mode": "allclose", "systematic": False},  # passes against autograd (above)
    )
    result = run_dist(tmp_path, spec)
    assert result.returncode == 1, result.stdout + result.stderr
    assert bad(outcomes(tmp_path)) == {("rank1.replicas", "b2")}
    cases = json.loads((tmp_path / "report.json").read_text())["cases"]
    replicas = [c for c in cases if c["check"] == "rank1.replicas"]
    assert sorted({c["batch"] for c in replicas}) == list(range(count))
    assert len(replicas) == count * len({c["tensor"] for c in replicas})
    failed = sorted(c["batch"] for c in replicas if c["status"] != "pass")
    assert failed == drifted


def _assert_stopped_red(
    tmp_path: Path, result: subprocess.CompletedProcess[str], says: str
) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    status = outcomes(tmp_path)
    suites = {name for name, _, _ in status}
    assert suites == {f"tp-mlp[cpu,{d},{g}]" for d in ("float64", "float32") for g in RANK_GROUPS}
    assert len(status) == 2 * 25  # every planned tensor of every rank is in the report
    errors = [
        c
        for s in JUnitXml.fromfile(str(tmp_path / "report.xml"))
        for c in s
        if any(isinstance(r, Error) for r in c.result)
    ]
    assert errors and all(
        says in (c.result[0].message or "") + (c.result[0].text or "") for c in errors
    )
    data = yaml.safe_load((tmp_path / "report.json").read_text())
    assert data["totals"]["errors"] == len(errors) and not all(
        g["complete"] for g in data["groups"]
    )
    assert not leftovers(tmp_path)


def test_a_rank_killed_mid_run_gives_a_red_complete_report_and_no_process_left(
    tmp_path: Path,
) -> None:
    result = run_dist(tmp_path, tp_spec(tmp_path, gradients={"plugin": "tp-test-die"}))
    _assert_stopped_red(
        tmp_path, result, "rank 1 died (killed by SIGKILL) during cpu/float64 batch 1"
    )


def _batch0_kept(tmp_path: Path, groups: set[str]) -> None:
    """The batch a rank ran before the error was settled and reported, by that rank alone."""
    cases = json.loads((tmp_path / "report.json").read_text())["cases"]
    kept = {(c["check"], c["status"]) for c in cases if c["batch"] == 0 and c["dtype"] == "float64"}
    assert kept == {(group, "pass") for group in groups}


@pytest.mark.slow
def test_a_rank_that_raises_names_itself_and_stops_the_run(tmp_path: Path) -> None:
    result = run_dist(tmp_path, tp_spec(tmp_path, gradients={"plugin": "tp-test-raise"}))
    _assert_stopped_red(
        tmp_path, result, "rank 1: gradients 'tp-test-raise' raised ValueError: boom"
    )
    _batch0_kept(tmp_path, {"rank0", "rank1"})


@pytest.mark.slow
def test_a_hung_rank_times_out_red_with_complete_reports(tmp_path: Path) -> None:
    start = time.monotonic()
    spec = tp_spec(tmp_path, gradients={"plugin": "tp-test-hang"})
    result = run_dist(tmp_path, spec, "--timeout", "3")
    assert time.monotonic() - start < 60
    _assert_stopped_red(
        tmp_path, result, "reported nothing for 3s (--timeout) during cpu/float64 batch 1"
    )
    _batch0_kept(tmp_path, {"rank0", "rank1"})  # torchrun's SIGTERM: each settles alone


def test_every_rank_gets_rank0s_full_model_so_shared_references_fit(tmp_path: Path) -> None:
    """An unseeded factory builds a different full model in each process; each rank's
    shard and the references it gets from other ranks must come from one of them."""
    spec = tp_spec(tmp_path, model={"plugin": "tp-test-unseeded"}, dtypes=["float64"])
    result = run_dist(tmp_path, spec)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(outcomes(tmp_path).values()) == {"pass"}


@pytest.mark.slow
def test_a_full_model_whose_shapes_change_between_batches_is_stopped_red(
    tmp_path: Path,
) -> None:
    spec = tp_spec(tmp_path, model={"plugin": "tp-test-ragged"}, dtypes=["float64"])
    result = run_dist(tmp_path, spec)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the full model's 'h' has shape (7, 32), (8, 32) on batch 0" in result.stdout


# Bad input: one line, exit 2, and no rank started (the executor refuses it as it plans).


def _refused(tmp_path: Path, **overrides: Any) -> str:
    result = run_dist(tmp_path, tp_spec(tmp_path, **overrides))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert not leftovers(tmp_path) and not list(tmp_path.glob("gradaudit-ranks-*"))
    return lines[0]


def test_nccl_without_gpus_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "backend nccl needs CUDA GPUs" in _refused(
        tmp_path, distributed={"backend": "nccl"}, devices=["cuda"]
    )


def test_a_world_size_the_cpu_cannot_hold_is_refused(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    message = _refused(tmp_path, distributed={"world_size": cores + 1})
    assert f"this machine has {cores} CPU cores" in message


def test_a_split_declaration_that_does_not_tile_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, model={"plugin": "tp-test-untiled"})
    assert "'b1' of shape (32,): Split(0, (10, 20)) does not tile it" in message


def test_a_port_already_taken_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"port {port} is already in use" in _refused(tmp_path, distributed={"port": port})


def test_the_ranks_draw_their_batches_from_the_data_plugin(tmp_path: Path) -> None:
    """Like every other target: the spec's data plugin and batches, seen in the header."""
    spec = tp_spec(tmp_path, dtypes=["float64"], batches={"count": 2, "size": 6, "seed": 3})
    result = run_dist(tmp_path, spec)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 batches of x 6x16, y 6x8 (train, seed 3)" in result.stdout
    cases = json.loads((tmp_path / "report.json").read_text())["cases"]
    assert {(c["batch"], c["seed"]) for c in cases} == {(0, 3), (1, 4)}


def test_bad_input_is_one_line_and_exit_2_from_the_command_line(tmp_path: Path) -> None:
    result = run_dist(tmp_path, tp_spec(tmp_path, model={"plugin": "tp-test-untiled"}))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not tile" in result.stderr
    # As for every kind: refused while loading the target, the reports say why.
    assert "the run could not start: " in (tmp_path / "report.xml").read_text("utf-8")


@pytest.mark.slow
def test_sigterm_to_gradaudit_stops_every_rank_and_writes_the_reports(tmp_path: Path) -> None:
    spec = tp_spec(tmp_path, gradients={"plugin": "tp-test-hang"})
    reports = ["--junit-xml", str(tmp_path / "report.xml"), "--json", str(tmp_path / "report.json")]
    proc = subprocess.Popen(
        [str(GRADAUDIT), "run", str(spec), *reports],
        cwd=REPO,
        env=cli_env({"TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(
        (read_progress(p) or 0) >= 1 for p in tmp_path.glob("gradaudit-ranks-*/rank1.progress")
    ):
        assert time.monotonic() < deadline and proc.poll() is None, "rank 1 never reached batch 1"
        time.sleep(0.1)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    status = outcomes(tmp_path)
    stopped = {key: value for key, value in status.items() if key[0] == "tp-mlp[run]"}
    assert stopped == {("tp-mlp[run]", "gradaudit.tp-mlp.run", "run"): "error"}
    assert len(status) == 2 * 25 + 1 and set(status.values()) == {"error"}
    data = yaml.safe_load((tmp_path / "report.json").read_text())
    assert data["stopped"] == "interrupted by SIGTERM"
    assert not leftovers(tmp_path)
