"""The pre-commit hooks (.pre-commit-hooks.yaml), run the way pre-commit runs them: the
manifest's fields, its `files` regex on paths (pre-commit's `re.search` on forward-slash
paths), then the entry with the matching files appended as arguments."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

REQUIRED = {"id", "name", "entry", "language"}  # pre-commit's manifest schema
ALLOWED = REQUIRED | {
    "files", "exclude", "types", "types_or", "exclude_types", "always_run", "fail_fast",
    "verbose", "pass_filenames", "description", "language_version", "log_file",
    "require_serial", "stages", "args", "additional_dependencies", "minimum_pre_commit_version",
}  # fmt: skip


@pytest.fixture(scope="module")
def hooks() -> dict[str, dict[str, Any]]:
    manifest = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text("utf-8"))
    assert isinstance(manifest, list)
    return {hook["id"]: hook for hook in manifest}


def test_the_manifest(hooks: dict[str, dict[str, Any]]) -> None:
    assert set(hooks) == {"gradaudit-validate", "gradaudit-validate-system"}
    for hook in hooks.values():
        assert REQUIRED <= set(hook) <= ALLOWED, hook
        assert hook["entry"] == "gradaudit validate" and hook["pass_filenames"] is True
    assert hooks["gradaudit-validate"]["language"] == "python"
    assert hooks["gradaudit-validate-system"]["language"] == "system"
    assert hooks["gradaudit-validate"]["files"] == hooks["gradaudit-validate-system"]["files"]


@pytest.mark.parametrize(
    ("path", "matched"),
    [
        ("specs/charrnn.yaml", True),
        ("specs/nested/op.yml", True),
        ("models/specs/mlp.yaml", True),
        ("ci/rnn.gradaudit.yaml", True),
        ("rnn.gradaudit.yml", True),
        ("specs/schema.json", False),
        ("specs/README.md", False),
        ("docs/example.yaml", False),
        (".github/workflows/ci.yml", False),
        ("myspecs/x.yaml", False),
        ("specs.yaml", False),
        ("ci/gradaudit.yaml", False),
    ],
)
def test_which_files_the_hook_sees(
    hooks: dict[str, dict[str, Any]], path: str, matched: bool
) -> None:
    assert bool(re.search(hooks["gradaudit-validate"]["files"], path)) is matched


def run_hook(hook: dict[str, Any], files: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """What pre-commit does for a hook: the entry's words, then the staged files that match."""
    names = [f for f in files if re.search(hook["files"], f)]
    assert names, "pre-commit skips a hook that matches no file"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [*shlex.split(hook["entry"]), *names], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


def test_good_specs_pass_and_a_bad_one_fails(
    hooks: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    good = (REPO / "specs" / "charrnn.yaml").read_text("utf-8")
    (specs / "good.yaml").write_text(good, "utf-8")
    (specs / "op.yml").write_text((REPO / "specs" / "op-rmsnorm.yaml").read_text("utf-8"), "utf-8")
    (tmp_path / "other.gradaudit.yaml").write_text(good, "utf-8")
    (specs / "bad.yaml").write_text("name: bad\nmodel: {plugin: charrnn}\n", "utf-8")
    (tmp_path / "notes.yaml").write_text("not: a spec\n", "utf-8")  # not matched, not run
    hook = hooks["gradaudit-validate"]
    clean = run_hook(hook, ["specs/good.yaml", "specs/op.yml", "other.gradaudit.yaml",
                            "notes.yaml"], tmp_path)  # fmt: skip
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "notes.yaml" not in clean.stdout + clean.stderr
    dirty = run_hook(hook, ["specs/good.yaml", "specs/bad.yaml"], tmp_path)
    assert dirty.returncode == 2
    assert "specs/bad.yaml:1: gradients: Field required" in dirty.stderr
