"""Hand-made JSON reports (docs/json-report.md) for the CI add-on tests (not a test file).

The add-ons read the report as data, so each test builds exactly the report it needs: every
outcome a tensor can have, nulls where a real report has them, and the fields a real report
fills (checked against real reports in tests/test_ci_diff.py).
"""

from __future__ import annotations

import copy
from typing import Any

RUN = {
    "gradaudit_version": "0.1.0", "torch_version": "2.13.0+cpu", "python_version": "3.11.7",
    "spec": "specs/charrnn.yaml", "spec_name": "charrnn", "spec_sha256": "abc", "seed": "64",
    "batches": "train: count=8 size=32", "tolerance_mode": "auto", "shard": "",
    "started": "2026-01-01T00:00:00+00:00", "host": "ci",
}  # fmt: skip


def tensor(
    name: str, status: str = "pass", budget: float | None = 0.2, **extra: Any
) -> dict[str, Any]:
    """One tensor summary; `budget=None` gives it no worst element (skipped, error)."""
    worst = None
    if budget is not None:
        worst = {
            "exact": budget == 0, "passed": status != "fail", "max_abs": 1e-9 * budget,
            "max_rel": 1e-6, "budget": budget, "worst_index": [1, 2],
            "manual_value": 0.5 + 1e-7, "reference_value": 0.5, "mismatched": 0,
            "nonfinite": 0, "numel": 12, "allowed": 1e-7, "reference_error": 0.0,
            "sym_rel": 1e-6, "cosine": 1.0, "located": True,
        }  # fmt: skip
    red = status == "fail"
    errors = ["batch 0 (seed 64): gradients 'x' raised RuntimeError: boom"]
    record: dict[str, Any] = {
        "tensor": name, "status": status,
        "tol": {"mode": "baseline", "rtol": 1.3e-06, "atol": 1e-05},
        "batches": 0 if budget is None else 2, "failed_batches": 1 if red else 0,
        "exact": False, "max_abs": 1e-9, "max_rel": 1e-6, "mismatched": 3 if red else 0,
        "nonfinite": 0, "numel": 24, "worst": worst,
        "worst_batch": None if budget is None else 1, "worst_seed": None if budget is None else 65,
        "errors": errors if status == "error" else [],
        "error_count": 1 if status == "error" else 0,
        "skipped": "cuda is not available on this machine" if status == "skipped" else None,
        "systematic": {"verdict": "pass", "bias": 0.0, "bound": 1e-7, "batches": 2},
    }  # fmt: skip
    record.update(extra)
    return record


def group(
    tensors: list[dict[str, Any]],
    device: str = "cpu",
    dtype: str = "float32",
    check: str = "gradients",
    skipped: str | None = None,
    complete: bool = True,
) -> dict[str, Any]:
    return {
        "device": device, "dtype": dtype, "check": check, "device_name": device,
        "skipped": skipped, "complete": complete, "warnings": [], "seconds": 0.1,
        "tensors": tensors,
    }  # fmt: skip


def report(*groups: dict[str, Any], stopped: str | None = None, **run: Any) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    names = {"pass": "passed", "fail": "failed", "error": "errors", "skipped": "skipped"}
    for g in groups:
        for t in g["tensors"]:
            counts[names[t["status"]]] += 1
    if stopped:
        counts["errors"] += 1
    return {
        "schema": "gradaudit-run", "schema_version": 1, "run": {**RUN, **run}, "cases": [],
        "groups": copy.deepcopy(list(groups)), "totals": counts, "stopped": stopped,
    }  # fmt: skip


def budgets(**named: float | None) -> dict[str, Any]:
    """A one-case report (cpu float32 gradients) of passing tensors with these budgets."""
    return report(group([tensor(n, "pass", b) for n, b in named.items()]))
