"""The `gradaudit` command line. Argument parsing only: the work is in commands.py."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Any

import click

from gradaudit.ci import DEFAULT_FLOOR, DEFAULT_MAX_GROWTH
from gradaudit.cli_options import (
    BATCHES,
    COLOR,
    DEVICES,
    DTYPES,
    SETS,
    THREADS,
    TIMEOUT,
    VARIANTS,
    parse_shard,
)
from gradaudit.errors import ExitCode, GradauditError, UsageError, error_lines
from gradaudit.report.options import add_report_options, given_options
from gradaudit.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.pass_context
@click.version_option(__version__, prog_name="gradaudit")
def cli(ctx: click.Context) -> None:
    """Check hand-written gradients against torch autograd, and gate CI on the result.

    Exit codes: 0 all checks passed, 1 a gradient check failed or errored,
    2 bad spec or usage, 3 internal error, 5 nothing was compared.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(2)


@cli.command("run")
@click.argument("specs", nargs=-1, required=True, type=click.Path(), metavar="SPEC...")
@click.option("--junit-xml", metavar="PATH", help="Write JUnit XML here (atomically).")
@click.option("--json", "json_path", metavar="PATH", help="Write every metric as JSON here.")
@DEVICES
@DTYPES
@click.option(
    "--require-device",
    "require_devices",
    multiple=True,
    metavar="DEVICE",
    help="Fail (exit 2) instead of skipping when DEVICE is absent.",
)
@click.option(
    "--shard",
    metavar="K/N",
    callback=parse_shard,
    help="Run shard K of N: the batches (an op spec's variants) k with k % N == K-1. "
    "`auto`: K/N from the CI's parallel-job variables (GitLab, CircleCI, Buildkite, Azure).",
)
@BATCHES
@VARIANTS
@click.option(
    "--html",
    "html_path",
    metavar="PATH",
    help="Also write the report as one self-contained HTML page here.",
)
@TIMEOUT
@SETS
@THREADS
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary line.")
@click.option("-v", "--verbose", is_flag=True, help="Also print a line per batch and tensor.")
@COLOR
def run_command(
    specs: tuple[str, ...],
    junit_xml: str | None,
    json_path: str | None,
    devices: tuple[str, ...],
    dtypes: tuple[str, ...],
    require_devices: tuple[str, ...],
    shard: str | None,
    batches: tuple[int, ...],
    variants: tuple[str, ...],
    html_path: str | None,
    timeout: float | None,
    sets: tuple[str, ...],
    threads: int | None,
    quiet: bool,
    verbose: bool,
    color: bool | None,
    **plugin_options: Any,
) -> None:
    """Audit the manual gradients named by each SPEC (a folder: every spec in it) against
    autograd; several specs give one report and the worst exit code."""
    if quiet and verbose:
        raise click.UsageError("-q and -v cannot be used together")
    from gradaudit.errors import Interrupted, stop_on_sigterm
    from gradaudit.report.placeholder import interrupted, write_first

    stop_on_sigterm()  # a cancelled job, from now on, still writes what it has
    if html_path:
        from gradaudit.ci.pictures import html_placeholder

        html_placeholder(html_path)
    several = len(specs) > 1 or os.path.isdir(specs[0])  # a folder: a set, even of one
    if several:
        from gradaudit.spec_set import expand

        paths = expand(specs)
    else:
        paths = list(specs)
    try:
        write_first(paths, junit_xml, json_path)  # before anything slow: no old green survives
        implied: list[str] = []
        if not (batches or variants):  # a reproduce line reruns the spec it names, alone
            from gradaudit.spec_set import with_function_specs

            named = with_function_specs(paths)  # the op audits a model spec's functions: names
            implied = [p for p in named if p not in paths]
            several, paths = several or bool(implied), named
        tty = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.exit(_run(paths, implied, several, html_path, dict(
            junit_xml=junit_xml, json_path=json_path, devices=devices, dtypes=dtypes,
            require_devices=require_devices, shard=shard, batches=batches, variants=variants,
            timeout=timeout, color=tty if color is None else color, progress=sys.stderr.isatty(),
            verbosity=-1 if quiet else 1 if verbose else 0, sets=sets, threads=threads,
            extra=given_options(plugin_options),
        )))  # fmt: skip
    except (Interrupted, KeyboardInterrupt) as exc:
        sys.exit(interrupted(paths, junit_xml, json_path, isinstance(exc, Interrupted)))


def _run(
    paths: list[str], implied: list[str], several: bool, html_path: str | None,
    given: dict[str, Any],
) -> int:  # fmt: skip
    from gradaudit import commands

    options = commands.RunOptions(**given)
    if not several:
        return commands.run_with_html(lambda o: commands.run(paths[0], o), options, html_path)
    from gradaudit.spec_set import run_set

    return commands.run_with_html(lambda o: run_set(paths, o, implied), options, html_path)


