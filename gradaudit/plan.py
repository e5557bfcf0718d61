"""The plan: every case a run will check, decided before any batch runs.

A case is (device, dtype, check kind) with its tensors and each tensor's resolved
tolerance, or the reason it will not run. Filters (--device, --dtype) and --shard are
applied here, so `gradaudit plan` prints exactly what `gradaudit run` will do, and every
report starts from the plan: a planned case that never ran is an error, never nothing.
Torch-free apart from `make_plan`, which asks torch which devices exist.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit.results import Shard
from gradaudit.tolerance import Tol, tolerance_for

if TYPE_CHECKING:
    from gradaudit.audit import Audit
    from gradaudit.checks import CheckKind


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    tol: Tol


@dataclass(frozen=True)
class PlannedCase:
    """One (device, dtype, check) of a run. `dtype` is what it computes in; `group_dtype`
    is the spec dtype whose pass runs it (finite differences compute in float64)."""

    device: str
    dtype: str
    check: str
    tensors: tuple[PlannedTensor, ...]
    skip: str | None = None
    group_dtype: str = ""
    batches: tuple[int, ...] | None = None  # None: the data decides (val without a count)
    rerun: str = ""  # the command that runs this case again alone (see rerun_command)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.device, self.dtype, self.check)

    @property
    def label(self) -> str:
        extra = "" if self.check == "gradients" else f",{self.check}"
        return f"[{self.device},{self.dtype}{extra}]"


@dataclass(frozen=True)
class Plan:
    """Everything a run will check, in order."""

    spec_name: str
    spec_path: str
    spec_sha256: str
    cases: tuple[PlannedCase, ...]
    tensors: tuple[str, ...]
    shard: Shard | None = None
    batches: tuple[int, ...] | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    inputs: tuple[str, ...] = ()  # each batch tensor with its shape, e.g. "inputs 32x8"

    @property
    def checks(self) -> int:
        """Planned tensor checks, skipped ones included."""
        return sum(len(case.tensors) for case in self.cases)

    @property
    def runnable(self) -> list[PlannedCase]:
        return [case for case in self.cases if case.skip is None]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shard"] = str(self.shard) if self.shard else None
        data["checks"] = self.checks
        return data


def device_unavailable(device: str) -> str | None:
    """Why this machine cannot run on `device`, or None when it can."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu":
        return None
    backend: Any = getattr(torch, kind, None) if kind != "mps" else torch.backends.mps
    if backend is None or not backend.is_available():
        return f"{kind} is not available on this machine"
    if index and kind != "mps" and int(index) >= backend.device_count():
        return (
            f"{device} is not available: this machine has {backend.device_count()} {kind} device(s)"
        )
    return None


def shard_batches(
    count: int | None, shard: Shard | None, only: Sequence[int] = ()
) -> tuple[int, ...] | None:
    """The batch indices this run takes: all of `count`, or those of the shard, and of
    those the ones `only` names (--batch). None: the data decides (val without a count)."""
    if only and count is not None:
        beyond = [k for k in only if k >= count]
        if beyond:
            from gradaudit.errors import UsageError

            raise UsageError(f"--batch {beyond[0]}: the spec has batches 0 to {count - 1}")
    if count is None:
        return tuple(sorted(set(only))) if only and shard is None else None
    return tuple(
        k for k in range(count) if (shard is None or shard.takes(k)) and (not only or k in only)
    )


def rerun_command(
    spec_path: str, sets: Sequence[str], device: str, dtype: str, shard: Shard | None
) -> str:
    """A command a user can paste to run one device and dtype of this run again: the same
    spec, --set options, model and batches (add `--batch K` for one batch)."""
    words = ["gradaudit", "run", spec_path, *(w for s in sets for w in ("--set", s))]
    words += ["--device", device, "--dtype", dtype]
    if shard is not None:
        words += ["--shard", str(shard)]
    return shlex.join(words)


def make_plan(
    audit: Audit,
    devices: Sequence[str],
    dtypes: Sequence[str],
    shard: Shard | None = None,
    checks: dict[str, CheckKind] | None = None,
    only: Sequence[int] = (),
) -> Plan:
    """The cases of a run: per device and dtype the gradient comparison, then what each
    registered check kind adds for the spec (repeat, finite differences ...). `only`: the
    batch indices to keep (--batch)."""
    loaded = audit.loaded
    spec = loaded.spec
    names = tuple(audit.tensor_names)
    batches = shard_batches(spec.batches.count, shard, only)
    cases: list[PlannedCase] = []
    for device in devices:
        absent = device_unavailable(device)
        for dtype in dtypes:
            empty = f"shard {shard} has no batches" + (" that --batch chose" if only else "")
            skip = absent or (empty if batches == () else None)
            rerun = rerun_command(str(loaded.path), loaded.sets, device, dtype, shard)
            tensors = tuple(
                PlannedTensor(n, tolerance_for(spec.tolerance, n, device, dtype)) for n in names
            )
            cases.append(
                PlannedCase(device, dtype, "gradients", tensors, skip, dtype, batches, rerun)
            )
            for kind in (checks or {}).values():
                for case in kind.plan_cases(spec, device, dtype, list(dtypes), names, batches):
                    case = dataclasses.replace(case, rerun=rerun)
                    cases.append(case if case.skip or not skip else _skipped(case, skip))
    warnings = tuple(audit_warnings(audit))
    return Plan(
        spec.name,
        str(loaded.path),
        loaded.sha256,
        tuple(cases),
        names,
        shard,
        batches,
        warnings,
        tuple(audit.inputs),
    )


def _skipped(case: PlannedCase, reason: str) -> PlannedCase:
    return dataclasses.replace(case, skip=reason)


def audit_warnings(audit: Audit) -> list[str]:
    """What the plan can already say is weak about this audit."""
    from gradaudit.audit import plugin_options_error

    spec = audit.loaded.spec
    problem = plugin_options_error(audit.gradient_fn, spec.gradients.options)
    found = [f"gradients '{spec.gradients.plugin}' {problem}"] if problem else []
    return [*audit.warnings, *found]


def plan_lines(plan: Plan) -> list[str]:
    """The plan as text: one line per tensor check, with its tolerance or skip reason."""
    lines = [
        f"plan: {plan.spec_name} ({plan.spec_path}): {len(plan.cases)} cases, "
        f"{plan.checks} tensor checks, batches "
        + (
            "chosen by the data"
            if plan.batches is None
            else ", ".join(map(str, plan.batches)) or "none"
        )
        + (f" (shard {plan.shard})" if plan.shard else "")
    ]
    for case in plan.cases:
        where = f"{case.device:<8} {case.dtype:<9} {case.check:<18}"
        for tensor in case.tensors:
            what = f"SKIP  {case.skip}" if case.skip else tensor.tol.describe()
            lines.append(f"{where} {tensor.name:<20} {what}")
    lines += [f"warning: {w}" for w in plan.warnings]
    return lines
