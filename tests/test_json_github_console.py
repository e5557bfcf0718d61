"""The JSON report, the GitHub Actions output and the console, through the real console script.

The environment is controlled per run (GITHUB_ACTIONS, GITHUB_STEP_SUMMARY, NO_COLOR), stdout is
a pipe or a pseudo-terminal, and the runs a module needs start together (each is mostly torch's
import).
"""

from __future__ import annotations

import json
import math
import os
import pty
import re
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ZYGOTE
from tests.negative_controls import tensor_names

REPO = Path(__file__).resolve().parents[1]
GRADAUDIT = Path(sys.executable).with_name("gradaudit")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SUMMARY = re.compile(r"(\d+) passed, (\d+) failed, (\d+) errors, (\d+) skipped in \d+\.\d\ds")
VERBOSE = re.compile(r"  (cpu) (float32|float64) batch (\d+) \(seed (\d+)\) (\S+): (.*)")
ANNOTATION = re.compile(r"::error file=([^,]*),line=(\d+),title=([^:]*)::(.+)")
CASE_KEYS = {
    "device",
    "dtype",
    "tensor",
    "batch",
    "seed",
    "check",
    "status",
    "tolerance",
    "exact",
    "max_abs",
    "max_rel",
    "budget",
    "mismatched",
    "nonfinite",
    "numel",
    "worst_index",
    "manual",
    "reference",
    "allowed",
    "reference_error",
    "sym_rel",
    "cosine",
}
TENSORS_T5 = tensor_names(5)
DTYPES = ("float32", "float64")
# What the plugin below gets wrong: scaled gradients below the output layer, a NaN in the
# logits' gradient and an infinity in V.bias's. Only V.weight stays right.
WRONG = set(TENSORS_T5) - {"V.weight"}

