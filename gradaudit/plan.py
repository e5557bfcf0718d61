"""The plan: every case a run will check, decided before any sample runs. Torch-free.

A case is (device, dtype, check) with its tensors, each tensor's resolved tolerance (resolved
here, once), the samples it runs (batch indices of a model, variant indices of an op) or the
reason it will not run. A target proposes its cases as `Skeleton`s; `make_plan` applies the
selection (--shard, --batch, --variant) to their samples and resolves the tolerances, so
`gradaudit plan` prints exactly what `gradaudit run` will do, and the verdict is read against
it: a planned sample that never arrived is an error, never nothing.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradaudit.errors import UsageError
from gradaudit.results import Shard
from gradaudit.spec.common import Tolerance
from gradaudit.tolerance import Tol, tolerance_for

RUN_BY = "run by shard"  # a case another shard runs (merge folds it into that shard's)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    tol: Tol


@dataclass(frozen=True)
class PlannedCase:
    """One (device, dtype, check) of a run. `dtype` is what it computes in; `group_dtype` is
    the spec dtype whose pass runs it (finite differences compute in float64). `samples`:
    the batch or variant indices it runs (None: as many as the data has)."""

    device: str
    dtype: str
    check: str
    tensors: tuple[PlannedTensor, ...]
    skip: str | None = None
    group_dtype: str = ""
    samples: tuple[int, ...] | None = None
    rerun: str = ""  # the command that runs this case again alone

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.device, self.dtype, self.check)

    @property
    def pass_key(self) -> tuple[str, str]:
        """(device, spec dtype): the cases one pass of a target runs together."""
        return (self.device, self.group_dtype or self.dtype)

    @property
    def label(self) -> str:
        extra = "" if self.check == "gradients" else f",{self.check}"
        return f"[{self.device},{self.dtype}{extra}]"


@dataclass(frozen=True)
class Skeleton:
    """A case as a target or check kind proposes it: tensor names without tolerances (the
    plan resolves them from the spec), or with `tol` when the check fixes its own."""

    device: str
    dtype: str
    check: str
    tensors: tuple[str, ...]
    samples: tuple[int, ...] | None
    skip: str | None = None
    group_dtype: str = ""
    tol: Tol | Mapping[str, Tol] | None = None  # one for every tensor, or one each
    rerun: tuple[str, ...] = ()  # what the rerun command adds (--variant NAME)
    truth: bool = True  # False: the truth is no autograd run (finite differences)


@dataclass(frozen=True)
class Plan:
    """Everything a run will check, in order, and what reports say about the run."""

    kind: str  # the target kind: model, op, sharded, or a plugin's
    spec_name: str
    spec_path: str
    spec_sha256: str
    cases: tuple[PlannedCase, ...]
    tensors: tuple[str, ...]
    shard: Shard | None = None
    samples: tuple[int, ...] | None = None  # the selection, when the target numbers them
    sample_count: int | None = None  # how many the target numbers, before the selection
    sample_names: tuple[str, ...] = ()  # an op's variants, by index
    warnings: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # each batch tensor with its shape, e.g. "inputs 32x8"
    facts: dict[str, str] = field(default_factory=dict)  # the target's, for report headers
    header: str = ""  # the console's first line after the spec's name

    @property
    def checks(self) -> int:
        """Planned tensor checks, skipped ones included."""
        return sum(len(case.tensors) for case in self.cases)

    @property
    def runnable(self) -> list[PlannedCase]:
        return [case for case in self.cases if case.skip is None]

    def index(self) -> dict[tuple[str, str, str], int]:
        return {case.key: i for i, case in enumerate(self.cases)}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shard"] = str(self.shard) if self.shard else None
        data["checks"] = self.checks
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        shard = None
        if data.get("shard"):
            shard = Shard.parse(str(data["shard"]))
        cases = tuple(
            PlannedCase(
                **{
                    **c,
                    "tensors": tuple(
                        PlannedTensor(t["name"], Tol(**t["tol"])) for t in c["tensors"]
                    ),
                    "samples": None if c["samples"] is None else tuple(c["samples"]),
                }
            )
            for c in data["cases"]
        )
        fields = {f.name for f in dataclasses.fields(cls)}
        plain = {k: v for k, v in data.items() if k in fields and k not in ("cases", "shard")}
        for key in ("tensors", "sample_names", "warnings", "inputs"):
            plain[key] = tuple(plain.get(key) or ())
        if plain.get("samples") is not None:
            plain["samples"] = tuple(plain["samples"])
        return cls(cases=cases, shard=shard, **plain)


def subset(option: str, chosen: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """The entries of the spec's list that an option picks (all when not given), in the
    spec's order; one the spec does not have is a usage error."""
    unknown = [c for c in chosen if c not in allowed]
    if unknown:
        raise UsageError(f"{option} {unknown[0]}: not in the spec's list {list(allowed)}")
    return [a for a in allowed if a in chosen] if chosen else list(allowed)


