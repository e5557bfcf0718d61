"""`python -m gradaudit.ci COMMAND`: the CI add-ons from a shell, before (and besides) the
`gradaudit` CLI. Torch-free; exit 2 for bad input, with one line on stderr.

    python -m gradaudit.ci diff BEFORE.json AFTER.json [-v] [--max-growth 2] [--floor 0.05]
    python -m gradaudit.ci html REPORT.json OUT.html
    python -m gradaudit.ci chart REPORT.json [--no-failures] [--append PATH]
    python -m gradaudit.ci shard          # prints K/N for --shard, from the CI's variables
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gradaudit.ci import html, summary_chart
from gradaudit.ci.diff import DEFAULT_FLOOR, DEFAULT_MAX_GROWTH
from gradaudit.ci.diff_format import run_diff
from gradaudit.ci.environment import ShardEnvironmentError, shard_from_env
from gradaudit.ci.report import ReportError, load_report
from gradaudit.write import write_atomic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradaudit.ci", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    diff = commands.add_parser("diff", help="compare two JSON reports' budgets")
    diff.add_argument("before")
    diff.add_argument("after")
    diff.add_argument("--max-growth", type=float, default=DEFAULT_MAX_GROWTH)
    diff.add_argument("--floor", type=float, default=DEFAULT_FLOOR)
    diff.add_argument("-v", "--verbose", action="store_true")
    page = commands.add_parser("html", help="write a JSON report as one HTML page")
    page.add_argument("report")
    page.add_argument("out")
    chart = commands.add_parser("chart", help="Markdown with Mermaid budget charts")
    chart.add_argument("report")
    chart.add_argument("--no-failures", action="store_true", help="charts only")
    chart.add_argument("--append", metavar="PATH", help="append to PATH instead of printing")
    commands.add_parser("shard", help="print K/N from the CI's parallelism variables")
    args = parser.parse_args(argv)
    try:
        if args.command == "diff":
            if args.max_growth < 1 or args.floor < 0:
                raise ValueError("--max-growth must be >= 1 and --floor >= 0")
            summary = os.environ.get("GITHUB_STEP_SUMMARY") or None
            return run_diff(
                args.before, args.after, max_growth=args.max_growth, floor=args.floor,
                verbose=args.verbose, summary_path=summary,
            )  # fmt: skip
        if args.command == "html":
            write_atomic(args.out, html.render(load_report(args.report)))
            return 0
        if args.command == "chart":
            text = summary_chart.render(
                load_report(args.report), include_failures=not args.no_failures
            )
            if args.append:
                with open(args.append, "a", encoding="utf-8") as handle:
                    handle.write(text)
            else:
                sys.stdout.write(text)
            return 0
        k, n = shard_from_env(os.environ)
        print(f"{k}/{n}")
        return 0
    except (ReportError, ShardEnvironmentError, ValueError, OSError) as exc:
        print(f"gradaudit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
