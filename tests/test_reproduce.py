"""A failure's reproduce line is a command a user can paste, and pasted it gives the same
worst element and the same verdict: for a batch that failed (it runs that batch alone,
with the run's own model) and for a failure only the systematic check saw (it runs every
batch that check needs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.conftest import REPO, run_gradaudit
from tests.test_verdicts import SCALED_BPTT


def _block(stdout: str, title: str) -> list[str]:
    """The failure block that starts with `title`, up to the next block or the summary."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    ends = ("--- ", "gradaudit: ")
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith(ends) or re.match(r"\d+ passed, ", lines[i])
        ),
        len(lines),
    )
    return lines[start:end]


def _pasted(block: list[str]) -> tuple[list[str], str]:
    """Run the block's reproduce line as a shell would; (its block, the command)."""
    line = next(line for line in block if line.startswith("reproduce: "))
    command = line.removeprefix("reproduce: ").split("  (")[0]
    words = shlex.split(command)
    assert words[:2] == ["gradaudit", "run"], command
    done = run_gradaudit(*words[1:])
    assert done.returncode == 1, done.stdout + done.stderr
    return _block(done.stdout, block[0]), command


def _same(block: list[str], again: list[str], *prefixes: str) -> None:
    for prefix in prefixes:
        want = [line for line in block if line.startswith(prefix)]
        assert want and want == [line for line in again if line.startswith(prefix)], prefix


def test_a_gallery_bug_reproduces_from_its_pasted_command() -> None:
    """Batch 6 of 8 alone, with the model the whole run built (model.seed defaults to
    batches.seed, not to the batch's own seed)."""
    args = [
        "--set", "plugins=[gradaudit_charrnn.gallery]",
        "--set", "gradients.plugin=charrnn-bptt-bug-dW-misses-h0",
    ]  # fmt: skip
    where = ("--device", "cpu", "--dtype", "float32")
    done = run_gradaudit("run", "specs/charrnn.yaml", *where, *args)
    assert done.returncode == 1, done.stdout + done.stderr
    block = _block(done.stdout, "--- FAIL cpu/float32 W.weight")
    again, command = _pasted(block)
    assert " --batch " in command
    _same(block, again, "--- FAIL", "result:", "worst element:", "budget used:")


def test_a_systematic_only_failure_is_shown_and_reproduces_over_its_batches(
    tmp_path: Path,
) -> None:
    (tmp_path / "scaled.py").write_text(SCALED_BPTT, encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    text = (REPO / "specs" / "charrnn.yaml").read_text(encoding="utf-8")
    spec.write_text(text + f"plugins: [{tmp_path / 'scaled.py'}]\n", encoding="utf-8")
    done = run_gradaudit(
        "run", spec, "--device", "cpu", "--dtype", "bfloat16",
        "--set", "gradients.plugin=charrnn-bptt-scaled",
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    block = _block(done.stdout, "--- FAIL cpu/bfloat16 W.weight")
    assert any(line.startswith("systematic error (fail): bias") for line in block)
    assert any("beyond its bound" in line for line in block)  # the verdict line says why
    again, command = _pasted(block)
    assert "--batch" not in command
    _same(block, again, "--- FAIL", "result:", "systematic error (fail)", "worst element:")


def test_model_seed_defaults_to_the_batches_seed_and_can_be_set(tmp_path: Path) -> None:
    args = ("--device", "cpu", "--dtype", "float64", "--set", "batches.count=1", "-v")
    same = run_gradaudit("run", "specs/charrnn.yaml", *args, "--set", "model.seed=64")
    default = run_gradaudit("run", "specs/charrnn.yaml", *args)
    other = run_gradaudit("run", "specs/charrnn.yaml", *args, "--set", "model.seed=65")
    for done in (same, default, other):
        assert done.returncode == 0, done.stdout + done.stderr
    rows = [[line for line in d.stdout.splitlines() if "batch 0" in line] for d in (same, default)]
    assert rows[0] == rows[1]
    assert rows[0] != [line for line in other.stdout.splitlines() if "batch 0" in line]
