"""The events an executor sends its supervisor, and their wire form: one JSON line each on a
pipe of their own (plugin code printing to stdout cannot mix in). Torch-free.

In order: `Planned` (the plan, made where the plugins are loaded), then per case
`CaseStarted`, its `CaseResult`s (one tensor on one sample: a comparison, or the error that
prevented it; sent a sample at a time), `CaseDone`; `At` before each sample, so that a
supervisor knows what a hang or a crash interrupted; `MutationReport`s under `mutate`; and
`Finished`, or `Failed` for an error that stops the run before it starts (exit 2). A run whose
events stop before `Finished` did not finish: the supervisor says what did not run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gradaudit.mutate import Mutant, MutantResult, MutationReport
from gradaudit.plan import Plan
from gradaudit.results import CaseResult, Check
from gradaudit.tolerance import Tol

CHECK_FIELDS = [f.name for f in dataclasses.fields(Check)]


@dataclass(frozen=True)
class Planned:
    plan: Plan


@dataclass(frozen=True)
class CaseStarted:
    key: tuple[str, str, str]  # (device, dtype, check) of a planned case


@dataclass(frozen=True)
class CaseDone:
    """A case ended: its time, the device's name, and the tensors whose reference was zero
    on every sample (their check proves nothing)."""

    key: tuple[str, str, str]
    seconds: float = 0.0
    device_name: str = ""
    zero_reference: tuple[str, ...] = ()


@dataclass(frozen=True)
class At:
    """The executor begins a sample on one pass (a device and a spec dtype)."""

    device: str
    sample: int
    dtype: str = ""


@dataclass(frozen=True)
class Failed:
    """The run cannot start: a one-line message and the exit code it warrants."""

    message: str
    exit_code: int


@dataclass(frozen=True)
class Stopped:
    """The run went as far as it could: why the rest did not run (a sharded target's rank
    failed first, for one)."""

    reason: str


@dataclass(frozen=True)
class Finished:
    pass


Event = (
    Planned
    | CaseStarted
    | CaseResult
    | CaseDone
    | At
    | MutationReport
    | Failed
    | Stopped
    | Finished
)


def encode(events: list[Event]) -> bytes:
    """Events as lines; a sample's results share one line."""
    lines = []
    results: list[list[Any]] = []
    for event in events:
        if isinstance(event, CaseResult):
            results.append(_result(event))
            continue
        if results:
            lines.append(json.dumps({"e": "r", "items": results}))
            results = []
        lines.append(json.dumps(_other(event)))
    if results:
        lines.append(json.dumps({"e": "r", "items": results}))
    return "".join(line + "\n" for line in lines).encode()


def _result(r: CaseResult) -> list[Any]:
    outcome: Any = r.error if r.check is None else [getattr(r.check, f) for f in CHECK_FIELDS]
    return [r.device, r.dtype, r.kind, r.tensor, r.batch, r.seed, outcome]


def _other(event: Event) -> dict[str, Any]:
    if isinstance(event, Planned):
        return {"e": "plan", "plan": event.plan.to_dict()}
    if isinstance(event, CaseStarted):
        return {"e": "start", "key": list(event.key)}
    if isinstance(event, CaseDone):
        return {"e": "done", **dataclasses.asdict(event), "key": list(event.key)}
    if isinstance(event, At):
        return {"e": "at", "device": event.device, "sample": event.sample, "dtype": event.dtype}
    if isinstance(event, MutationReport):
        return {"e": "mutation", "report": _mutation(event)}
    if isinstance(event, Failed):
        return {"e": "failed", "message": event.message, "exit_code": event.exit_code}
    if isinstance(event, Stopped):
        return {"e": "stopped", "reason": event.reason}
    if isinstance(event, Finished):
        return {"e": "finished"}
    raise TypeError(f"not an event: {type(event).__name__}")


def _mutation(report: MutationReport) -> dict[str, Any]:
    results = []
    for r in report.results:
        m = r.mutant
        mutant = {"operator": m.operator, "tensor": m.tensor, "delta": m.delta}
        mutant["relative"] = m.relative
        fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "mutant"}
        results.append({"mutant": mutant, **fields})
    return {
        "device": report.device,
        "dtype": report.dtype,
        "results": results,
        "sensitivity": report.sensitivity,
        "tolerances": {k: dataclasses.asdict(v) for k, v in report.tolerances.items()},
        "bias_sensitivity": report.bias_sensitivity,
        "zero": sorted(report.zero),
    }


def decode(line: bytes) -> Iterator[Event]:
    """The events of one line (a line of results holds several)."""
    data = json.loads(line)
    kind = data["e"]
    if kind == "r":
        for device, dtype, check, tensor, batch, seed, outcome in data["items"]:
            found = None
            if not isinstance(outcome, str):
                values = dict(zip(CHECK_FIELDS, outcome, strict=True))
                values["worst_index"] = tuple(values["worst_index"])
                found = Check(**values)
            error = outcome if isinstance(outcome, str) else None
            yield CaseResult(device, dtype, tensor, batch, seed, found, error, None, check)
    elif kind == "plan":
        yield Planned(Plan.from_dict(data["plan"]))
    elif kind == "start":
        yield CaseStarted(tuple(data["key"]))
    elif kind == "done":
        yield CaseDone(
            tuple(data["key"]),
            float(data["seconds"]),
            str(data["device_name"]),
            tuple(data["zero_reference"]),
        )
    elif kind == "at":
        yield At(str(data["device"]), int(data["sample"]), str(data["dtype"]))
    elif kind == "mutation":
        yield _mutation_back(data["report"])
    elif kind == "failed":
        yield Failed(str(data["message"]), int(data["exit_code"]))
    elif kind == "stopped":
        yield Stopped(str(data["reason"]))
    elif kind == "finished":
        yield Finished()
    else:
        raise ValueError(f"unknown event {kind!r}")


def _mutation_back(data: dict[str, Any]) -> MutationReport:
    results = []
    for r in data["results"]:
        m = r.pop("mutant")
        mutant = Mutant(m["operator"], m["tensor"], _unused, m["delta"], m["relative"])
        results.append(MutantResult(mutant, **r))
    return MutationReport(
        data["device"],
        data["dtype"],
        results,
        data["sensitivity"],
        {k: Tol(**v) for k, v in data["tolerances"].items()},
        data["bias_sensitivity"],
        set(data["zero"]),
    )


def _unused(*args: object) -> None:
    """A mutant's change runs in the executor; the supervisor only reports it."""
    return None
