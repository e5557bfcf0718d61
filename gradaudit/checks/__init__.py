"""Check kinds: what runs beside the gradient comparison on every batch.

A check kind is registered through the `register_checks` hook (the built-ins in
gradaudit.builtin, exactly as a third party's would). It plans its cases from the spec
and, per (device, dtype) pass, gets every batch's `Step` through `CheckRun.batch`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from gradaudit.compare import Check
    from gradaudit.plan import PlannedCase, Skeleton
    from gradaudit.spec import Spec
    from gradaudit.targets.model.parts import Step
    from gradaudit.tolerance import Tol
    from gradaudit.types import Batch, Forward


class Pass(Protocol):
    """What a check kind may use of the (device, dtype) pass that runs it."""

    spec: Spec
    device: str
    dtype: str
    model: torch.nn.Module
    truth_model: torch.nn.Module | None

    def reference(
        self, model: torch.nn.Module, batch: Batch, names: Sequence[str]
    ) -> tuple[Forward, list[torch.Tensor]]: ...

    def manual(
        self, model: torch.nn.Module, batch: Batch, forward: Forward
    ) -> Mapping[str, torch.Tensor]: ...

    def compare(
        self,
        check: str,
        batch: Batch,
        wanted: Sequence[tuple[str, object, torch.Tensor, torch.Tensor | None]],
        tol: Tol | None = None,
    ) -> dict[str, Check]: ...

    def error(self, name: str, batch: Batch, message: str, check: str = "gradients") -> None: ...


class CheckRun(Protocol):
    """One check kind on one pass."""

    def batch(self, step: Step) -> None: ...


class CheckKind(Protocol):
    """A registered check kind."""

    targets: tuple[str, ...]  # the target kinds it applies to (model audits: ("model",))

    def plan(
        self,
        spec: Spec,
        device: str,
        dtype: str,
        dtypes: list[str],
        names: Sequence[str],
        samples: tuple[int, ...] | None,
    ) -> list[Skeleton]:
        """The cases this kind adds to the (device, dtype) pass, before tolerances (the plan
        resolves those a case does not fix); [] when the spec asks for none."""
        ...

    def start(self, case: PlannedCase, run: Pass) -> CheckRun | None:
        """Begin a planned case on its pass."""
        ...
