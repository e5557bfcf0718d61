"""The command outputs shown in the README and docs are what the commands print now."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

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


def _generate_module() -> Any:
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHOWN = "\n".join(  # the README's example, as another CPU might not print it
    [
        "device   dtype     tensor    exact  within  max abs   budget   mismatched     result",
        "cpu      float32   logits    False  True    1.35e-10  3.4%     0/159744       PASS",
        "cpu      float32   h.1       False  True    2.27e-10  25.4%    0/51200        PASS",
        "30 passed, 0 failed, 0 errors, 0 skipped in 0.32s",
    ]
)


def _perturbed(text: str) -> str:
    """The same output from a CPU that rounds float32 differently: other last digits, other
    widths, the columns padded to the same starts."""
    swaps = {"3.4%     ": "3.31%    ", "1.35e-10": "1.3e-10 ", "25.4%    ": "100.0%   "}
    for old, new in swaps.items():
        text = text.replace(old, new)
    return text.replace("0.32s", "12.5s")


def test_a_float_result_with_other_last_digits_is_not_stale() -> None:
    generate = _generate_module()
    assert _perturbed(SHOWN) != SHOWN
    assert generate.normalised(_perturbed(SHOWN)) == generate.normalised(SHOWN)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace("PASS", "FAIL", 1),  # a word
        lambda t: t.replace("budget   ", "budget   spread ").replace("3.4%", "3.4% 1.0"),
        lambda t: "\n".join(t.splitlines()[:-2] + t.splitlines()[-1:]),  # a line
        lambda t: t.replace("h.1", "h.10"),  # a name with a number in it
    ],
    ids=["word", "column", "line", "name"],
)
def test_a_real_change_is_stale(change: Callable[[str], str]) -> None:
    generate = _generate_module()
    assert generate.normalised(change(SHOWN)) != generate.normalised(SHOWN)
