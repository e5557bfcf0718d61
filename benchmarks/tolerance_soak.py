"""Soak the `auto` tolerances: shipped specs over many seeded batches, every dtype, on the CPU.

For each spec and dtype, one case of N batches runs the correct manual gradients; a failure
is a false failure (the rules called correct code wrong). Printed per spec, a row per dtype:
the largest elementwise budget used (max |diff| / allowed over all batches and tensors), the
largest systematic-error statistic as a share of its bound (|bias| / bound, over the N
batches), and the false failures (failing batches + errors + systematic failures). Expected: 0.
The systematic-error check is also judged as an 8-batch run sees it: the N batches cut into
windows of --window batches, each window's verdict taken alone (N / window runs per tensor).

    python benchmarks/tolerance_soak.py --batches 1000              # the issue's soak (minutes)
    python benchmarks/tolerance_soak.py --batches 20 --quick        # CI: just check it runs
    python benchmarks/tolerance_soak.py --batches 1000 --json soak.json   # for tables.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradaudit import systematic
from gradaudit.results import CaseResult, GroupResult
from gradaudit.spec import LoadedSpec, load_spec

REPO = Path(__file__).resolve().parents[1]
SPECS = ["specs/charrnn.yaml", "specs/mlp-batchnorm.yaml"]
DTYPES = ["float64", "float32", "bfloat16", "float16"]


def soak(spec_path: str, dtype: str, batches: int, window: int = 8) -> dict[str, Any]:
    """One dtype of one spec over `batches` batches: the row of the soak table."""
    loaded = load_spec(spec_path)
    spec = loaded.spec.model_copy(
        update={
            "batches": loaded.spec.batches.model_copy(update={"count": batches}),
            "dtypes": [dtype],
        }
    )
    loaded = dataclasses.replace(loaded, spec=spec)
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
        "window": window,
        "window_share": 0.0,
        "window_failures": 0,
    }
    windows: dict[tuple[str, int], list[float]] = {}

    def result(event: CaseResult) -> None:
        if event.check is not None:
            c = event.check
            if c.bias is not None and c.reference_bias is not None:
                sums = windows.setdefault((event.tensor, event.batch // window), [0, 0.0, 0.0])
                d = c.bias - c.reference_bias
                sums[0] += 1
                sums[1] += d
                sums[2] += d * d

    groups = run_with_results(loaded, [dtype], result)
    eps = {s.tensor: s.tol.eps for g in groups for s in g.tensors}
    for (tensor, _), (n, total, squares) in windows.items():
        n = int(n)
        if n < 2:
            continue
        share = abs(total / n) / systematic.bound(n, total, squares, eps[tensor])
        row["window_share"] = max(row["window_share"], share)
        row["window_failures"] += systematic.verdict(n, total, squares, eps[tensor]) == "fail"
    row["false_failures"] += row["window_failures"]
    for group in groups:
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


def run_with_results(
    loaded: LoadedSpec, dtypes: list[str], result: Callable[[CaseResult], None]
) -> list[GroupResult]:
    """Run the spec on the CPU in this process, as `gradaudit.api.run_loaded` does (the same
    job, loop and fold), handing every per-batch result to `result` as it comes; every
    case's result, in plan order."""
    from gradaudit.run.events import Failed, Planned
    from gradaudit.run.executor import Job, run_job
    from gradaudit.run.fold import Fold

    fold: Fold | None = None

    def emit(events: list[Any]) -> None:
        nonlocal fold
        for event in events:
            if isinstance(event, Planned):
                fold = Fold(event.plan)
            elif isinstance(event, Failed):
                raise RuntimeError(f"{loaded.path}: {event.message}")
            elif fold is not None:
                fold.apply(event)
                if isinstance(event, CaseResult):
                    result(event)

    job = Job(str(loaded.path), loaded.sets, ("cpu",), tuple(dtypes), threads=0)
    run_job(job, emit, loaded)
    assert fold is not None
    fold.close("the run ended before it", finished=True)
    return fold.in_plan_order()


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown soak table."""
    lines = [
        "| spec | dtype | batches | worst budget used | worst bias / bound | "
        "worst bias / bound, 8-batch windows | false failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['spec']} | {r['dtype']} | {r['batches']} | {100 * r['budget']:.1f}% "
            f"({r['budget_tensor']}) | {100 * r['bias_share']:.1f}% ({r['bias_tensor']}) | "
            f"{100 * r['window_share']:.1f}% | {r['false_failures']} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--spec", action="append", help="only these specs (repeatable)")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="exit 0 whatever the figures")
    parser.add_argument("--dtype", action="append", help="only these dtypes (repeatable)")
    parser.add_argument("--json", help="also write the rows here (benchmarks/tables.py reads it)")
    parser.add_argument("--window", type=int, default=8, help="batches per systematic window")
    args = parser.parse_args()

    rows = []
    for spec in args.spec or [str(REPO / s) for s in SPECS]:
        for dtype in args.dtype or DTYPES:
            row = soak(spec, dtype, args.batches, args.window)
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
