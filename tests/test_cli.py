"""The `gradaudit` command end to end, through a real subprocess: exit codes, table, JUnit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from junitparser import Error, Failure, JUnitXml, Skipped

from tests.negative_controls import tensor_names

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SPEC = REPO / "specs" / "charrnn.yaml"
TINY_SPEC = REPO / "specs" / "charrnn-shakespeare.yaml"
SHARED_DATA = REPO.parent / "shared" / "data"
CHARRNN_T8 = tensor_names(8)
CUDA = torch.cuda.is_available()
DTYPES = ["float32", "float64"]
CliRun = Callable[..., "subprocess.CompletedProcess[str]"]
SpecWriter = Callable[..., Path]


def table_rows(stdout: str) -> list[list[str]]:
    """The result table's rows (device, dtype, tensor, ..., result), without the details."""
    return [
        line.split()
        for line in stdout.splitlines()
        if re.match(r"(cpu|cuda(:\d+)?|mps|xpu(:\d+)?) +(float|bfloat)\d+ ", line)
    ]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a usage/spec error; no traceback anywhere."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def outcome(case: Any) -> str:
    kinds = {type(r) for r in case.result}
    for kind, label in ((Failure, "failure"), (Error, "error"), (Skipped, "skipped")):
        if kind in kinds:
            return label
    return "pass"


Run = tuple["subprocess.CompletedProcess[str]", Path]


@pytest.fixture(scope="module")
def heavy_runs(
    tmp_path_factory: pytest.TempPathFactory,
    run_cli: CliRun,
    spec_dict: Callable[..., dict[str, Any]],
) -> dict[str, Run]:
    """The runs that import torch and audit, started together: id -> (process, its file)."""
    tmp = tmp_path_factory.mktemp("cli")  # in this thread: tmp dirs are not thread-safe
    filter_spec = tmp / "filter.yaml"
    filter_spec.write_text(
        yaml.safe_dump(spec_dict(devices=["cpu", "cuda"], dtypes=DTYPES)), encoding="utf-8"
    )
    unknown_spec = tmp / "unknown.yaml"
    unknown_spec.write_text(
        yaml.safe_dump(spec_dict(model={"plugin": "no-such-model"})), encoding="utf-8"
    )
    dtype_args = [arg for dtype in DTYPES for arg in ("--dtype", dtype)]
    filter_args: list[str | Path] = ["run", filter_spec, "--device", "cpu", "--dtype", "float64"]
    filter_args += ["--junit-xml", tmp / "filter.xml"]
    jobs: dict[str, tuple[list[str | Path], dict[str, str], Path]] = {
        "shipped": (
            ["run", "specs/charrnn.yaml", *dtype_args, "--junit-xml", tmp / "new" / "out.xml"],
            {},
            tmp / "new" / "out.xml",  # the folder does not exist yet
        ),
        "filter": (
            filter_args,
            {},
            tmp / "filter.xml",
        ),
        "unknown-model": (["run", unknown_spec], {}, unknown_spec),
    }
    if TINY_SPEC.is_file() and (SHARED_DATA / "tinyshakespeare.txt").is_file():
        cache = tmp / "cache"
        env = {"GRADAUDIT_DATA_DIR": str(SHARED_DATA), "GRADAUDIT_CACHE_DIR": str(cache)}
        jobs["tiny"] = (["run", TINY_SPEC, "--device", "cpu"], env, cache)

    def one(job: str) -> Run:
        args, env, path = jobs[job]
        env = {"OMP_NUM_THREADS": "1", **env}  # the runs share the cores: one thread each
        return run_cli(*args, cwd=REPO, env=env, timeout=300), path

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


# --- the shipped hermetic spec ------------------------------------------------------------------


def runs_here(device: str) -> bool:
    if device == "cpu":
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and CUDA and int(index or 0) < torch.cuda.device_count()