def rerun_command(
    spec_path: str, sets: Sequence[str], device: str, dtype: str, shard: Shard | None = None
) -> str:
    """A command a user can paste to run one device and dtype of this run again: the same
    spec, --set options, model and samples (add `--batch K` for one batch)."""
    words = ["gradaudit", "run", spec_path, *(w for s in sets for w in ("--set", s))]
    words += ["--device", device, "--dtype", dtype]
    if shard is not None:
        words += ["--shard", str(shard)]
    return shlex.join(words)


@dataclass(frozen=True)
class Selection:
    """What the command line chose of a spec: devices, dtypes, shard, samples."""

    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    shard: Shard | None = None
    only: tuple[int, ...] = ()  # --batch indices, or --variant names mapped to indices
    sets: tuple[str, ...] = ()


def make_plan(
    head: Plan,
    skeletons: Sequence[Skeleton],
    tolerance: Tolerance,
    selection: Selection,
) -> Plan:
    """`head` (the target's facts, no cases yet) with the cases of its skeletons: samples
    cut to the selection, tolerances resolved, rerun commands made."""
    cases: list[PlannedCase] = []
    shard = selection.shard
    seen: set[tuple[str, str, str]] = set()
    for s in skeletons:
        key = (s.device, s.dtype, s.check)
        if key in seen:
            raise ValueError(f"two planned cases share {key}")
        seen.add(key)
        samples, skip = _samples(s, shard, selection.only)
        rerun = rerun_command(head.spec_path, selection.sets, s.device, s.group_dtype or s.dtype)
        if s.rerun:
            rerun += " " + shlex.join(s.rerun)
        elif shard is not None:
            rerun += f" --shard {shard}"
        tensors = tuple(PlannedTensor(n, _tol(s, n, tolerance)) for n in s.tensors)
        cases.append(
            PlannedCase(
                s.device, s.dtype, s.check, tensors, s.skip or skip, s.group_dtype, samples, rerun
            )
        )
    chosen = head.samples
    if chosen is not None:
        chosen = tuple(
            k for k in chosen
            if (shard is None or shard.takes(k)) and (not selection.only or k in selection.only)
        )  # fmt: skip
    count = None if head.samples is None else len(head.samples)
    return dataclasses.replace(
        head, cases=tuple(cases), shard=shard, samples=chosen, sample_count=count
    )


def _tol(s: Skeleton, name: str, tolerance: Tolerance) -> Tol:
    """The tolerance a skeleton fixes for a tensor, or the spec's for it."""
    if isinstance(s.tol, Tol):
        return s.tol
    fixed = s.tol.get(name) if s.tol is not None else None
    found = fixed or tolerance_for(tolerance, name, s.device, s.dtype)
    return found if s.truth else found.without_truth()


def _samples(
    s: Skeleton, shard: Shard | None, only: Sequence[int]
) -> tuple[tuple[int, ...] | None, str | None]:
    """A case's samples under the selection, and why it then does not run (or None)."""
    if s.samples is None:
        return None, None
    if len(s.samples) == 1 and shard is not None and not shard.takes(s.samples[0]):
        return (), f"{RUN_BY} {shard.owner(s.samples[0])}/{shard.total}"
    kept = tuple(
        k for k in s.samples if (shard is None or shard.takes(k)) and (not only or k in only)
    )
    if kept or not s.samples:
        return kept, None
    if only:
        return kept, "not among the samples chosen (--batch / --variant)"
    return kept, f"shard {shard} has none of its samples"


def plan_lines(plan: Plan) -> list[str]:
    """The plan as text: one line per tensor check, with its tolerance or skip reason."""
    names = plan.sample_names
    shown = [names[k] if k < len(names) else str(k) for k in plan.samples or ()]
    chosen = "chosen by the data" if plan.samples is None else ", ".join(shown) or "none"
    what = "variants" if plan.sample_names else "batches"
    lines = [
        f"plan: {plan.spec_name} ({plan.spec_path}): {len(plan.cases)} cases, "
        f"{plan.checks} tensor checks, {what} {chosen}"
        + (f" (shard {plan.shard})" if plan.shard else "")
    ]
    for case in plan.cases:
        where = f"{case.device:<8} {case.dtype:<9} {case.check:<18}"
        for tensor in case.tensors:
            text = f"SKIP  {case.skip}" if case.skip else tensor.tol.describe()
            lines.append(f"{where} {tensor.name:<20} {text}")
    lines += [f"warning: {w}" for w in plan.warnings]
    if "triton" in plan.facts:
        lines.append(f"note: {plan.facts['triton']}")
    return lines
