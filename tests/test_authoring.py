"""Plugin authoring: scaffold -> pip install -> green audit; the guide; the spec schema."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gradaudit import hookspecs
from gradaudit.spec import json_schema
from tests.conftest import REPO, run_gradaudit

GUIDE = REPO / "docs" / "plugins.md"


def _pip_install_target(package: Path, target: Path) -> None:
    """A real installation (dist-info with entry points), kept out of the test venv."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
        capture_output=True,
    )


def test_scaffold_installs_runs_green_then_red_when_broken(tmp_path: Path) -> None:
    start = time.perf_counter()
    made = run_gradaudit("new-plugin", "toy", "--dir", tmp_path)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "toy"
    site = tmp_path / "site"
    _pip_install_target(package, site)
    env = {"PYTHONPATH": str(site)}

    listed = run_gradaudit("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert '"name": "toy-manual"' in listed.stdout
    assert "entry point of gradaudit-toy" in listed.stdout

    junit = tmp_path / "toy.xml"
    green = run_gradaudit(
        "run", package / "specs" / "toy.yaml", "--junit-xml", junit, env=env, cwd=package
    )
    assert green.returncode == 0, green.stdout + green.stderr
    assert "PASS" in green.stdout and "FAIL" not in green.stdout
    elapsed = time.perf_counter() - start

    # The scaffold's tolerance is the default: a correct backward passes in every dtype
    # (with `mode: allclose` it failed 7 tensors in bfloat16 and float16).
    spec = yaml.safe_load((package / "specs" / "toy.yaml").read_text(encoding="utf-8"))
    spec["dtypes"] = ["float32", "float64", "bfloat16", "float16"]
    spec["devices"] = ["cpu"]
    low = package / "specs" / "toy-low.yaml"
    low.write_text(yaml.safe_dump(spec), encoding="utf-8")
    narrow = run_gradaudit("run", low, env=env, cwd=package)
    assert narrow.returncode == 0, narrow.stdout + narrow.stderr
    assert narrow.stdout.count("PASS") == 4 * 5 and "FAIL" not in narrow.stdout

    # Break the installed manual gradient: forget to divide by the number of positions.
    backward = site / "gradaudit_toy" / "backward.py"
    source = backward.read_text()
    assert ") / n\n" in source
    backward.write_text(source.replace(") / n\n", ")\n"))
    red = run_gradaudit("run", package / "specs" / "toy.yaml", env=env, cwd=package)
    assert red.returncode == 1, red.stdout + red.stderr
    assert "FAIL" in red.stdout
    print(f"scaffold -> install -> green run: {elapsed:.1f}s")


def test_scaffold_spec_uses_the_default_tolerance(tmp_path: Path) -> None:
    from gradaudit.scaffold import new_plugin
    from gradaudit.spec import Tolerance, load_spec

    new_plugin("toy", str(tmp_path))
    loaded = load_spec(tmp_path / "toy" / "specs" / "toy.yaml")
    assert loaded.spec.tolerance == Tolerance()


def test_scaffold_refuses_bad_names_and_existing_dirs(tmp_path: Path) -> None:
    bad = run_gradaudit("new-plugin", "Bad-Name", "--dir", tmp_path)
    assert bad.returncode == 2 and "lowercase" in bad.stderr
    (tmp_path / "taken").mkdir()
    taken = run_gradaudit("new-plugin", "taken", "--dir", tmp_path)
    assert taken.returncode == 2 and "already exists" in taken.stderr


def test_guide_documents_every_hook() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert hooks, "no hooks found"
    for hook in hooks:
        assert f"### `{hook}`" in text, f"docs/plugins.md has no section for {hook}"


def test_readme_links_the_guide() -> None:
    assert "docs/plugins.md" in (REPO / "README.md").read_text(encoding="utf-8")


FLOAT_SECTION = "## Models whose inputs are not text"


def _guide_blocks(float_inputs: bool = False) -> list[str]:
    """The guide's plugin code: the text example's blocks, or the float-input example's."""
    text, _, floats = GUIDE.read_text(encoding="utf-8").partition(FLOAT_SECTION)
    part = floats.split("\n## ")[0] if float_inputs else text
    return [b for b in re.findall(r"```python\n(.*?)```", part, re.S) if "@hookimpl" in b]


def test_guide_examples_run_as_a_real_audit(tmp_path: Path) -> None:
    blocks = _guide_blocks()
    assert len(blocks) >= 3
    (tmp_path / "guide_plugin.py").write_text("\n\n".join(blocks), encoding="utf-8")
    (tmp_path / "words.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    spec = {
        "name": "guide",
        "plugins": ["guide_plugin.py"],
        "model": {"plugin": "bigram"},
        "gradients": {"plugin": "bigram-manual"},
        "data": {"plugin": "words", "options": {"path": "words.txt", "block_size": 6}},
        "batches": {"count": 3, "size": 8, "seed": 1},
        "devices": ["cpu"],
        "dtypes": ["float32", "float64"],
    }
    path = tmp_path / "guide.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = run_gradaudit("run", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 4  # logits and W, in two dtypes


def test_guide_float_input_example_is_green_in_every_dtype(tmp_path: Path) -> None:
    """The guide's regression model and its YAML, with the random data plugin, as written."""
    blocks = _guide_blocks(float_inputs=True)
    (tmp_path / "regression_plugin.py").write_text("\n\n".join(blocks), encoding="utf-8")
    text = GUIDE.read_text(encoding="utf-8")
    (spec_text,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "random" in b]
    path = tmp_path / "regression.yaml"
    path.write_text(spec_text, encoding="utf-8")
    result = run_gradaudit("run", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 passed, 0 failed, 0 errors" in result.stdout  # 4 tensors x 4 dtypes


def test_committed_schema_matches_the_code() -> None:
    committed = (REPO / "specs" / "schema.json").read_text(encoding="utf-8")
    assert committed == json_schema(), "drifted: run gradaudit schema > specs/schema.json"


def test_schema_command_prints_it() -> None:
    result = run_gradaudit("schema")
    assert result.returncode == 0
    assert result.stdout == json_schema()


MODEL_SPECS = [p for p in sorted((REPO / "specs").glob("*.yaml")) if not p.name.startswith("op-")]


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=lambda p: p.name)
def test_shipped_specs_point_editors_at_the_schema(spec: Path) -> None:
    first_line = spec.read_text(encoding="utf-8").splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=schema.json"