def check_shipped_run(
    proc: subprocess.CompletedProcess[str], junit: Path, dtypes: list[str]
) -> None:
    """The shipped spec passed on every device here, skipped the others; table and JUnit agree."""
    devices = yaml.safe_load(SHIPPED_SPEC.read_text(encoding="utf-8"))["devices"]
    assert "cpu" in devices and "cuda" in devices
    groups = [(device, dtype) for device in devices for dtype in dtypes]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.startswith("gradaudit: charrnn (specs/charrnn.yaml): ")

    # The table: a PASS row per tensor where the device runs; one SKIP row per group where not.
    rows = table_rows(proc.stdout)
    expected_rows: list[tuple[str, str, str, str]] = []
    for device, dtype in groups:
        if runs_here(device):
            expected_rows += [(device, dtype, tensor, "PASS") for tensor in CHARRNN_T8]
        else:
            expected_rows.append((device, dtype, "(15", "SKIP"))
    got_rows = [(r[0], r[1], r[2], r[-1] if runs_here(r[0]) else r[4]) for r in rows]
    assert got_rows == expected_rows
    for r in rows:
        if not runs_here(r[0]):
            assert "(15 tensors) SKIP" in " ".join(r) and "not available" in " ".join(r), r
    skipped = 15 * sum(not runs_here(device) for device, _ in groups)
    total = 15 * len(groups)
    assert f"{total - skipped} passed, 0 failed, 0 errors, {skipped} skipped" in proc.stdout

    # The JUnit: a suite per (device, dtype), a testcase per tensor.
    xml = JUnitXml.fromfile(str(junit))
    suites = list(xml)
    assert [s.name for s in suites] == [f"charrnn[{d},{t}]" for d, t in groups]
    seen: set[tuple[str, str]] = set()
    for suite, (device, dtype) in zip(suites, groups, strict=True):
        cases = list(suite)
        assert [c.name for c in cases] == CHARRNN_T8
        assert {c.classname for c in cases} == {f"gradaudit.charrnn.{device}.{dtype}"}
        seen |= {(c.classname, c.name) for c in cases}
        outcomes = [outcome(c) for c in cases]
        want = "pass" if runs_here(device) else "skipped"
        assert outcomes == [want] * 15, suite.name
        assert (suite.tests, suite.failures, suite.errors) == (15, 0, 0)
        assert suite.skipped == outcomes.count("skipped")
        if want == "skipped":
            for case in cases:
                (skip,) = case.result
                assert f"{device} is not available" in (skip.message or "")
    assert len(seen) == total  # (classname, name) pairs are unique
    assert (xml.tests, xml.failures, xml.errors) == (total, 0, 0)


def test_shipped_spec_passes_with_table_and_junit(heavy_runs: dict[str, Run]) -> None:
    """cpu/cuda x float32/float64 of the shipped spec (its other dtypes: the slow test below)."""
    proc, junit = heavy_runs["shipped"]
    check_shipped_run(proc, junit, DTYPES)


@pytest.mark.slow
def test_shipped_spec_passes_on_every_dtype_it_lists(tmp_path: Path, run_cli: CliRun) -> None:
    dtypes = yaml.safe_load(SHIPPED_SPEC.read_text(encoding="utf-8"))["dtypes"]
    assert set(DTYPES) <= set(dtypes)
    junit = tmp_path / "reports" / "out.xml"
    proc = run_cli("run", "specs/charrnn.yaml", "--junit-xml", junit, cwd=REPO, timeout=600)
    check_shipped_run(proc, junit, dtypes)


def test_device_and_dtype_options_filter(heavy_runs: dict[str, Run]) -> None:
    proc, junit = heavy_runs["filter"]  # a cpu+cuda x float32+float64 spec, run for cpu/float64
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = table_rows(proc.stdout)
    assert len(rows) == 12  # the small spec: block_size 5 -> 12 tensors
    assert {(r[0], r[1], r[-1]) for r in rows} == {("cpu", "float64", "PASS")}
    assert "12 passed, 0 failed, 0 errors, 0 skipped" in proc.stdout
    suites = list(JUnitXml.fromfile(str(junit)))
    assert [s.name for s in suites] == ["small[cpu,float64]"]
    assert {c.classname for c in suites[0]} == {"gradaudit.small.cpu.float64"}


