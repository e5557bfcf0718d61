"""`gradaudit run SPEC... | DIR`: several specs in one step, one report, one exit code.

Every spec is read first (a bad one is exit 2 before anything runs). Then each runs as one
spec does (its own supervisor and executor, its console output), writing its reports into
a scratch folder; after each spec, the report paths get the combined JUnit file and JSON
document (gradaudit.report.combine), so a run stopped at any point leaves a complete report
whose specs not yet run say so. A closing table gives each spec's outcome.

Sharding (`--shard K/N`) spreads the whole set: the specs' samples (a model's batches, an
op's variants) are numbered one after the other, spec i starting at the count of all before
it, so each shard gets an even share of the set, not of each spec; the reports name such a
shard `K/N@OFFSET`, which `--shard` also takes for a rerun of one spec.

The exit code is the worst of the specs' (3 > 2 > 1 > 5 > 0); in a sharded run a spec that
has nothing to do in this shard does not make it 5 unless the whole shard compared nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path

import click

from gradaudit.commands import RunOptions, SpecRun, run_spec
from gradaudit.errors import ExitCode, GradauditError, Interrupted, UsageError, error_lines
from gradaudit.report.combine import COUNTS, combine_json, combine_junit
from gradaudit.report.placeholder import remove_first, write_placeholders
from gradaudit.results import Shard
from gradaudit.spec import LoadedSpec, load_spec
from gradaudit.write import check_writable, refuse_overwriting, same_file

SPEC_SUFFIXES = (".yaml", ".yml")
PENDING = "the run did not finish: it stopped before this spec ran"
WORST = (0, 5, 1, 2, 3)  # exit codes from best to worst
WORDS = {0: "PASS", 1: "FAIL", 2: "ERROR", 3: "ERROR", 5: "NOTHING COMPARED"}


def expand(arguments: Sequence[str]) -> list[str]:
    """The spec files named: a folder gives its *.yaml and *.yml files (not its subfolders),
    sorted. The same file twice, or a folder without a spec, is a usage error."""
    found: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file())
            if not inside:
                raise UsageError(f"{argument}: is a directory without a spec (*.yaml, *.yml) in it")
            found += [str(p) for p in inside]
        else:
            found.append(argument)
    for i, spec in enumerate(found):
        for earlier in found[:i]:
            if same_file(spec, earlier):
                raise UsageError(f"{spec}: given twice (also as {earlier})")
    return found


def resolved(paths: Sequence[str]) -> tuple[str, ...]:
    """The specs' resolved paths: a run's `alongside` (LoadedSpec.alongside)."""
    return tuple(str(Path(p).resolve()) for p in paths)


def with_function_specs(paths: Sequence[str]) -> list[str]:
    """The specs named, each model spec followed by the op specs its `functions:` names
    (those not named already), so the op audits that vouch for its custom Functions run
    with it. A spec that cannot be read is left for loading to report. (Not for a rerun of
    one batch or variant, `--batch`/`--variant`: that reruns the spec named, alone.)"""
    from gradaudit.spec.load import kind_of
    from gradaudit.spec.yamlfile import read_mapping, read_spec_file

    found = list(paths)
    for path in paths:
        try:
            data, _ = read_mapping(read_spec_file(Path(path))[1], path)
        except GradauditError:
            continue
        named = data.get("functions") if kind_of(data) in ("model", "sharded") else None
        for relative in (named or {}).values() if isinstance(named, dict) else ():
            op = Path(path).parent / str(relative)
            if op.is_file() and not any(same_file(op, p) for p in found):
                found.insert(found.index(path) + 1, str(op))
    return found


def run_set(specs: Sequence[str], options: RunOptions, implied: Collection[str] = ()) -> int:
    """Run every spec; write the combined reports after each; print the closing table.
    `implied`: the specs a model spec's `functions:` added, which take no --set (its keys
    are the named specs')."""
    if options.batches or options.variants:
        raise UsageError("--batch and --variant take one spec (a reproduce line names it)")
    sets = {spec: () if spec in implied else options.sets for spec in specs}
    try:
        loaded = [load_spec(spec, sets[spec]) for spec in specs]
        _check_outputs(loaded, options)
    except GradauditError:  # bad input, exit 2: nothing written, not even a placeholder
        remove_first(specs, options.junit_xml, options.json_path)
        raise
    with tempfile.TemporaryDirectory(prefix="gradaudit-set-") as scratch:
        parts = [
            (os.path.join(scratch, f"{i}.xml"), os.path.join(scratch, f"{i}.json"))
            for i in range(len(specs))
        ]
        for spec, (xml, js) in zip(specs, parts, strict=True):
            write_placeholders(spec, xml, js, sets[spec], reason=PENDING)
        ran: list[SpecRun] = []
        whole = Shard.parse(options.shard) if options.shard else None
        options = dataclasses.replace(options, alongside=resolved(specs))
        try:
            _combine(options, parts, None)
            offset = 0
            for spec, read, (xml, js) in zip(specs, loaded, parts, strict=True):
                shard = str(whole.shifted(offset)) if whole else None
                one = dataclasses.replace(
                    options, junit_xml=xml, json_path=js, shard=shard, sets=sets[spec]
                )
                ran.append(_one(spec, one, read))
                plan = ran[-1].plan
                offset += (plan.sample_count or 0) if plan else 0
                _combine(options, parts, None)
                if ran[-1].code in (ExitCode.SIGINT, ExitCode.SIGTERM):
                    break
        except (Interrupted, KeyboardInterrupt) as exc:
            stop = ExitCode.SIGTERM if isinstance(exc, Interrupted) else ExitCode.SIGINT
            ran.append(SpecRun(int(stop)))
        for number in (signal.SIGTERM, signal.SIGINT):  # a second one cannot cut reports short
            signal.signal(number, signal.SIG_IGN)
        code = exit_code(ran, sharded=options.shard is not None)
        _combine(options, parts, code)
    for line in table(specs, ran):
        click.echo(line)
    return code