WRONG_PLUGIN = textwrap.dedent(
    '''
    """The shipped BPTT with realistic damage: a scale slip, a NaN and an Inf."""
    from gradaudit_charrnn.bptt import charrnn_bptt

    from gradaudit import hookimpl

    def damaged(model, batch, forward):
        grads = dict(charrnn_bptt(model, batch, forward))
        for name in list(grads):
            if name.startswith(("h.", "C.", "U.", "W.")):
                grads[name] = grads[name] * 1.5
        grads["logits"] = grads["logits"].clone()
        grads["logits"][0, 0, 0] = float("nan")
        grads["V.bias"] = grads["V.bias"].clone()
        grads["V.bias"][0] = float("inf")
        return grads

    @hookimpl
    def register_gradients(register):
        register("damaged", damaged)
    '''
)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without gradaudit's (but the test zygote's), GitHub's and NO_COLOR
    variables, plus `extra`."""
    base = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("GRADAUDIT_") or k == ZYGOTE)
        and k not in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "NO_COLOR")
    }
    base.update(extra or {})
    return base


def run(*args: Any, extra_env: Mapping[str, str] | None = None, tty: bool = False) -> Result:
    """Run the console script; with tty=True its stdout is a pseudo-terminal."""
    command = [str(GRADAUDIT), *map(str, args)]
    if not tty:
        proc = subprocess.run(
            command,
            cwd=REPO,
            env=env(extra_env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)
    main, child = pty.openpty()
    with subprocess.Popen(
        command,
        cwd=REPO,
        env=env(extra_env),
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=subprocess.PIPE,
    ) as popen:
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main)
        assert popen.stderr is not None
        stderr = popen.stderr.read().decode()
        returncode = popen.wait(timeout=300)
    stdout = b"".join(chunks).decode().replace("\r\n", "\n")
    return Result(returncode, stdout, stderr)


def no_constants(value: str) -> Any:
    raise ValueError(f"non-standard JSON constant {value}")


def totals_of(line: str) -> dict[str, int]:
    match = SUMMARY.fullmatch(line)
    assert match, line
    return dict(
        zip(("passed", "failed", "errors", "skipped"), map(int, match.groups()), strict=True)
    )


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, spec_dict: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("outputs")
    (tmp / "damaged.py").write_text(WRONG_PLUGIN, encoding="utf-8")
    failing = tmp / "failing.yaml"
    failing.write_text(
        yaml.safe_dump(
            spec_dict(plugins=["damaged.py"], gradients={"plugin": "damaged"}), sort_keys=False
        ),
        encoding="utf-8",
    )
    both = tmp / "cpu-and-cuda.yaml"
    both.write_text(
        yaml.safe_dump(spec_dict(devices=["cpu", "cuda"]), sort_keys=False), encoding="utf-8"
    )
    step_summary = tmp / "step-summary.md"
    step_summary.write_text("## an earlier step\n\n", encoding="utf-8")
    github = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step_summary)}
    jobs: dict[str, Callable[[], Result]] = {
        "github": lambda: run("run", failing, "--json", tmp / "report.json", extra_env=github),
        "quiet": lambda: run("run", failing, "-q"),
        "verbose-color": lambda: run("run", failing, "-v", "--color"),
        "tty": lambda: run("run", failing, "-q", tty=True),
        "tty-no-color": lambda: run("run", failing, "-q", tty=True, extra_env={"NO_COLOR": "1"}),
        "require-cuda": lambda: run("run", both, "--require-device", "cuda"),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        results = {name: future.result() for name, future in futures.items()}
    return {
        "results": results,
        "spec": failing,
        "json": tmp / "report.json",
        "step_summary": step_summary,
    }


# --- JSON ----------------------------------------------------------------------------------------


def load_report(runs: dict[str, Any]) -> dict[str, Any]:
    result = runs["results"]["github"]
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    data = json.loads(runs["json"].read_text(encoding="utf-8"), parse_constant=no_constants)
    assert isinstance(data, dict)
    return data


def test_json_is_strict_and_has_one_record_per_case(runs: dict[str, Any]) -> None:
    data = load_report(runs)
    assert data["schema"] == "gradaudit-run"
    assert data["schema_version"] == 1
    assert data["stopped"] is None
    assert data["run"]["spec"] == str(runs["spec"])
    cases = data["cases"]
    keys = Counter((c["device"], c["dtype"], c["tensor"], c["batch"]) for c in cases)
    expected = {("cpu", d, t, b) for d in DTYPES for t in TENSORS_T5 for b in (0, 1)}
    assert set(keys) == expected
    assert set(keys.values()) == {1}, "a case reported twice"
    for case in cases:
        assert case["seed"] == 3 + case["batch"]
        assert case["status"] == ("fail" if case["tensor"] in WRONG else "pass")
    # NaN and Inf are written as strings, never as the non-standard NaN/Infinity tokens.
    logits = next(c for c in cases if c["tensor"] == "logits")
    assert logits["manual"] == "nan" and logits["max_abs"] == "inf" and logits["nonfinite"] >= 1
    v_bias = next(c for c in cases if c["tensor"] == "V.bias")
    assert v_bias["manual"] == "inf" and v_bias["max_abs"] == "inf"


def test_json_case_records_keep_the_schema_1_fields(runs: dict[str, Any]) -> None:
    data = load_report(runs)
    assert data["schema_version"] == 1
    for case in data["cases"]:
        missing = CASE_KEYS - set(case)  # fields may be added within a version, never dropped
        assert not missing, f"case record lacks {sorted(missing)}"
        assert case["tolerance"]["mode"] in ("allclose", "baseline", "ulps")
        assert case["tolerance"]["rtol"] > 0 and case["tolerance"]["atol"] > 0


def test_json_groups_and_totals_agree_with_cases_and_console(runs: dict[str, Any]) -> None:
    data = load_report(runs)
    cases = data["cases"]
    counted = dict.fromkeys(("passed", "failed", "errors", "skipped"), 0)
    word = {"pass": "passed", "fail": "failed", "error": "errors", "skipped": "skipped"}
    assert [(g["device"], g["dtype"]) for g in data["groups"]] == [("cpu", d) for d in DTYPES]
    for group in data["groups"]:
        assert group["complete"] is True and group["skipped"] is None
        assert [t["tensor"] for t in group["tensors"]] == TENSORS_T5
        for tensor in group["tensors"]:
            counted[word[tensor["status"]]] += 1
            mine = [
                c for c in cases if (c["dtype"], c["tensor"]) == (group["dtype"], tensor["tensor"])
            ]
            assert tensor["batches"] == len(mine) == 2
            assert tensor["failed_batches"] == sum(c["status"] == "fail" for c in mine)
            assert tensor["numel"] == sum(c["numel"] for c in mine)
            assert tensor["mismatched"] == sum(c["mismatched"] for c in mine)
            assert float(tensor["max_abs"]) == max(float(c["max_abs"]) for c in mine)
            assert tensor["status"] == ("fail" if tensor["tensor"] in WRONG else "pass")
    assert data["totals"] == counted
    assert counted == {"passed": 2, "failed": 2 * len(WRONG), "errors": 0, "skipped": 0}
    closing = [
        line for line in runs["results"]["github"].stdout.splitlines() if SUMMARY.fullmatch(line)
    ]
    assert len(closing) == 1
    assert totals_of(closing[0]) == data["totals"]
    assert math.isinf(float(data["groups"][0]["tensors"][0]["max_abs"]))


# --- GitHub Actions ------------------------------------------------------------------------------


def test_github_annotations_point_at_the_gradients_line(runs: dict[str, Any]) -> None:
    result = runs["results"]["github"]
    spec_lines = runs["spec"].read_text(encoding="utf-8").splitlines()
    gradients_line = 1 + next(i for i, s in enumerate(spec_lines) if s.startswith("gradients:"))
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(annotations) == 10, "at most 10 annotations (GitHub shows 10 per step)"
    titles = []
    for line in annotations:
        match = ANNOTATION.fullmatch(line)
        assert match, line
        assert match[1] == str(runs["spec"])
        assert int(match[2]) == gradients_line
        assert "\n" not in match[4] and match[4].strip()
        titles.append(match[3])
    # In spec order: the first failing tensors of cpu/float32 (`:` is escaped as %3A).
    first = [t for t in TENSORS_T5 if t in WRONG][:10]
    assert titles == [f"gradaudit cpu/float32 {t}%3A fail" for t in first]
    warnings = [line for line in result.stdout.splitlines() if line.startswith("::warning")]
    assert len(warnings) == 1 and f"{2 * len(WRONG) - 10} more" in warnings[0]


def test_github_step_summary_gets_a_table_appended(runs: dict[str, Any]) -> None:
    text = runs["step_summary"].read_text(encoding="utf-8")
    assert text.startswith("## an earlier step\n\n"), "the summary file was overwritten"
    assert "| device | dtype | tensor | result |" in text
    rows = [line for line in text.splitlines() if line.startswith("| cpu |")]
    assert len(rows) == 2 * len(TENSORS_T5)
    results = Counter(row.split("|")[4].strip() for row in rows)
    assert results == {"fail": 2 * len(WRONG), "pass": 2}
    assert "❌" in text and "2 passed, 22 failed, 0 errors, 0 skipped" in text


def test_no_github_output_outside_actions(runs: dict[str, Any]) -> None:
    for name in ("quiet", "verbose-color", "tty", "tty-no-color"):
        result = runs["results"][name]
        assert result.returncode == 1, name
        assert "::error" not in result.stdout and "::warning" not in result.stdout, name
        assert "::error" not in result.stderr, name


# --- console -------------------------------------------------------------------------------------


def test_quiet_prints_only_the_summary_line(runs: dict[str, Any]) -> None:
    result = runs["results"]["quiet"]
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert totals_of(lines[0]) == {"passed": 2, "failed": 22, "errors": 0, "skipped": 0}
    assert result.stderr == ""


def test_verbose_prints_a_line_per_batch_and_tensor(runs: dict[str, Any]) -> None:
    result = runs["results"]["verbose-color"]
    assert result.returncode == 1
    plain = ANSI.sub("", result.stdout)
    found = {}
    for line in plain.splitlines():
        match = VERBOSE.fullmatch(line)
        if match:
            key = (match[2], int(match[3]), match[5])
            assert key not in found, line
            assert int(match[4]) == 3 + int(match[3])  # the batch's seed
            found[key] = match[6]
    assert set(found) == {(d, b, t) for d in DTYPES for b in (0, 1) for t in TENSORS_T5}
    for (_, _, tensor), rest in found.items():
        assert rest.endswith(" FAIL" if tensor in WRONG else " ok"), (tensor, rest)
    assert totals_of(plain.splitlines()[-1])["failed"] == 22


def test_color_only_when_forced_or_on_a_terminal_without_no_color(runs: dict[str, Any]) -> None:
    results = runs["results"]
    for name in ("github", "quiet"):  # stdout is a pipe
        assert "\x1b[" not in results[name].stdout, name
    assert "\x1b[" not in results["tty-no-color"].stdout, "NO_COLOR was ignored on a terminal"
    assert SUMMARY.fullmatch(results["tty-no-color"].stdout.strip())
    # The controls: a terminal without NO_COLOR, and --color into a pipe, are coloured.
    assert ANSI.search(results["tty"].stdout), results["tty"].stdout
    assert "\x1b[31m" in results["verbose-color"].stdout  # FAIL lines in red
    tty_line = ANSI.sub("", results["tty"].stdout).strip()
    assert totals_of(tty_line) == totals_of(results["quiet"].stdout.strip())


def test_quiet_and_verbose_together_is_a_usage_error(tmp_path: Path) -> None:
    result = run("run", tmp_path / "never-read.yaml", "-q", "-v")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "-q and -v cannot be used together" in result.stderr
    assert "Traceback" not in result.stderr


def test_require_device_that_is_absent(runs: dict[str, Any]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = runs["results"]["require-cuda"]
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "", "the audit started"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradaudit: error: --require-device cuda: ")
    assert "not available" in lines[0]


# --- GitHub, in-process: annotation order, one per distinct error, the step-summary preflight ---


def github_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tensors: list[Any], stopped: str | None = None
) -> list[str]:
    import io

    from gradaudit.report.github import GitHubReporter
    from tests.report_fixtures import group, loaded_spec, run_info, run_summary

    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = io.StringIO()
    reporter = GitHubReporter(out)
    reporter.start(run_info(loaded_spec(tmp_path), [t.tensor for t in tensors]))
    reporter.finish(run_summary(group(tensors), stopped=stopped))
    return out.getvalue().splitlines()


def test_github_failures_come_first_and_one_crash_is_one_annotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.report_fixtures import summary

    crash = "RuntimeError: plugin crashed"
    tensors = [summary(f"t{i}", [], (crash,)) for i in range(12)]
    tensors.insert(5, summary("wrong", [0.5, 4.0]))
    tensors.append(summary("mixed", [3.0], ("ValueError: other",)))
    tensors.append(summary("right", [0.5]))
    lines = github_lines(tmp_path, monkeypatch, tensors)
    titles = [ANNOTATION.fullmatch(line)[3] for line in lines if line.startswith("::error")]  # type: ignore[index]
    assert titles == [
        "gradaudit cpu/float32 wrong%3A fail",
        "gradaudit cpu/float32 mixed%3A fail",
        "gradaudit cpu/float32 t0 and 11 more%3A error",
    ]
    crash_line = next(line for line in lines if "t0 and 11 more" in line)
    assert crash in crash_line and "12 tensors" in crash_line and "t11" in crash_line
    assert not [line for line in lines if line.startswith("::warning")]


def test_github_annotations_are_capped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.report_fixtures import summary

    tensors = [summary(f"bad{i}", [2.0]) for i in range(11)]
    tensors += [summary(f"err{i}", [], (f"E{i}",)) for i in range(2)]
    lines = github_lines(tmp_path, monkeypatch, tensors, stopped="interrupted by SIGTERM")
    assert sum(line.startswith("::error") for line in lines) == 10
    assert [line for line in lines if line.startswith("::warning")] == [
        "::warning::gradaudit: 4 more failing tensors or errors "
        "(see the job summary or the JUnit report)"
    ]


def test_github_text_is_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.report_fixtures import summary

    lines = github_lines(tmp_path, monkeypatch, [summary("W\x0c", [], ("E\x1b[31m\x00",))])
    (line,) = lines
    assert "\x0c" not in line and "\x00" not in line and "\x1b" not in line
    assert "W\\x0c" in line


@pytest.mark.parametrize("where", ["a-directory", "under-a-file"])
def test_github_step_summary_preflight_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from gradaudit.errors import OutputError
    from gradaudit.report.github import GitHubReporter

    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    target = tmp_path if where == "a-directory" else blocker / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    with pytest.raises(OutputError, match="GITHUB_STEP_SUMMARY"):
        GitHubReporter.preflight()
    assert blocker.read_text(encoding="utf-8") == "x"


def test_github_step_summary_preflight_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradaudit.report.github import GitHubReporter

    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    GitHubReporter.preflight()  # not in Actions: nothing to check
    existing = tmp_path / "summary.md"
    existing.write_text("## earlier\n", encoding="utf-8")
    for path in (existing, tmp_path / "new" / "summary.md"):
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
        GitHubReporter.preflight()
    assert existing.read_text(encoding="utf-8") == "## earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "summary.md"]
