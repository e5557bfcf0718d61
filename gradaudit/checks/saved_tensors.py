"""Saved-tensor integrity: a forward and two manual-gradient calls on it leave everything
they read bitwise unchanged, and the second call repeats the first.

A manual gradient reads what the forward saved: the intermediates, the parameters and
buffers, the batch, and any tensor the model keeps on itself for its backward (a module
attribute: the model-audit analogue of `ctx.saved_tensors`). One that overwrites such a
tensor in place is right once and wrong on the next call over the same forward (the
unsloth #5002 bug class); a tensor the gradients case does not watch (a module attribute)
shows only here.

Per batch the check runs its own forward on the batch and two manual calls on it, and
gives every audited tensor one verdict: an error naming what was changed in place, and by
what (the forward: the batch or a parameter; a manual call: anything it read), or else the
second call's gradient compared with the first's (exact unless the spec gives rtol/atol).
A change to something shared (the batch, a buffer, a module attribute) is an error of
every tensor. The pass's own guard fails a batch whose first manual call changes the
batch, a parameter, a buffer or an intermediate before any check kind runs: those batches
get that error in this case too.

`repeat` runs the manual gradient again on the gradients case's forward and compares, with
its own count and tolerance (nondeterminism, state kept between calls); saved_tensors is
the integrity check, and names what was overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from gradaudit.errors import OURS, why
from gradaudit.plan import PlannedCase, Skeleton
from gradaudit.targets.model.guards import changed_between
from gradaudit.tolerance import Tol

if TYPE_CHECKING:
    from gradaudit.checks import Pass
    from gradaudit.spec import Spec
    from gradaudit.targets.model.parts import Step
    from gradaudit.types import Batch, Forward

NAME = "saved_tensors"


class SavedTensorsCheck:
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
        options = spec.checks.saved_tensors
        if options is None:
            return []
        tol = Tol("allclose", options.rtol, options.atol) if options.rtol or options.atol else None
        return [
            Skeleton(device, dtype, NAME, tuple(names), samples, None, dtype, tol or Tol("exact"))
        ]

    def start(self, case: PlannedCase, run: Pass) -> _SavedTensorsRun:
        return _SavedTensorsRun(run)


def read(model: torch.nn.Module, batch: Batch, forward: Forward | None) -> dict[str, torch.Tensor]:
    """What a manual gradient may read, by label: `name` for the audited tensors."""
    seen: dict[str, torch.Tensor] = {f"batch tensor `{n}`": t for n, t in batch.tensors.items()}
    seen |= {n: p for n, p in model.named_parameters()}
    seen |= {f"buffer `{n}`": b for n, b in model.named_buffers()}
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                where = f"{prefix}.{attr}" if prefix else attr
                seen[f"model attribute `{where}`"] = value
    if forward is not None:
        seen |= dict(forward.intermediates)
    return {k: v.detach() for k, v in seen.items()}


class _SavedTensorsRun:
    def __init__(self, run: Pass) -> None:
        self.run = run

    def batch(self, step: Step) -> None:
        run, batch, names = self.run, step.batch, step.names
        model = run.model
        start = {k: v.clone() for k, v in read(model, batch, None).items()}
        culprits: dict[str, list[str]] = {}  # label -> what changed it
        try:
            forward, _ = run.reference(model, batch, names)
            for label in changed_between(start, read(model, batch, None)):
                if not label.startswith(("buffer", "model attribute")):  # running stats
                    culprits.setdefault(label, []).append("the forward")
            calls = []
            for which in ("first", "second"):
                before = {k: v.clone() for k, v in read(model, batch, forward).items()}
                grads = run.manual(model, batch, forward)
                calls.append(
                    {k: g.clone() for k, g in grads.items() if isinstance(g, torch.Tensor)}
                )
                for label in changed_between(before, read(model, batch, forward)):
                    culprits.setdefault(label, []).append(f"the {which} manual call")
        except OURS:
            raise
        except BaseException as exc:
            for name in names:
                run.error(name, batch, f"saved_tensors: {why(exc)}", NAME)
            return
        finally:
            with torch.no_grad():  # leave the model as the gradients case left it
                for n, p in model.named_parameters():
                    p.copy_(start[n])
                for n, b in model.named_buffers():
                    b.copy_(start[f"buffer `{n}`"])
                for n, t in batch.tensors.items():
                    if f"batch tensor `{n}`" in culprits:
                        t.copy_(start[f"batch tensor `{n}`"])
        self._verdicts(step, culprits, calls[0], calls[1])

    def _verdicts(
        self,
        step: Step,
        culprits: Mapping[str, list[str]],
        first: Mapping[str, torch.Tensor],
        second: Mapping[str, torch.Tensor],
    ) -> None:
        run, batch = self.run, step.batch
        names = set(step.names)
        shared = [
            f"{label} changed in place by {' and '.join(by)}"
            for label, by in culprits.items()
            if label not in names
        ]
        wanted: list[tuple[str, object, torch.Tensor, torch.Tensor | None]] = []
        for name in step.names:
            own = culprits.get(name)
            problems = [f"{name} changed in place by {' and '.join(own)}"] if own else []
            problems += shared
            if name not in first:
                problems.append("the manual gradient gave no tensor for it")
            if problems:
                run.error(name, batch, "saved_tensors: " + "; ".join(problems), NAME)
            else:
                wanted.append((name, second.get(name), first[name], None))
        if wanted:
            run.compare(NAME, batch, wanted)