def _one(spec: str, options: RunOptions, loaded: LoadedSpec) -> SpecRun:
    """One spec's run; its bad input is its error (exit 2), and the set goes on."""
    try:  # restore: a signal between specs stops the set
        return run_spec(spec, options, restore=True, loaded=loaded)
    except GradauditError as exc:
        for line in error_lines(exc):
            click.echo(line, err=True)
        reason = f"the run could not start: {' '.join(str(exc).split())}"
        write_placeholders(spec, options.junit_xml, options.json_path, options.sets, reason)
        return SpecRun(int(exc.exit_code))


def _check_outputs(loaded: Sequence[LoadedSpec], options: RunOptions) -> None:
    """Specs with names of their own (reports name cases by spec); the set's report paths:
    never an input of any spec, never each other; writable."""
    named: dict[str, LoadedSpec] = {}
    for spec in loaded:
        other = named.setdefault(spec.spec.name, spec)
        if other is not spec:
            raise UsageError(
                f"{spec.path}: named {spec.spec.name!r} like {other.path}: the reports of a "
                "run of several specs name its cases by spec; give each its own name"
            )
    paths = {"--junit-xml": options.junit_xml, "--json": options.json_path}
    inputs: list[str | Path] = []
    for spec in loaded:
        inputs.append(spec.path)
        inputs += [spec.base_dir / p for p in spec.spec.plugins if p.endswith(".py")]
    refuse_overwriting(paths, inputs)
    for path in paths.values():
        if path:
            check_writable(path)


def _combine(options: RunOptions, parts: Sequence[tuple[str, str]], code: int | None) -> None:
    if options.junit_xml:
        combine_junit(options.junit_xml, [xml for xml, _ in parts])
    if options.json_path:
        combine_json(options.json_path, [js for _, js in parts], code)


def exit_code(ran: Sequence[SpecRun], sharded: bool) -> int:
    """The worst spec's code; a signal's code when one stopped the set."""
    codes = [r.code for r in ran]
    for stop in (ExitCode.SIGINT, ExitCode.SIGTERM):
        if stop in codes:
            return int(stop)
    compared = any(r.summary is not None and r.summary.passed for r in ran)
    if sharded and compared:  # in a shard, a spec may have nothing to do
        codes = [0 if c == ExitCode.NOTHING_COMPARED else c for c in codes]
    rank = {code: i for i, code in enumerate(WORST)}
    return max(codes, key=lambda c: rank.get(c, len(WORST)), default=int(ExitCode.OK))


def table(specs: Sequence[str], ran: Sequence[SpecRun]) -> list[str]:
    """The closing table: one line per spec, then the set's counts."""
    width = max(len(s) for s in specs)
    lines = ["", f"gradaudit: {len(specs)} specs"]
    counts = dict.fromkeys(COUNTS, 0)
    for i, spec in enumerate(specs):
        if i >= len(ran):
            lines.append(f"  {spec:<{width}}  NOT RUN  (the run stopped before it)")
            continue
        r = ran[i]
        word = WORDS.get(r.code, f"STOPPED (exit {r.code})")
        detail = ""
        if r.summary is not None:
            totals = r.summary.totals()
            for key in counts:
                counts[key] += totals[key]
            detail = ", ".join(f"{totals[k]} {k}" for k in counts if totals[k])
        elif r.code:
            counts["errors"] += 1  # as in the reports: the spec's one error case
            detail = "could not start (see above)"
        lines.append(f"  {spec:<{width}}  {word:<5}  {detail}".rstrip())
    tally = ", ".join(f"{n} {k}" for k, n in counts.items())
    lines.append(f"{len(ran)} of {len(specs)} specs run: {tally} tensor checks")
    return lines
