"""A third-party target kind, one module registered through `register_targets`: the
hand-written derivative of a polynomial, sum(c * x**p), against autograd, over seeded points.

    target: {kind: poly, power: 3, points: 4, bug: false}

`bug: true` forgets the power's factor (p * x**(p-1) becomes x**(p-1)). It uses the public
API only: the Target protocol (gradaudit.targets), the plan's Skeleton and Plan, the
comparison entry point (gradaudit.compare.check_all) and the result and event types.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradaudit import hookimpl
from gradaudit.compare import Comparison, check_all
from gradaudit.errors import SpecError
from gradaudit.plan import Plan, PlannedCase, Skeleton
from gradaudit.results import CaseResult
from gradaudit.run.events import CaseDone, Event
from gradaudit.spec.common import LoadedSpec
from gradaudit.targets import Context, Linked, Pass


@dataclass(frozen=True)
class Point:
    index: int
    seed: int


class PolyTarget:
    kind = "poly"

    def __init__(self, loaded: LoadedSpec) -> None:
        options = dict(loaded.spec.target.model_extra or {})
        unknown = set(options) - {"power", "points", "bug"}
        if unknown:
            where = loaded.where("target", sorted(unknown)[0])
            raise SpecError(f"{where}: target: unknown option {sorted(unknown)[0]!r}")
        self.loaded = loaded
        self.power = int(options.get("power", 3))
        self.points = int(options.get("points", 4))
        self.bug = bool(options.get("bug", False))

    def head(self) -> Plan:
        spec = self.loaded.spec
        return Plan(
            kind=self.kind,
            spec_name=spec.name,
            spec_path=str(self.loaded.path),
            spec_sha256=self.loaded.sha256,
            cases=(),
            tensors=("grad.x",),
            samples=tuple(range(self.points)),
            header=f"poly sum(c * x**{self.power}), {self.points} points",
        )

    def skeletons(self, devices: Sequence[str], dtypes: Sequence[str]) -> list[Skeleton]:
        samples = tuple(range(self.points))
        return [
            Skeleton(d, t, "gradients", ("grad.x",), samples, None, t)
            for d in devices
            for t in dtypes
        ]

    def samples(self, wanted: tuple[int, ...] | None) -> Iterator[Point]:
        base = self.loaded.spec.seed
        for i in range(self.points):
            if wanted is None or i in wanted:
                yield Point(i, base * 1000 + i)

    def open(self, device: str, dtype: str, cases: list[PlannedCase], context: Context) -> Pass:
        return PolyPass(self, device, dtype, cases)

    def link(self, passes: Sequence[Pass]) -> Linked:
        return Linked(passes)


class PolyPass:
    def __init__(self, target: PolyTarget, device: str, dtype: str, cases: list[PlannedCase]):
        self.target, self.device, self.dtype = target, device, dtype
        self.case = cases[0]
        self.tol = self.case.tensors[0].tol
        self.events: list[Event] = []

    def step(self, point: Point) -> None:
        p = self.target.power
        gen = torch.Generator().manual_seed(point.seed)
        x64 = torch.randn(16, generator=gen, dtype=torch.float64)
        c64 = torch.rand(16, generator=gen, dtype=torch.float64) + 0.5
        dtype = getattr(torch, self.dtype)
        x, c = x64.to(dtype).requires_grad_(), c64.to(dtype)
        (reference,) = torch.autograd.grad((c * x**p).sum(), x)
        factor = 1 if self.target.bug else p
        manual = c * factor * x.detach() ** (p - 1)
        truth = None
        if self.tol.mode == "baseline":
            xt = x.detach().double().requires_grad_()
            (truth,) = torch.autograd.grad((c.double() * xt**p).sum(), xt)
        (result,) = check_all([Comparison(manual, reference, self.tol, truth)], None)
        self.events.append(
            CaseResult(self.device, self.dtype, "grad.x", point.index, point.seed, check=result)
        )

    def timed_out(self, point: Point, message: str) -> None:
        self.events.append(
            CaseResult(self.device, self.dtype, "grad.x", point.index, point.seed, error=message)
        )

    def drain(self) -> Iterator[Event]:
        events, self.events = self.events, []
        yield from events

    def finish(self) -> Iterator[Event]:
        yield from self.drain()
        yield CaseDone(self.case.key, 0.0, self.device)


def build(loaded: LoadedSpec) -> Any:
    return PolyTarget(loaded)


@hookimpl
def register_targets(register: Any) -> None:
    register("poly", build)
