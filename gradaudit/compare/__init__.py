"""Comparing manual gradients with autograd's: the entry point, check_all.

Two stages (one module each): gradaudit.compare.screen settles a batch's passing tensors in one pass
and one read; gradaudit.compare.measure measures the rest in full (failures, NaN/Inf, near misses),
and every tensor of callers that want every batch located.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from gradaudit.compare.measure import TRIAGE_MARGIN as TRIAGE_MARGIN
from gradaudit.compare.measure import Comparison as Comparison
from gradaudit.compare.measure import Scratch as Scratch
from gradaudit.compare.measure import largest, measure, working_dtype
from gradaudit.results import MAX_ERROR_CHARS as MAX_ERROR_CHARS  # re-exported
from gradaudit.results import MAX_ERRORS_KEPT as MAX_ERRORS_KEPT
from gradaudit.results import Check as Check
from gradaudit.results import TensorSummary as TensorSummary
from gradaudit.tolerance import DEFAULT_TOLERANCES as DEFAULT_TOLERANCES
from gradaudit.tolerance import Tol as Tol
from gradaudit.tolerance import tolerance_for as tolerance_for

if TYPE_CHECKING:
    import torch

    from gradaudit.compare.syncs import Reads


class GradientMismatch(ValueError):
    """The manual gradient cannot be compared at all (wrong shape, dtype or device)."""


def mismatch(manual: torch.Tensor, reference: torch.Tensor) -> str | None:
    """Why the two cannot be compared elementwise at all, or None."""
    if manual.shape != reference.shape:
        return f"shape {tuple(manual.shape)}, autograd's is {tuple(reference.shape)}"
    if manual.dtype != reference.dtype:
        return f"dtype {manual.dtype}, autograd's is {reference.dtype}"
    if manual.device != reference.device:
        return f"device {manual.device}, autograd's is {reference.device}"
    return None


def check(
    manual: torch.Tensor,
    reference: torch.Tensor,
    tol: Tol,
    truth: torch.Tensor | None = None,
    batch_scale: float = 0.0,
) -> Check:
    """Compare one tensor; see check_all."""
    return check_all([Comparison(manual, reference, tol, truth)], batch_scale)[0]


def comparable(items: list[Comparison]) -> None:
    """GradientMismatch where a pair cannot be compared elementwise; ValueError where
    baseline mode lacks its truth."""
    for item in items:
        problem = mismatch(item.manual, item.reference)
        if problem:
            raise GradientMismatch(problem)
        if item.tol.needs_truth and item.truth is None:
            raise ValueError("baseline mode needs the float64 truth")


def check_all(
    items: list[Comparison],
    batch_scale: float | torch.Tensor | None = 0.0,
    scratch: Scratch | None = None,
    beat: Sequence[float | None] | None = None,
    reads: Reads | None = None,
) -> list[Check]:
    """Compare; verdicts are float64's (see measure.measure). NaN/Inf agree only with the
    same NaN/Inf; anything else fails.

    `batch_scale` (baseline and ulps modes) is the largest truth entry among all of the
    batch's gradients (a float, or a 0-d tensor read with the results); see
    tolerance.floor_scale. None: these are all of them (the largest entry of the given
    truths, or references); so is 0 where a tolerance is `ulps`. Each Check's `largest`
    is its tensor's share. Raises GradientMismatch when a pair cannot be compared.

    `beat`, per item, is the worst budget its tensor has had so far (None: no batch yet).
    Given it, a passing batch that does not exceed it is not located: its Check has
    located=False, no worst element and NaN values (gradaudit.compare.screen). Without it, every
    Check is located (described by the screen, or measured in full). `reads` may hold
    other device values: they are read with the screen's results.
    """
    comparable(items)
    devices = {item.manual.device for item in items}
    if len(devices) > 1:  # the flat layout needs one device; keep the order
        return [
            check_all([item], batch_scale, scratch, None if beat is None else [beat[i]])[0]
            for i, item in enumerate(items)
        ]
    scratch = scratch or Scratch()
    empty = Check(True, True, 0.0, 0.0, 0.0, (), 0.0, 0.0, 0, 0, 0)
    found: list[Check | None] = [None if item.manual.numel() else empty for item in items]
    live = [i for i, check in enumerate(found) if check is None]
    todo = [items[i] for i in live]
    if todo:  # the screen, then the full measurement for what it cannot settle
        from gradaudit.compare.screen import screen

        wanted = [None if beat is None else beat[i] for i in live]
        screened = screen(todo, batch_scale, scratch, working_dtype(todo), wanted, reads)
        batch_scale = screened.batch_scale
        for i, result in zip(live, screened.checks, strict=True):
            found[i] = result
        live = [i for i in live if found[i] is None]
        todo = [items[i] for i in live]
    if todo:
        if batch_scale is None:
            batch_scale = largest(todo)
        elif not isinstance(batch_scale, float):
            batch_scale = float(batch_scale)
        if not batch_scale and any(item.tol.needs_batch_scale for item in todo):
            batch_scale = largest(todo)
        for i, result in zip(live, measure(todo, batch_scale, scratch), strict=True):
            found[i] = result
    return [c for c in found if c is not None]


def batch_scale_of(checks: Iterable[Check]) -> float:
    """The largest entry the comparisons measured against (each Check's `largest`): the
    batch's scale, when they are all of the batch's gradients."""
    found = [c.largest for c in checks if c.largest is not None and math.isfinite(c.largest)]
    return max(found, default=0.0)
