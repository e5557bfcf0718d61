"""Repeat: the manual gradient, run again on the same inputs, must give the same result
(catches uninitialised buffers, hidden state kept between calls, nondeterminism)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from gradaudit.errors import OURS, why
from gradaudit.plan import PlannedCase, Skeleton
from gradaudit.tolerance import Tol

if TYPE_CHECKING:
    from gradaudit.checks import Pass
    from gradaudit.spec import Spec
    from gradaudit.targets.model.parts import Step

NAME = "repeat"


class RepeatCheck:
    targets = ("model",)

    def plan(
        self,
        spec: Spec,
        device: str,
        dtype: str,
        dtypes: list[str],
        names: Sequence[str],
        samples: tuple[int, ...] | None,
    ) -> list[Skeleton]:
        repeat = spec.checks.repeat
        if repeat is None:
            return []
        tol = Tol("allclose", repeat.rtol, repeat.atol)
        return [Skeleton(device, dtype, NAME, tuple(names), samples, None, dtype, tol)]

    def start(self, case: PlannedCase, run: Pass) -> _RepeatRun:
        assert run.spec.checks.repeat is not None
        return _RepeatRun(run, run.spec.checks.repeat.count)


class _RepeatRun:
    def __init__(self, run: Pass, count: int) -> None:
        self.run, self.count = run, count

    def batch(self, step: Step) -> None:
        for _ in range(self.count - 1):
            try:
                again = self.run.manual(self.run.model, step.batch, step.forward)
            except OURS:
                raise
            except BaseException as exc:
                for name in step.names:
                    self.run.error(name, step.batch, f"repeat raised {why(exc)}", NAME)
                return
            wanted = [
                (name, again.get(name), first, None)
                for name in step.names
                if isinstance(first := step.manual.get(name), torch.Tensor)
            ]
            self.run.compare(NAME, step.batch, wanted)
