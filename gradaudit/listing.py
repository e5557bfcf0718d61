"""The commands that audit nothing: validate, plugins, schema, merge (cli.py parses)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gradaudit.errors import EXIT_CHECK_FAILED, EXIT_OK, UsageError
from gradaudit.spec import load_spec
from gradaudit.write import check_writable, refuse_overwriting, same_file

if TYPE_CHECKING:
    from gradaudit.results import RunSummary


def _echo(text: str) -> None:
    click.echo(text)


def validate(spec_paths: tuple[str, ...], sets: tuple[str, ...] = ()) -> int:
    """Validate specs without importing torch or any plugin, and say what that leaves out."""
    for path in spec_paths:
        loaded = load_spec(path, sets)
        if loaded.kind == "op":
            _echo(f"{path}: ok (op spec schema); `gradaudit plan {path}` lists its cases")
            continue
        what = "the target's own section, " if loaded.kind not in ("model", "sharded") else ""
        _echo(
            f"{path}: ok (schema). Not checked without loading plugins: {what}plugin names, "
            f"tensor globs, plugin options; `gradaudit plan {path}` checks those"
        )
    return EXIT_OK


def list_plugins(spec_path: str | None, as_json: bool = False, load: bool = False) -> int:
    """Print what every loaded plugin registers: name, kind, plugin, version, where from.

    Installed plugins (entry points) are loaded, as every run loads them. A spec's own
    `plugins:` (files and modules that came with the spec) are only located, not imported,
    unless `load`: inspecting a spec runs none of its code unless asked to."""
    import json

    from gradaudit.plugins import locate, plugin_manager

    at: Any = None  # the loaded spec, whose lines errors point at
    refs: list[str] = []
    base_dir = Path.cwd()
    if spec_path:
        at = load_spec(spec_path)
        refs, base_dir = list(at.spec.plugins), at.base_dir
    registry = plugin_manager(refs if load else (), base_dir, at)
    keys = ("name", "kind", "plugin", "version", "source")
    rows = [(r.name, r.kind, r.plugin, r.version, r.source) for r in registry.all(builtin=True)]
    if not load:  # what the spec would import, found without importing it
        rows += [("?", "not loaded", ref, "-", locate(ref, base_dir)) for ref in refs]
    rows.sort(key=lambda row: (row[1], row[0]))
    if as_json:
        _echo(json.dumps([dict(zip(keys, row, strict=True)) for row in rows], indent=2))
        return EXIT_OK
    table = [keys, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys) - 1)]
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        _echo("  ".join([*cells, row[-1]]))
    return EXIT_OK


def schema() -> int:
    """Print the JSON Schema of a spec file."""
    from gradaudit.spec import json_schema

    click.echo(json_schema(), nl=False)
    return EXIT_OK


def merge(out: str, inputs: list[str]) -> int:
    """Merge shard reports; print the merged totals; exit code as for `run`."""
    from gradaudit.report import merge as merging
    from gradaudit.report.console import closing_line

    refuse_overwriting({"OUT": out}, list(inputs))
    for i, path in enumerate(inputs):
        if any(same_file(path, other) for other in inputs[:i]):
            raise UsageError(f"{path}: given twice: each shard's report once")
    check_writable(out)
    as_json = out.endswith(".json")
    summary: RunSummary = (merging.merge_json if as_json else merging.merge_junit)(out, inputs)
    _echo(closing_line(summary, sum(g.seconds for g in summary.groups)))
    _echo(f"merged {len(inputs)} reports into {out}")
    return EXIT_OK if summary.ok else EXIT_CHECK_FAILED
