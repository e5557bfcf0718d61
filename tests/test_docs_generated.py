"""The command outputs shown in the README and docs are what the commands print now."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, cli_env


def test_generated_docs_match_the_commands() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "generate.py"), "--check"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"run `python docs/generate.py`:\n{done.stdout}{done.stderr}"


def test_readme_is_a_front_door() -> None:
    assert len((REPO / "README.md").read_bytes()) <= 10 * 1024