@cli.command("plan")
@click.argument("spec", type=click.Path(dir_okay=False))
@DEVICES
@DTYPES
@click.option("--shard", metavar="K/N", callback=parse_shard, help="Plan shard K of N.")
@BATCHES
@VARIANTS
@SETS
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plan_command(
    spec: str,
    devices: tuple[str, ...],
    dtypes: tuple[str, ...],
    shard: str | None,
    batches: tuple[int, ...],
    variants: tuple[str, ...],
    sets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Print every check `run` would make, with tolerances and skip reasons; runs no batch."""
    from gradaudit import commands
    from gradaudit.spec_set import resolved, with_function_specs

    # as `gradaudit run SPEC` would run it: with the op specs its functions: names
    alongside = resolved(with_function_specs([spec]))
    options = commands.RunOptions(
        devices=devices, dtypes=dtypes, shard=shard, batches=batches, variants=variants,
        sets=sets, alongside=alongside,
    )  # fmt: skip
    sys.exit(commands.plan(spec, options, as_json))


@cli.command("mutate")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--junit-xml", metavar="PATH", help="Write JUnit XML here (a testcase per mutant).")
@DEVICES
@DTYPES
@click.option("--fail-on-survivor", is_flag=True, help="Exit 1 when a mutant survives.")
@click.option(
    "--min-score",
    type=click.FloatRange(0, 100),
    metavar="PCT",
    help="Exit 1 when a device/dtype's mutation score is under PCT percent.",
)
@SETS
@TIMEOUT
@THREADS
@COLOR
def mutate_command(
    spec: str,
    junit_xml: str | None,
    devices: tuple[str, ...],
    dtypes: tuple[str, ...],
    fail_on_survivor: bool,
    min_score: float | None,
    sets: tuple[str, ...],
    timeout: float | None,
    threads: int | None,
    color: bool | None,
) -> None:
    """Prove SPEC's audit catches bugs: run it against mutated manual gradients."""
    from gradaudit import commands

    tty = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    options = commands.RunOptions(
        junit_xml=junit_xml,
        devices=devices,
        dtypes=dtypes,
        sets=sets,
        timeout=timeout,
        color=tty if color is None else color,
        threads=threads,
    )
    from gradaudit.mutate import Gate

    gate = Gate(fail_on_survivor, min_score)
    sys.exit(commands.mutate(spec, options, gate))


@cli.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
def merge_command(out: str, inputs: tuple[str, ...]) -> None:
    """Merge shard reports INPUTS into OUT (JUnit XML, or JSON when OUT ends in .json).

    Exits 1 when the merged run has a failure, so the merge step can be the gate.
    """
    from gradaudit import listing

    sys.exit(listing.merge(out, list(inputs)))


@cli.command("diff")
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@click.option(
    "--max-growth",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_MAX_GROWTH,
    show_default=True,
    help="Exit 1 when a tensor's worst budget grew by more than this factor.",
)
@click.option(
    "--floor",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_FLOOR,
    show_default=True,
    help="Budgets below this fraction of the allowance never alarm (0.1% -> 0.4% is noise).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also list tensors whose budget held.")
def diff_command(before: str, after: str, max_growth: float, floor: float, verbose: bool) -> None:
    """Compare two JSON reports (BEFORE, AFTER; merged ones too) tensor by tensor: worst
    budgets, new failures and fixes, tensors added or removed. Exit 1 when a budget grew
    past --max-growth, 0 otherwise; 2 for a report that cannot be read."""
    from gradaudit.ci.diff_format import run_diff

    summary = os.environ.get("GITHUB_STEP_SUMMARY") or None
    try:
        code = run_diff(
            before, after, max_growth=max_growth, floor=floor, verbose=verbose,
            summary_path=summary,
        )  # fmt: skip
    except OSError as exc:  # the summary file; a report that cannot be read is exit 2 already
        raise UsageError(f"GITHUB_STEP_SUMMARY={summary}: {exc.strerror or exc}") from None
    sys.exit(code)


@cli.command("validate")
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@SETS
def validate_command(specs: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Check SPECS for errors without running anything (torch is not imported)."""
    from gradaudit import listing

    sys.exit(listing.validate(specs, sets))


@cli.command("plugins")
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False),
    help="Also list the plugins this spec names: where each would be imported from, "
    "without importing it.",
)
@click.option(
    "--load",
    is_flag=True,
    help="Import the spec's own plugins too (runs their code) and list what they register.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(spec_path: str | None, load: bool, as_json: bool) -> None:
    """List the loaded plugins and what each registers."""
    from gradaudit import listing

    sys.exit(listing.list_plugins(spec_path, as_json, load))


@cli.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of spec files (for editors and linters)."""
    from gradaudit import listing

    sys.exit(listing.schema())


@cli.command("new-plugin")
@click.argument("name")
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False), help="Parent folder (default: .)."
)
def new_plugin_command(name: str, directory: str | None) -> None:
    """Write a ready-to-install plugin package NAME: model, manual gradient, spec and test."""
    from gradaudit import scaffold

    sys.exit(scaffold.new_plugin(name, directory))


def main() -> None:
    """Console-script entry: one-line errors with documented exit codes, never a traceback."""
    # torch warns on import when NumPy is absent; gradaudit never needs NumPy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    try:
        add_report_options(cli.commands["run"], sys.argv)
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:  # click returns ctx.exit()'s code here
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        hint = " (see gradaudit --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"gradaudit: error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("gradaudit: aborted", err=True)
        sys.exit(130)
    except GradauditError as exc:
        for line in error_lines(exc):
            click.echo(line, err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # an internal error: still one line unless asked for more
        if os.environ.get("GRADAUDIT_DEBUG"):
            traceback.print_exc()
        detail = " ".join(str(exc).split())
        click.echo(
            f"gradaudit: internal error: {type(exc).__name__}: {detail} "
            "(set GRADAUDIT_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(ExitCode.INTERNAL)
