"""Hand-made run results for report tests: every outcome a tensor can have, without torch.

The report writers take summaries, not tensors, so these tests build the summaries a run
would fold (`TensorSummary.add` / `add_error`) and feed them to the real writers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gradaudit.compare import Check, TensorSummary, Tol
from gradaudit.plan import Plan
from gradaudit.report.base import RunInfo
from gradaudit.results import GroupResult, RunSummary, Shard
from gradaudit.spec import load_spec
from tests.conftest import small_spec

TOL = Tol("allclose", 1.3e-6, 1e-5)
VERSIONS = {"gradaudit_version": "0", "torch_version": "0", "python_version": "3"}


def check(budget: float) -> Check:
    """One batch's comparison whose worst element used `budget` of the allowance."""
    return Check(
        exact=False,
        passed=budget <= 1,
        max_abs=1e-5 * budget,
        max_rel=1e-3 * budget,
        budget=budget,
        worst_index=(0, 1),
        manual_value=1.0 + budget,
        reference_value=1.0,
        mismatched=3 if budget > 1 else 0,
        nonfinite=0,
        numel=12,
        allowed=1e-5,
    )


def summary(
    name: str, budgets: list[float], errors: tuple[str, ...] = (), skipped: str | None = None
) -> TensorSummary:
    """A tensor's fold over batches 0.. with these budgets, then these errors."""
    s = TensorSummary(name, TOL, skipped=skipped)
    for batch, value in enumerate(budgets):
        s.add(check(value), batch, 3 + batch)
    for error in errors:
        s.add_error(error)
    return s


def loaded_spec(folder: Path, filename: str = "spec.yaml", **overrides: Any) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(yaml.safe_dump(small_spec(**overrides), sort_keys=False), encoding="utf-8")
    return load_spec(path)


def run_info(loaded: Any, tensors: list[str], shard: Shard | None = None) -> RunInfo:
    """What a model run's reports know of it: the spec, and a plan with these tensors."""
    spec = loaded.spec
    b = spec.batches
    plan = Plan(
        kind="model",
        spec_name=spec.name,
        spec_path=str(loaded.path),
        spec_sha256=loaded.sha256,
        cases=(),
        tensors=tuple(tensors),
        shard=shard,
        facts={
            "seed": str(b.seed),
            "batches": f"{b.split}: count={b.count} size={b.size}",
            "tolerance_mode": spec.tolerance.mode,
        },
        header=f"model {spec.model.plugin}, gradients {spec.gradients.plugin}",
    )
    return RunInfo(loaded, plan, VERSIONS, started="2025-01-01T00:00:00")


def group(
    tensors: list[TensorSummary], dtype: str = "float32", done: bool = True, seconds: float = 0.5
) -> GroupResult:
    for s in tensors:
        s.seconds = seconds / len(tensors) if done else 0.0
    return GroupResult("cpu", dtype, tensors, seconds=seconds, device_name="cpu", done=done)


def run_summary(*groups: GroupResult, stopped: str | None = None) -> RunSummary:
    result = RunSummary()
    for g in groups:
        result.add(g)
    result.stopped = stopped
    return result


def every_outcome() -> list[TensorSummary]:
    """pass, fail, error, skipped, and a tensor that failed on two batches then crashed."""
    return [
        summary("ok", [0.1, 0.2]),
        summary("wrong", [0.5, 3.0]),
        summary("crashed", [], ("RuntimeError: boom",)),
        summary("absent", [], skipped="device mps not available"),
        summary("mixed", [5.0, 7.0], ("ValueError: plugin crashed on batch 2",)),
    ]
