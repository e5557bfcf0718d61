"""The options several `gradaudit` commands share, and their checks (cli.py uses them)."""

from __future__ import annotations

import os

import click

from gradaudit.errors import UsageError


def parse_timeout(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Seconds > 0; inf means no limit; nan is refused (exit 2)."""
    if value is None or value == float("inf"):
        return None
    if value != value or value <= 0:
        raise click.BadParameter(f"{value} is not a number of seconds > 0", ctx, param)
    return value


def parse_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """K/N with 1 <= K <= N, or `auto`: K/N from the CI's parallel-job variables (exit 2
    before anything is written)."""
    if value is None:
        return None
    if value.strip() == "auto":
        from gradaudit.ci.environment import ShardEnvironmentError, shard_from_env

        try:
            k, n = shard_from_env(os.environ)
        except ShardEnvironmentError as exc:
            raise UsageError(str(exc)) from None
        return f"{k}/{n}"
    from gradaudit.results import Shard

    return str(Shard.parse(value))


SET_HELP = "Change one spec key, validated like the file (repeatable): --set batches.count=2"
BATCHES = click.option(
    "--batch",
    "batches",
    multiple=True,
    type=click.IntRange(min=0),
    metavar="K",
    help="Only batch K of the spec's batches (repeatable): what a failure's reproduce line uses.",
)
VARIANTS = click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME",
    help="Only this input variant of an op spec (repeatable), as `gradaudit plan` names them.",
)
# Options several commands share, defined once.
DEVICES = click.option("--device", "devices", multiple=True, help="Only this device (repeatable).")
DTYPES = click.option("--dtype", "dtypes", multiple=True, help="Only this dtype (repeatable).")
SETS = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
COLOR = click.option(
    "--color/--no-color", default=None, help="Default: on a terminal, unless NO_COLOR."
)
TIMEOUT = click.option(
    "--timeout",
    type=float,
    callback=parse_timeout,
    metavar="SECONDS",
    help="Per-case limit: a batch that runs longer is an error, and the run moves on.",
)
THREADS = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="torch intra-op threads (default 1, or OMP_NUM_THREADS when set; 0: torch's own "
    "default). Audit-sized batches gain nothing from more, and lose badly under other load.",
)
