"""Regenerate (or, with --check, verify) the command outputs shown in the README and docs.

A generated block sits between two markers in a Markdown file:

    <!-- generated: run gradaudit plan specs/charrnn.yaml; keep 4 -->
    ...the command and its output, in a code block...
    <!-- end generated -->

`run CMD` runs CMD in the repository (the `gradaudit` of this interpreter's environment,
NO_COLOR, one torch thread) and shows `$ CMD` and its output; `keep N` shows the first N
lines, an ellipsis and the last line. `commands` writes the table of `gradaudit` commands from
the CLI itself. CI runs `--check`: a shown output that no longer matches what the command
prints (times and sizes aside) fails the test suite, so the docs cannot drift (as llm does
with cog).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/specs.md", "docs/ci.md", "docs/mutation.md")
BLOCK = re.compile(r"(<!-- generated: (.*?) -->\n)(.*?)(<!-- end generated -->)", re.S)
# A number (with its unit): float results differ in their last digits across CPUs, BLAS
# builds and thread counts, and times differ on every run. Digits inside a name (float32,
# h.1) are not numbers.
VOLATILE = re.compile(r"(?<![\w.])[-+]?\d+(\.\d+)?(e[-+]?\d+)?(s|%| ms| MiB)?\b")


def _run(command: str) -> str:
    words = shlex.split(command)
    if words[0] == "gradaudit":
        words[0] = str(Path(sys.executable).with_name("gradaudit"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADAUDIT_", "GITHUB_"))}
    env |= {"NO_COLOR": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    done = subprocess.run(
        words, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return (done.stdout + done.stderr).rstrip("\n")


def _commands_table() -> str:
    import click

    from gradaudit.cli import cli

    rows = ["| command | what it does |", "|---|---|"]
    for name, command in sorted(cli.commands.items()):
        ctx = click.Context(command, info_name=name)
        usage = " ".join(command.collect_usage_pieces(ctx))
        rows.append(f"| `gradaudit {name} {usage}` | {command.get_short_help_str(100)} |")
    return "\n".join(rows) + "\n"


def render(directive: str) -> str:
    kind, _, rest = directive.partition(" ")
    if kind == "commands":
        return _commands_table()
    if kind != "run":
        raise ValueError(f"unknown generated block {directive!r}")
    command, _, keep = rest.partition("; keep ")
    lines = _run(command).splitlines()
    if keep and len(lines) > int(keep) + 1:
        lines = [*lines[: int(keep)], "...", lines[-1]]
    return "```\n$ " + command + "\n" + "\n".join(lines) + "\n```\n"


def normalised(text: str) -> str:
    """What a shown output must keep: its lines and words, with every number masked and
    the column padding around it collapsed (`3.4%     0/1` on one CPU is `3.31%    0/1` on
    another). A changed word, column or line still differs."""
    lines = (" ".join(VOLATILE.sub("#", line).split()) for line in text.splitlines())
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify instead of rewriting")
    args = parser.parse_args()
    stale = []
    for name in FILES:
        path = REPO / name
        text = path.read_text(encoding="utf-8")

        def replace(match: re.Match[str], path: Path = path, text: str = text) -> str:
            fresh = render(match[2])
            if normalised(fresh) != normalised(match[3]):
                line = text.count("\n", 0, match.start()) + 1
                stale.append(f"{path.relative_to(REPO)}:{line}: {match[2]}")
            return match[1] + fresh + match[4]

        new = BLOCK.sub(replace, text)
        if not args.check and new != text:
            path.write_text(new, encoding="utf-8")
    for entry in stale:
        print(f"{'stale' if args.check else 'regenerated'}: {entry}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
