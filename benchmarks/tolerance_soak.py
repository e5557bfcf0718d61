"""Soak the `auto` tolerances: the shipped spec over many seeded batches, every dtype, on the CPU.

Prints dtype x tensor group -> worst budget used (max |diff| / allowed over all batches)
and the count of false failures (a correct manual gradient failing). Expected: 0.

    python benchmarks/tolerance_soak.py --batches 1000          # the issue's soak (slow)
    python benchmarks/tolerance_soak.py --batches 20 --quick    # CI: just check it runs
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from gradaudit.api import run_groups
from gradaudit.audit import Audit
from gradaudit.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def group_of(tensor: str) -> str:
    return "h.*" if tensor.startswith("h.") else tensor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "specs" / "charrnn.yaml"))
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="exit 0 whatever the figures")
    parser.add_argument("--dtype", action="append", help="only these dtypes (repeatable)")
    args = parser.parse_args()

    loaded = load_spec(args.spec)
    spec = loaded.spec.model_copy(
        update={"batches": loaded.spec.batches.model_copy(update={"count": args.batches})}
    )
    audit = Audit(type(loaded)(spec, loaded.path, loaded.sha256, loaded.lines))
    worst: dict[tuple[str, str], float] = defaultdict(float)
    failures: dict[str, int] = defaultdict(int)
    start = time.perf_counter()
    dtypes = args.dtype or list(spec.dtypes)
    for dtype in dtypes:
        for group in run_groups(audit, ["cpu"], [dtype]):
            for s in group.tensors:
                key = (dtype, group_of(s.tensor))
                worst[key] = max(worst[key], s.budget)
                failures[dtype] += s.failed_batches + s.error_count
        print(f"{dtype}: done in {time.perf_counter() - start:.0f}s", file=sys.stderr)

    groups = sorted({g for _, g in worst}, key=lambda g: (g != "logits", g != "h.*", g))
    print(
        f"worst budget used over {args.batches} batches of {spec.batches.size} rows"
        f" ({spec.name}, tolerance mode {spec.tolerance.mode})"
    )
    print("| dtype | " + " | ".join(groups) + " | false failures |")
    print("|---|" + "---|" * (len(groups) + 1))
    for dtype in dtypes:
        cells = [f"{100 * worst[(dtype, g)]:.1f}%" for g in groups]
        print(f"| {dtype} | " + " | ".join(cells) + f" | {failures[dtype]} |")
    total = sum(failures.values())
    return 0 if args.quick or total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
