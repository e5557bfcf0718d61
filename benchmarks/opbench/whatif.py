"""What check_op would need to catch the bugs its plain call misses, and to stay green on the
correct ops it false-alarms on: the same call with one option a user can write today (a
non-default argument, a long shape, a declaration that names a dim). It measures what
run.py's gradaudit row would gain from variants derived from the candidate's signature,
long reductions in low precision and contract-aware variants.

    python benchmarks/opbench/whatif.py [--json OUT]

A bug counts as caught when the option makes check_op fail a case the correct op passes
under the same option; "correct green" says whether the correct op passes under it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gradaudit.targets.op.api import check_op  # noqa: E402
from opbench.bugs import BY_NAME as BUGS  # noqa: E402
from opbench.cases import BY_NAME as OPS  # noqa: E402
from opbench.cases import Op  # noqa: E402

DTYPES = ["float64", "float32", "bfloat16", "float16"]
LENGTHS = (1024, 4096, 16384, 65536)
ONLY_SHAPES = {"sizes": False, "leading": 0, "layouts": False}

# bug -> (what the option is, check_op keywords)
ARGUMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "softmax-dim-last": ("args dim=0", {"args": {"dim": 0}}),
    "logsumexp-keepdim": ("args keepdim=True", {"args": {"keepdim": True}}),
    "group_norm-whole-sample": ("args num_groups=2", {"args": {"num_groups": 2}}),
    "mean-keepdim": ("args dim=1, keepdim=True", {"args": {"dim": 1, "keepdim": True}}),
    "mean-count": ("args dim=(0, 1)", {"args": {"dim": (0, 1)}}),
    "softplus-beta": ("args beta=2", {"args": {"beta": 2.0}}),
    "softplus-threshold": ("args threshold=0.5", {"args": {"threshold": 0.5}}),
    "huber-sum-as-mean": ("args reduction='sum'", {"args": {"reduction": "sum"}}),
    "huber-delta-one": ("args delta=0.5", {"args": {"delta": 0.5}}),
    "nll-ignored-rows-grad": ("args ignore_index=0", {"args": {"ignore_index": 0}}),
    "nll-mean-all-rows": ("args ignore_index=0", {"args": {"ignore_index": 0}}),
    "embedding-padding": ("args padding_idx=0", {"args": {"padding_idx": 0}}),
    "cumprod-dim-last": ("args dim=0", {"args": {"dim": 0}}),
    "max-keepdim": ("args keepdim=True", {"args": {"keepdim": True}}),
    "max-dim-last": ("args dim=0", {"args": {"dim": 0}}),
    "embedding-grad-view": (
        "indices declared 2-D, [4, 12]",
        {
            "inputs": {
                "indices": {"shape": [4, 12], "dtype": "int64", "high": 16},
                "weight": (16, 8),
            }
        },
    ),
}

# accumulation bug -> the inputs' shapes at a reduction of length n
LONG: dict[str, Any] = {
    "softmax-acc-input": lambda n: {"x": [2, n]},
    "logsumexp-acc-input": lambda n: {"x": [2, n]},
    "group_norm-acc-input": lambda n: {"x": [n // 64, 8, 64]},  # n = N x spatial per channel
    "mean-acc-input": lambda n: {"x": [2, n // 2]},  # the full reduction: n elements
    "huber-acc-input": lambda n: {"input": [2, n // 2], "target": [2, n // 2]},
    "nll-acc-input": lambda n: {"logp": [n, 16], "target": [n]},
    "bmm-acc-input": lambda n: {"a": [2, 8, n], "b": [2, n, 8]},
}

# correct op -> (what the declaration changes, check_op keywords) to keep to its contract
CONTRACTS: dict[str, tuple[str, dict[str, Any]]] = {
    "group_norm": ("variants leading: 0 (dim 1 is the channel dim)", {"variants": {"leading": 0}}),
    "bmm": ("variants leading: 0 (bmm takes 3-D only)", {"variants": {"leading": 0}}),
    "nll_loss": (
        "dims N, C; target high: C; variants leading: 0",
        {
            "dims": {"N": 8, "C": 16},
            "inputs": {
                "logp": {"shape": ["N", "C"]},
                "target": {"shape": ["N"], "dtype": "int64", "high": "C"},
            },
            "variants": {"leading": 0},
        },
    ),
    "embedding": (
        "dims T, V, D; indices high: V",
        {
            "dims": {"T": 12, "V": 16, "D": 8},
            "inputs": {
                "indices": {"shape": ["T"], "dtype": "int64", "high": "V"},
                "weight": {"shape": ["V", "D"]},
            },
        },
    ),
}


def failing(function: type[torch.autograd.Function], op: Op, options: dict[str, Any]) -> set[str]:
    """The failing variant/dtype cases of check_op under these options."""
    kwargs = {"inputs": op.inputs, "dtypes": DTYPES, **options}
    try:
        result = check_op(function, op.reference, raise_on_failure=False, **kwargs)
    except Exception as exc:
        return {f"raised {type(exc).__name__}"}
    return {f"{g.check.removeprefix('variant:')}/{g.dtype}" for g, _ in result.failures}


def attempt(bug: str, label: str, options: dict[str, Any]) -> dict[str, Any]:
    op = OPS[BUGS[bug].op]
    correct = failing(op.function, op, options)
    found = failing(BUGS[bug].function, op, options) - correct
    return {
        "bug": bug,
        "option": label,
        "caught": bool(found),
        "correct_green": not correct,
        "cases": sorted(found)[:4],
    }


def run() -> list[dict[str, Any]]:
    rows = [attempt(bug, label, options) for bug, (label, options) in ARGUMENTS.items()]
    for bug, shapes in LONG.items():
        tried = None
        for n in LENGTHS:
            options = {
                "dtypes": ["bfloat16", "float16"],
                "variants": {**ONLY_SHAPES, "shapes": [shapes(n)]},
            }
            tried = attempt(bug, f"one variant, reduction of {n}, bf16/fp16", options)
            if tried["caught"]:
                break
        assert tried is not None
        rows.append(tried)
    for name, (label, options) in CONTRACTS.items():
        op = OPS[name]
        rows.append(
            {"bug": f"{name} (correct)", "option": label, "caught": False,
             "correct_green": not failing(op.function, op, options), "cases": []}
        )  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = run()
    print("| bug | option | caught | correct op green |\n|---|---|---|---|")
    for r in rows:
        caught = "–" if r["bug"].endswith("(correct)") else ("yes" if r["caught"] else "no")
        green = "yes" if r["correct_green"] else "no"
        print(f"| {r['bug']} | {r['option']} | {caught} | {green} |")
    print(f"\nwall {time.perf_counter() - start:.0f} s, torch {torch.__version__}, 1 thread")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
