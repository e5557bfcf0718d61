"""Soak the `auto` tolerances: shipped specs over many seeded batches, every dtype, on the CPU.

For each spec and dtype, one case of N batches runs the correct manual gradients; a failure
is a false failure (the rules called correct code wrong). Printed per spec, a row per dtype:
the largest elementwise budget used (max |diff| / allowed over all batches and tensors), the
largest systematic-error statistic as a share of its bound (|bias| / bound, over the N
batches), and the false failures (failing batches + errors + systematic failures). Expected: 0.

    python benchmarks/tolerance_soak.py --batches 1000              # the issue's soak (minutes)
    python benchmarks/tolerance_soak.py --batches 20 --quick        # CI: just check it runs
    python benchmarks/tolerance_soak.py --batches 1000 --json soak.json   # for tables.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gradaudit.api import run_groups
from gradaudit.audit import Audit
from gradaudit.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SPECS = ["specs/charrnn.yaml", "specs/mlp-batchnorm.yaml"]
DTYPES = ["float64", "float32", "bfloat16", "float16"]


def soak(spec_path: str, dtype: str, batches: int) -> dict[str, Any]:
    """One dtype of one spec over `batches` batches: the row of the soak table."""
    loaded = load_spec(spec_path)
    spec = loaded.spec.model_copy(
        update={
            "batches": loaded.spec.batches.model_copy(update={"count": batches}),
            "dtypes": [dtype],
        }
    )
    audit = Audit(type(loaded)(spec, loaded.path, loaded.sha256, loaded.lines))
    start = time.perf_counter()
    row: dict[str, Any] = {
        "spec": spec.name,
        "dtype": dtype,
        "batches": batches,
        "budget": 0.0,
        "budget_tensor": "",
        "bias_share": 0.0,
        "bias_tensor": "",
        "false_failures": 0,
        "failing": [],
    }
    for group in run_groups(audit, ["cpu"], [dtype]):
        for s in group.tensors:
            if s.budget > row["budget"]:
                row["budget"], row["budget_tensor"] = s.budget, s.tensor
            facts = s.systematic
            if facts["bound"]:
                share = abs(facts["bias"]) / facts["bound"]
                if share > row["bias_share"]:
                    row["bias_share"], row["bias_tensor"] = share, s.tensor
            wrong = s.failed_batches + s.error_count + (facts["verdict"] == "fail")
            row["false_failures"] += wrong
            if wrong:
                row["failing"].append(s.tensor)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown soak table."""
    lines = [
        "| spec | dtype | batches | worst budget used | worst bias / bound | false failures |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['spec']} | {r['dtype']} | {r['batches']} | {100 * r['budget']:.1f}% "
            f"({r['budget_tensor']}) | {100 * r['bias_share']:.1f}% ({r['bias_tensor']}) | "
            f"{r['false_failures']} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--spec", action="append", help="only these specs (repeatable)")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="exit 0 whatever the figures")
    parser.add_argument("--dtype", action="append", help="only these dtypes (repeatable)")
    parser.add_argument("--json", help="also write the rows here (benchmarks/tables.py reads it)")
    args = parser.parse_args()

    rows = []
    for spec in args.spec or [str(REPO / s) for s in SPECS]:
        for dtype in args.dtype or DTYPES:
            row = soak(spec, dtype, args.batches)
            rows.append(row)
            print(
                f"{row['spec']} {dtype}: {row['false_failures']} false failures "
                f"{row['failing']} in {row['seconds']:.0f}s",
                file=sys.stderr,
            )
            if args.json:  # after every row, so a long soak can be read while it runs
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(table(rows)))
    total = sum(r["false_failures"] for r in rows)
    return 0 if args.quick or total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
