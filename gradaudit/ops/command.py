"""`gradaudit run` and `gradaudit plan` for op specs (a spec with a top-level `op:`).

The same console table, JUnit, JSON and exit codes as model audits; the reports are on disk
before the first variant runs and name every planned (device, dtype, variant) case.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from gradaudit.errors import EXIT_CHECK_FAILED, EXIT_OK

if TYPE_CHECKING:
    from gradaudit.results import RunSummary, Shard


def is_op_spec(path: str) -> bool:
    """A cheap look: does the file's top level have `op:`? Anything odd is left to the
    model-spec loader, which reports it with its line."""
    try:
        file = Path(path)
        if not file.is_file() or file.stat().st_size > 1 << 20:
            return False
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except Exception:
        return False
    return isinstance(data, dict) and "op" in data


def run(spec_path: str, options: Any) -> int:
    """Audit an op spec; `options` is commands.RunOptions."""
    from gradaudit.ops.run import groups, metadata
    from gradaudit.ops.shard import is_away
    from gradaudit.ops.spec import load_op_spec
    from gradaudit.report.console import closing_line, group_rows, header
    from gradaudit.report.describe import detail
    from gradaudit.report.jsonfile import group_record
    from gradaudit.report.jsonvalues import SCHEMA, SCHEMA_VERSION, dumps
    from gradaudit.report.junit import run_document
    from gradaudit.results import RunSummary
    from gradaudit.write import check_writable, refuse_overwriting, write_atomic

    unsupported = {
        "--set": options.sets,
        "--timeout": options.timeout,
        "--require-device": options.require_devices,
        "--batch": options.batches,
    }
    for option, given in unsupported.items():
        if given:  # ignoring it would run (and report) something else than was asked
            from gradaudit.errors import UsageError

            raise UsageError(f"{option} does not apply to an op spec yet")
    shard = _shard(options)
    loaded = load_op_spec(spec_path)
    refuse_overwriting({"--junit-xml": options.junit_xml, "--json": options.json_path}, [spec_path])
    for path in (options.junit_xml, options.json_path):
        if path:
            check_writable(path)
    facts = metadata(loaded, shard)
    summary = RunSummary()
    start = time.perf_counter()

    def write(stopped: str | None) -> None:
        summary.stopped = stopped
        if options.junit_xml:
            write_atomic(options.junit_xml, run_document(loaded.spec.name, summary, facts))
        if options.json_path:
            records = ",\n  ".join(dumps(group_record(g)) for g in summary.groups)
            write_atomic(
                options.json_path,
                f'{{"schema": "{SCHEMA}", "schema_version": {SCHEMA_VERSION},\n'
                f' "run": {dumps(facts)},\n "cases": [],\n "groups": [\n  {records}\n ],\n'
                f' "totals": {dumps(summary.totals())},\n "stopped": {dumps(stopped)}\n}}\n',
            )

    write("the run did not finish (killed, or still running)")
    quiet = options.verbosity < 0
    if not quiet:
        click.echo(f"gradaudit: {loaded.spec.name} ({spec_path}): op {loaded.spec.op.candidate}")
        click.echo(header())
    try:
        for group in groups(loaded, options.devices, options.dtypes, shard=shard):
            summary.add(group)
            if not quiet and not is_away(group.skipped):
                for text, _ in group_rows(group):
                    click.echo(text)
            write("the run did not finish (killed, or still running)")
    except BaseException as exc:
        write(f"interrupted: {type(exc).__name__}")
        raise
    write(None)
    if not quiet:
        for group in summary.groups:
            for s in group.tensors:
                if s.status in ("fail", "error"):
                    click.echo(f"--- {s.status.upper()} {group.device}/{group.dtype} {s.tensor}")
                    click.echo(detail(s))
    if shard is not None and not quiet:
        click.echo(_shard_line(shard, summary))
    click.echo(closing_line(summary, time.perf_counter() - start))
    if summary.ok and summary.passed == 0:
        click.echo("gradaudit: no tensor was compared (every case skipped): nothing was proven")
        return 5
    return EXIT_OK if summary.ok else EXIT_CHECK_FAILED


def _shard(options: Any) -> Shard | None:
    from gradaudit.commands import parse_shard

    return parse_shard(options.shard) if options.shard is not None else None


def _shard_line(shard: Shard, summary: RunSummary) -> str:
    """What a shard ran, and where the rest is."""
    from gradaudit.ops.shard import is_away

    groups = [g for g in summary.groups if not g.skipped or not is_away(g.skipped)]
    ran = sum(not g.skipped for g in groups)
    others = len(summary.groups) - len(groups)
    return (
        f"shard {shard}: {ran} of {len(summary.groups)} cases ran here; the {others} of the "
        "other shards are skipped in this shard's reports (`gradaudit merge` folds them)"
    )


def plan(spec_path: str, options: Any, as_json: bool) -> int:
    """The cases of an op spec: (device, dtype, variant or invariance check) with each
    variant's shapes, layout and seed, and the shard that runs it; under --shard, only the
    cases of that shard (checks named per case when it runs: outputs and input gradients)."""
    import json

    from gradaudit.ops.run import subset
    from gradaudit.ops.spec import load_op_spec
    from gradaudit.ops.variants import derive
    from gradaudit.plan import device_unavailable

    shard = _shard(options)
    loaded = load_op_spec(spec_path)
    spec, op = loaded.spec, loaded.spec.op
    variants = derive(op.inputs, op.dims, op.variant_options, spec.seed)
    cases = [(v.name, v) for v in variants]
    cases += [(kind, variants[0]) for kind in _invariance(op.checks)]
    total = shard.total if shard else 1  # the shard that runs a case, under --shard
    rows = []
    for device in subset("--device", options.devices, spec.devices):
        skip = device_unavailable(device)
        for dtype in subset("--dtype", options.dtypes, spec.dtypes):
            for index, (name, v) in enumerate(cases):
                if shard is not None and not shard.takes(index):
                    continue
                shapes = ", ".join(
                    f"{n} {'x'.join(map(str, s)) or 'scalar'}" for n, s in v.shapes.items()
                )
                rows.append(
                    {
                        "device": device,
                        "dtype": dtype,
                        "variant": name,
                        "seed": v.seed,
                        "shapes": shapes,
                        "layout": v.layout,
                        "shard": f"{index % total + 1}/{total}" if shard else None,
                        "skip": skip,
                    }
                )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return EXIT_OK
    held = sum(shard.takes(k) for k in range(len(cases))) if shard else 0
    of = f" (shard {shard}: {held} of the {len(cases)} cases of each device and dtype)"
    of = of if shard else ""
    click.echo(f"plan: {spec.name} ({spec_path}): op {op.candidate}, {len(rows)} cases{of}")
    if shard is not None and not rows:
        click.echo(f"shard {shard} has no cases: `run` would compare nothing (exit 5)")
    for r in rows:
        what = (
            f"SKIP  {r['skip']}"
            if r["skip"]
            else f"{r['shapes']} ({r['layout']}, seed {r['seed']})"
        )
        click.echo(f"{r['device']:<8} {r['dtype']:<9} {r['variant']:<24} {what}")
    return EXIT_OK


def _invariance(checks: Any) -> list[str]:
    """The invariance checks a spec turns on, in run order (gradaudit.ops.shard)."""
    kinds = [("micro_batch", checks.micro_batch), ("saved_tensors", checks.saved_tensors)]
    return [kind for kind, on in kinds if on is not None]
