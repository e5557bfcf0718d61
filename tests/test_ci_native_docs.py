"""docs/ci-native.md's snippets are valid: every YAML block parses, the Action's example uses
only inputs action.yml declares, the pre-commit example names a hook the manifest has, the
shard table matches the code, and the screenshot is there and small."""

from __future__ import annotations

import re
from typing import Any

import yaml

from gradaudit.ci.environment import PROVIDERS
from tests.conftest import REPO

DOC = REPO / "docs" / "ci-native.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text("utf-8"), re.S)


def test_yaml_blocks_parse() -> None:
    found = [yaml.safe_load(block) for block in blocks("yaml")]
    assert len(found) >= 5 and all(isinstance(b, dict) for b in found)


def uses(node: Any, action: str) -> list[dict[str, Any]]:
    """Every step under node that uses `action`."""
    if isinstance(node, dict):
        own = [node] if str(node.get("uses", "")).startswith(action) else []
        return own + [s for v in node.values() for s in uses(v, action)]
    if isinstance(node, list):
        return [s for v in node for s in uses(v, action)]
    return []


def test_the_action_example_uses_declared_inputs() -> None:
    declared = set(yaml.safe_load((REPO / "action.yml").read_text("utf-8"))["inputs"])
    steps = [s for b in blocks("yaml") for s in uses(yaml.safe_load(b), "OWNER/gradaudit")]
    assert steps
    for step in steps:
        assert set(step["with"]) <= declared and "specs" in step["with"]
    documented = set(re.findall(r"^\| `([a-z-]+)`", DOC.read_text("utf-8"), re.M))
    documented |= {"json", "html", "artifact-name"}  # rows that name several inputs
    assert declared <= documented


def test_the_precommit_example_names_a_real_hook() -> None:
    ids = {h["id"] for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text("utf-8"))}
    configs = [b for b in map(yaml.safe_load, blocks("yaml")) if "repos" in b]
    (config,) = configs
    assert {h["id"] for r in config["repos"] for h in r["hooks"]} <= ids


def test_the_shard_table_matches_the_code() -> None:
    text = DOC.read_text("utf-8")
    for provider in PROVIDERS:
        assert f"`{provider.index}` ({provider.base})" in text, provider


def test_the_screenshot() -> None:
    image = REPO / "docs" / "images" / "html-report.png"
    assert "images/html-report.png" in DOC.read_text("utf-8")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size < 200_000
