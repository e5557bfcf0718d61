"""Targets: the thing an audit checks. The one protocol that differs between kinds of audit.

A target is built from a loaded spec in the process that runs plugin code (the executor),
and tells the engine:

- `head()`: its facts, for the plan and every report (a `Plan` without cases);
- `skeletons(devices, dtypes)`: the cases it proposes (the plan cuts their samples to the
  selection and resolves the tolerances);
- `samples(wanted)`: its samples in order: a model's batches, an op's input variants;
- `open(device, dtype, cases, context)`: a `Pass` that runs those cases of one device and
  dtype, sample by sample;
- `link(passes)`: how the passes of one device take each sample (an order, and work they
  share; `Linked` is the plain one).

The engine (gradaudit.run) does the rest the same way for every kind: the plan, the loop,
the time limit, the event stream, the verdict, the reports. The built-in kinds are `model`
(targets.model), `op` (targets.op) and `sharded` (targets.sharded, run by torchrun ranks);
a plugin registers more through the `register_targets` hook. `gradaudit.check` audits values
a notebook computed (targets.values), in the caller's process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gradaudit.plan import Plan, PlannedCase, Skeleton
    from gradaudit.run.events import Event
    from gradaudit.spec.common import LoadedSpec


class Sample(Protocol):
    """A batch or an input variant: what one step of every pass takes."""

    @property
    def index(self) -> int: ...

    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class Context:
    """What a pass needs of the run beyond its cases."""

    timeout: float | None = None
    mutants: list[Any] | None = None  # gradaudit.mutate.Mutant, under `gradaudit mutate`
    options: dict[str, Any] = field(default_factory=dict)  # the command line's plugin options


class Pass(Protocol):
    """The cases of one (device, dtype): `step` runs one sample, and its events wait in
    `drain` (so that a lender's work is done before its borrowers report); `finish` ends
    every case."""

    def step(self, sample: Any) -> None: ...

    def timed_out(self, sample: Any, message: str) -> None: ...

    def drain(self) -> Iterator[Event]: ...

    def finish(self) -> Iterator[Event]: ...


class Linked:
    """The passes of one device, each taking every sample in the given order."""

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.order = list(passes)

    def before(self, sample: Any) -> None:
        """Called before the passes take `sample` (work they share can be decided here)."""


class Runnable(Protocol):
    """What the engine's loop needs of a target: its samples and its passes."""

    def samples(self, wanted: tuple[int, ...] | None) -> Iterable[Any]: ...

    def open(self, device: str, dtype: str, cases: list[PlannedCase], context: Context) -> Pass: ...

    def link(self, passes: Sequence[Pass]) -> Linked: ...


class Target(Runnable, Protocol):
    """A kind of audit: its facts and cases for the plan, and what the loop needs."""

    kind: str

    def head(self) -> Plan: ...

    def skeletons(self, devices: Sequence[str], dtypes: Sequence[str]) -> list[Skeleton]: ...


class TargetKind(Protocol):
    """What `register_targets` registers: builds the target of a loaded spec of its kind
    (`loaded.spec.target` holds its section for a plugin's kind)."""

    def __call__(self, loaded: LoadedSpec) -> Target: ...
