"""A third-party check kind takes its own options from the spec (`checks: {again: {...}}`,
tests/check_kind_plugins.py): they change its verdict; a check name no plugin registers is
an error at its spec line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SpecWriter, run_gradaudit

PLUGINS = [str(REPO / "tests" / "check_kind_plugins.py"), str(REPO / "tests" / "checks_plugins.py")]


def statuses(report: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for g in json.loads(report.read_text())["groups"]:
        found.setdefault(g["check"], set()).update(t["status"] for t in g["tensors"])
    return found


@pytest.mark.parametrize(
    ("gradients", "options", "again"),
    [
        ("charrnn-bptt", {}, {"pass"}),  # deterministic: bitwise equal
        ("bptt-noisy", {}, {"fail"}),  # fresh noise on every call
        ("bptt-noisy", {"atol": 1.0}, {"pass"}),  # the option reaches the check kind
    ],
    ids=["correct", "noisy", "noisy-with-atol"],
)
def test_a_plugin_check_kind_reads_its_options_from_the_spec(
    tmp_path: Path, write_spec: SpecWriter, gradients: str, options: dict[str, Any], again: set[str]
) -> None:
    spec = write_spec(
        plugins=PLUGINS,
        gradients={"plugin": gradients},
        checks={"again": options},
        dtypes=["float64"],
    )
    report = tmp_path / "r.json"
    done = run_gradaudit("run", spec, "--json", report)
    found = statuses(report)
    assert found["again"] == again, found
    assert done.returncode == (1 if "fail" in set().union(*found.values()) else 0), done.stderr


def test_an_unregistered_check_name_is_an_error_at_its_line(write_spec: SpecWriter) -> None:
    spec = write_spec(plugins=PLUGINS, checks={"agian": {}})
    done = run_gradaudit("plan", spec)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"{spec}:" in line and "checks.agian: no check kind of that name" in line, line
    assert "did you mean 'again'?" in line, line


def test_a_plugin_check_kinds_bad_option_is_a_one_line_error(write_spec: SpecWriter) -> None:
    spec = write_spec(plugins=PLUGINS, checks={"again": {"rtool": 1}})
    done = run_gradaudit("plan", spec)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "checks.again: unknown option 'rtool'" in line, line
