"""pytest's start-up with gradaudit's plugin installed against without it (issue 18, item 4).

`python -m pytest --co -q` in an empty temporary project holding one trivial test, with the
plugin (loaded through its `pytest11` entry point) and with `-p no:gradaudit`; the two sides
alternate in paired rounds (the first side alternates too); the ratio is the median of the
per-round ratios (target <= 1.05x). The plugin must import neither torch nor PyYAML here.

    python benchmarks/bench_pytest.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.05


def _startup(folder: Path, extra: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *extra],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def rows(quick: bool) -> list[tuple[str, float, float, str]]:
    """(what, start-up with the plugin, without it, "ratio [lowest-highest] (target)")."""
    rounds = 3 if quick else 21
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_one.py").write_text("def test_one():\n    pass\n")
        _startup(folder, [])  # warm the file cache and the bytecode of both sides
        _startup(folder, ["-p", "no:gradaudit"])
        on: list[float] = []
        off: list[float] = []
        for k in range(rounds):
            sides = [(on, []), (off, ["-p", "no:gradaudit"])]
            for times, extra in sides if k % 2 == 0 else sides[::-1]:
                times.append(_startup(folder, extra))
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    return [
        (
            "pytest start-up (`--co -q`, one trivial test) with the gradaudit plugin vs "
            f"`-p no:gradaudit`, {rounds} paired rounds",
            statistics.median(on),
            statistics.median(off),
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] "
            f"(<= {TARGET}x)",
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for what, measured, baseline, ratio in rows(args.quick):
        print(f"| {what} | {measured * 1e3:.0f} ms | {baseline * 1e3:.0f} ms | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