# --- spec and usage errors: exit 2, one line, no traceback --------------------------------------

VALID_HEAD = """\
name: bad
model:
  plugin: charrnn
  options: {d_model: 8, n_hidden: 16}
gradients: {plugin: charrnn-bptt}
"""


@pytest.mark.parametrize("command", ["validate", "run"])
def test_unknown_key_is_one_line_with_its_line_and_a_suggestion(
    tmp_path: Path, run_cli: CliRun, command: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(VALID_HEAD + "devices: [cpu]\ndtype: [float32]\n", encoding="utf-8")
    line = one_line_error(run_cli(command, spec))
    assert line.endswith(f"{spec}:7: dtype: unknown key (did you mean 'dtypes'?)"), line


@pytest.mark.parametrize("value", ["1e-6", "1E-6", "1.0e-6", "0.000001"])
def test_tolerance_in_exponent_notation_reads_as_a_number(
    tmp_path: Path, run_cli: CliRun, value: str
) -> None:
    spec = tmp_path / "tol.yaml"
    spec.write_text(VALID_HEAD + f"tolerance: {{rtol: {value}, atol: 1e-9}}\n", encoding="utf-8")
    proc = run_cli("validate", spec)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith(f"{spec}: ok (schema)")


def test_quoted_number_is_rejected_with_its_line(tmp_path: Path, run_cli: CliRun) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(VALID_HEAD + 'batches:\n  size: 4\n  seed: 5\n  count: "8"\n', encoding="utf-8")
    line = one_line_error(run_cli("run", spec))
    assert f"{spec}:9: batches.count: " in line, line
    assert "integer" in line, line


def test_unknown_model_plugin_lists_the_available_ones(heavy_runs: dict[str, Run]) -> None:
    line = one_line_error(heavy_runs["unknown-model"][0])
    assert "unknown model plugin 'no-such-model'" in line, line
    available = line.split("available:", 1)[1]
    assert "charrnn" in available, line


def test_unwritable_junit_path_fails_before_running(
    tmp_path: Path, run_cli: CliRun, write_spec: SpecWriter
) -> None:
    spec = write_spec()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    proc = run_cli("run", spec, "--junit-xml", blocker / "x.xml")
    line = one_line_error(proc)
    assert str(blocker / "x.xml") in line, line
    assert proc.stdout == ""  # no banner, no table: nothing ran
    assert blocker.read_text(encoding="utf-8") == "not a folder\n"


def test_junit_path_that_is_a_directory_is_rejected(
    tmp_path: Path, run_cli: CliRun, write_spec: SpecWriter
) -> None:
    line = one_line_error(run_cli("run", write_spec(), "--junit-xml", tmp_path))
    assert "directory" in line, line


@pytest.mark.parametrize("command", ["run", "validate"])
def test_missing_spec_file(tmp_path: Path, run_cli: CliRun, command: str) -> None:
    missing = tmp_path / "nope.yaml"
    line = one_line_error(run_cli(command, missing))
    assert str(missing) in line, line


# --- start-up stays torch-free -------------------------------------------------------------------

NO_TORCH_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from gradaudit.cli import main
    sys.argv = ["gradaudit", *sys.argv[1:]]
    out = io.StringIO()
    code = None
    with contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print(json.dumps({"code": code, "stdout": out.getvalue(), "torch": torch}))
    """
)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--help"], "Exit codes"),
        (["run", "--help"], "--junit-xml"),
        (["validate", "specs/charrnn.yaml"], "specs/charrnn.yaml: ok"),
        (["validate", "specs/charrnn.yaml", "specs/charrnn-shakespeare.yaml"], ": ok"),
        # the supervisor of a run: torch is the executor's (it cost every run 1.5 s twice)
        (["run", "specs/op-rmsnorm.yaml", "--dtype", "float32", "--variant", "base"], "passed"),
        (["plan", "specs/op-rmsnorm.yaml", "--json"], '"cases"'),
    ],
)
def test_help_validate_and_a_runs_supervisor_do_not_import_torch(
    args: list[str], expect: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_PROBE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None), result
    assert expect in result["stdout"]
    assert result["torch"] == [], f"{args} imported {result['torch'][:5]}"


def test_console_script_help_exits_0(run_cli: CliRun) -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "validate", "plugins"):
        assert re.search(rf"^\s+{command}\b", proc.stdout, re.M), proc.stdout


# --- the seed notebook's setup on Tiny Shakespeare ------------------------------------------------


def test_tinyshakespeare_spec_from_the_data_dir(heavy_runs: dict[str, Run]) -> None:
    if "tiny" not in heavy_runs:
        pytest.skip(f"no {TINY_SPEC} or no Tiny Shakespeare in {SHARED_DATA}")
    proc, cache = heavy_runs["tiny"]
    dtypes = yaml.safe_load(TINY_SPEC.read_text(encoding="utf-8"))["dtypes"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 batches of inputs 1x8, targets 1x8" in proc.stdout
    rows = table_rows(proc.stdout)
    assert [(r[0], r[1], r[2], r[-1]) for r in rows] == [
        ("cpu", dtype, tensor, "PASS") for dtype in dtypes for tensor in CHARRNN_T8
    ]
    logits = next(r for r in rows if r[2] == "logits")
    assert "0/4160" in logits  # 8 batches x 1 x 8 positions x a 65-character vocabulary
    assert not (cache / "data").exists() or not any((cache / "data").iterdir())  # no download


# --- command-line filters are usage, and bad usage exits 2 ---------------------------------------
# In-process through the console script's entry point (torch is already imported here, so these
# cost no start-up); the subprocess tests above cover the real process boundary.


def run_main(
    args: list[str | Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[object, str, str]:
    from gradaudit.cli import main

    monkeypatch.setattr(sys, "argv", ["gradaudit", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_in_process_entry_point_agrees_with_the_subprocess(
    write_spec: SpecWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["run", write_spec(), "--dtype", "float32"], monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert {(r[0], r[1], r[-1]) for r in table_rows(out)} == {("cpu", "float32", "PASS")}


def test_unknown_dtype_option_is_a_usage_error(
    write_spec: SpecWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["run", write_spec(), "--dtype", "float8"], monkeypatch, capsys)
    assert code == 2, err  # was 3: an internal KeyError from the tolerance table
    assert len(err.strip().splitlines()) == 1 and "float8" in err, err
    assert table_rows(out) == []


def test_unknown_device_option_is_a_usage_error(
    write_spec: SpecWriter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["run", write_spec(), "--device", "gpu"], monkeypatch, capsys)
    assert code == 2, err  # was 0: a typo'd device was reported as skipped and passed CI
    assert len(err.strip().splitlines()) == 1 and "gpu" in err, err
    assert table_rows(out) == []


def test_repeated_filter_option_does_not_run_a_group_twice(
    tmp_path: Path,
    write_spec: SpecWriter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    junit = tmp_path / "out.xml"
    args: list[str | Path] = ["run", write_spec(), "--dtype", "float32"]
    args += ["--device", "cpu", "--device", "cpu"]
    code, out, _ = run_main([*args, "--junit-xml", junit], monkeypatch, capsys)
    if code == 0:  # de-duplicating the groups is as good as rejecting the repeat
        rows = [(r[0], r[1], r[2]) for r in table_rows(out)]
        assert len(rows) == len(set(rows)) == 12
        assert [s.name for s in JUnitXml.fromfile(str(junit))] == ["small[cpu,float32]"]
    else:
        assert code == 2
