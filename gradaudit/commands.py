"""What each CLI command does; cli.py only parses arguments and calls these."""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import dataclass

import click

from gradaudit.errors import EXIT_CHECK_FAILED, EXIT_OK
from gradaudit.spec import LoadedSpec, load_spec
from gradaudit.write import check_writable


@dataclass(frozen=True)
class RunOptions:
    junit_xml: str | None = None
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    color: bool = False


def run(spec_path: str, options: RunOptions) -> int:
    """Audit one spec; print the table as groups finish; write reports even if the run breaks."""
    loaded = load_spec(spec_path)
    if options.junit_xml:
        check_writable(options.junit_xml)
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch

    import gradaudit
    from gradaudit.report import console
    from gradaudit.runner import Audit, RunSummary

    start = time.perf_counter()
    audit = Audit(loaded)
    summary = RunSummary()
    _echo(_banner(loaded, audit.tensor_names))
    _echo(console.header())
    versions = {
        "gradaudit_version": gradaudit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    try:
        for group in audit.groups(list(options.devices) or None, list(options.dtypes) or None):
            summary.add(group)
            for row in console.group_rows(group, options.color):
                _echo(row)
    finally:
        if options.junit_xml:
            from gradaudit.report.junit import write_junit

            write_junit(options.junit_xml, loaded, summary.groups, versions)
    for block in console.failure_details(summary):
        _echo(block)
    _echo(console.closing_line(summary, time.perf_counter() - start, options.color))
    if options.junit_xml:
        _echo(f"JUnit XML written to {options.junit_xml}")
    return EXIT_OK if summary.ok else EXIT_CHECK_FAILED


def _banner(loaded: LoadedSpec, tensors: list[str]) -> str:
    spec = loaded.spec
    b = spec.batches
    shape = f"{b.count or 'all'} batches of {b.size or 'all'}x{b.block_size}"
    return (
        f"gradaudit: {spec.name} ({loaded.path}): model {spec.model.plugin}, gradients "
        f"{spec.gradients.plugin}, {len(tensors)} tensors, {shape} ({b.split}, seed {b.seed})"
    )


def validate(spec_paths: tuple[str, ...]) -> int:
    """Validate specs without importing torch or any plugin."""
    for path in spec_paths:
        load_spec(path)
        _echo(f"{path}: ok")
    return EXIT_OK


def _echo(text: str) -> None:
    click.echo(text)


def list_plugins(spec_path: str | None) -> int:
    """Print every loaded plugin and the models, gradients and datasets it registers."""
    from pathlib import Path

    from gradaudit.plugins import plugin_manager

    loaded = load_spec(spec_path) if spec_path else None
    registry = plugin_manager(
        loaded.spec.plugins if loaded else (), loaded.base_dir if loaded else Path.cwd()
    )
    rows = [("name", "kind", "plugin", "version", "source")]
    rows += [(r.name, r.kind, r.plugin, r.version, r.source) for r in registry.all()]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        _echo("  ".join([*cells, row[4]]))
    return EXIT_OK
