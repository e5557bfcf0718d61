"""Finite differences: central differences of the float64 loss along random unit
directions, compared with <g, v> for the manual and the autograd gradient.

A wrong custom backward inside the model fools the manual-vs-autograd comparison (autograd
runs that same backward), but not this. Planned once per device, on the global batches
0 .. batches-1, so a sharded run and its merge cover exactly the unsharded set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from gradaudit.errors import OURS, why
from gradaudit.plan import PlannedCase, Skeleton
from gradaudit.tolerance import Tol

if TYPE_CHECKING:
    from gradaudit.checks import Pass
    from gradaudit.spec.model import FiniteDifference, Spec
    from gradaudit.targets.model.parts import Step

NAME = "finite_difference"


class FiniteDifferenceCheck:
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
        fd = spec.checks.finite_difference
        if fd is None or dtype != dtypes[0]:  # once per device, with the run's first dtype
            return []
        wanted = tuple(range(fd.batches))
        if samples is not None:
            wanted = tuple(k for k in wanted if k in samples)
        tol = Tol("allclose", fd.rtol, fd.atol)
        return [Skeleton(device, "float64", NAME, ("manual", "autograd"), wanted, None, dtype, tol)]

    def start(self, case: PlannedCase, run: Pass) -> _FiniteDifferenceRun | None:
        fd = run.spec.checks.finite_difference
        assert fd is not None
        return _FiniteDifferenceRun(run, fd, case.samples or ())


class _FiniteDifferenceRun:
    def __init__(self, run: Pass, fd: FiniteDifference, batches: tuple[int, ...]) -> None:
        self.run, self.fd, self.batches = run, fd, batches

    def batch(self, step: Step) -> None:
        batch, fd, run = step.batch, self.fd, self.run
        if batch.index not in self.batches or run.truth_model is None:
            return
        model = run.truth_model
        params = dict(model.named_parameters())
        try:
            batch64 = batch.to(next(iter(params.values())).device, torch.float64)
            forward, autograd = run.reference(model, batch64, list(params))
            manual = run.manual(model, batch64, forward)
            manual64 = [manual[n] for n in params]
        except OURS:
            raise
        except BaseException as exc:
            for name in ("manual", "autograd"):
                run.error(name, batch, f"finite differences: {why(exc)}", NAME)
            return
        generator = torch.Generator().manual_seed(batch.seed)
        numeric: list[float] = []
        loss_scale = 0.0
        projected: dict[str, list[float]] = {"manual": [], "autograd": []}
        originals = [p.detach().clone() for p in params.values()]
        with torch.no_grad():
            for _ in range(fd.directions):
                vs = [
                    torch.randn(p.shape, generator=generator, dtype=torch.float64)
                    for p in originals
                ]
                norm = math.sqrt(sum(float((v * v).sum()) for v in vs))
                vs = [(v / norm).to(originals[0].device) for v in vs]
                losses = []
                for sign in (1.0, -1.0):
                    for p, p0, v in zip(params.values(), originals, vs, strict=True):
                        p.copy_(p0 + sign * fd.eps * v)
                    torch.default_generator.manual_seed(batch.seed)
                    losses.append(float(model(**batch64.tensors).loss))
                numeric.append((losses[0] - losses[1]) / (2 * fd.eps))
                loss_scale = max(loss_scale, abs(losses[0]), abs(losses[1]))
                projected["manual"].append(_dot(manual64, vs))
                projected["autograd"].append(_dot(autograd, vs))
            for p, p0 in zip(params.values(), originals, strict=True):
                p.copy_(p0)
        truth = torch.tensor(numeric, dtype=torch.float64)
        # Rounding in L(p +- eps v) is amplified by 1/eps: allow 16 ulps of the loss for it.
        rounding = 16 * 2.0**-52 * max(loss_scale, 1.0) / fd.eps
        tol = Tol("allclose", fd.rtol, fd.atol + rounding)
        for name, values in projected.items():
            got = torch.tensor(values, dtype=torch.float64)
            run.compare(NAME, batch, [(name, got, truth, None)], tol=tol)


def _dot(gradients: list[torch.Tensor], direction: list[torch.Tensor]) -> float:
    """<g, v> over all parameters."""
    return sum(float((g * v).sum()) for g, v in zip(gradients, direction, strict=True))
