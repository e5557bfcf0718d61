"""A third-party check kind with its own spec options, one module through `register_checks`
(not a test file; load through a spec's `plugins:`).

    checks: {again: {rtol: 0.0, atol: 0.0}}

`again` calls the manual gradient a second time on the same forward and compares the two
with allclose at the spec's rtol and atol (default: bitwise). Public API only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradaudit import hookimpl
from gradaudit.errors import SpecError
from gradaudit.plan import PlannedCase, Skeleton
from gradaudit.tolerance import Tol

NAME = "again"
OPTIONS = ("rtol", "atol")


class AgainCheck:
    targets = ("model",)

    def plan(
        self,
        spec: Any,
        device: str,
        dtype: str,
        dtypes: list[str],
        names: Sequence[str],
        samples: tuple[int, ...] | None,
    ) -> list[Skeleton]:
        options = spec.checks.options(NAME)
        if options is None:
            return []
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise SpecError(f"checks.{NAME}: unknown option {unknown[0]!r} (has {OPTIONS})")
        tol = Tol("allclose", float(options.get("rtol", 0.0)), float(options.get("atol", 0.0)))
        return [Skeleton(device, dtype, NAME, tuple(names), samples, None, dtype, tol)]

    def start(self, case: PlannedCase, run: Any) -> AgainRun:
        return AgainRun(run)


class AgainRun:
    def __init__(self, run: Any) -> None:
        self.run = run

    def batch(self, step: Any) -> None:
        again = self.run.manual(self.run.model, step.batch, step.forward)
        wanted = [
            (name, again.get(name), first, None)
            for name in step.names
            if isinstance(first := step.manual.get(name), torch.Tensor)
        ]
        self.run.compare(NAME, step.batch, wanted)


@hookimpl
def register_checks(register: Any) -> None:
    register(NAME, AgainCheck)
