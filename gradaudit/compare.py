"""Comparing one manual gradient with autograd's, and summarising a tensor over batches."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit.spec import Tolerance

if TYPE_CHECKING:
    import torch

# torch.testing.assert_close's defaults, so a spec with no tolerance means what torch means.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {  # dtype -> (rtol, atol)
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}
MAX_ERRORS_KEPT = 5


@dataclass(frozen=True)
class Tol:
    """The tolerance applied to one tensor: |manual - ref| <= atol + rtol * |ref|."""

    rtol: float
    atol: float


def tolerance_for(spec: Tolerance, tensor: str, device: str, dtype: str) -> Tol:
    """dtype default, then the spec's global values, then matching overrides (last one wins)."""
    rtol, atol = DEFAULT_TOLERANCES[dtype]
    rtol = spec.rtol if spec.rtol is not None else rtol
    atol = spec.atol if spec.atol is not None else atol
    for rule in spec.overrides:
        if not any(fnmatch.fnmatchcase(tensor, glob) for glob in rule.tensors):
            continue
        if rule.devices is not None and device not in rule.devices:
            continue
        if rule.dtypes is not None and dtype not in rule.dtypes:
            continue
        rtol = rule.rtol if rule.rtol is not None else rtol
        atol = rule.atol if rule.atol is not None else atol
    return Tol(rtol, atol)


class GradientMismatch(ValueError):
    """The manual gradient cannot be compared at all (wrong shape, dtype or device)."""


@dataclass(frozen=True)
class Check:
    """One tensor on one batch."""

    exact: bool
    passed: bool
    max_abs: float
    max_rel: float
    budget: float  # max over elements of |diff| / (atol + rtol*|ref|); > 1 fails
    worst_index: tuple[int, ...]
    manual_value: float
    reference_value: float
    mismatched: int
    nonfinite: int  # elements where manual and reference disagree on NaN/Inf
    numel: int


def check(manual: torch.Tensor, reference: torch.Tensor, tol: Tol) -> Check:
    """Compare elementwise in float64; NaN or Inf where autograd has a finite value fails."""
    import torch

    if manual.shape != reference.shape:
        raise GradientMismatch(
            f"shape {tuple(manual.shape)}, autograd's is {tuple(reference.shape)}"
        )
    if manual.dtype != reference.dtype:
        raise GradientMismatch(f"dtype {manual.dtype}, autograd's is {reference.dtype}")
    if manual.device != reference.device:
        raise GradientMismatch(f"device {manual.device}, autograd's is {reference.device}")
    exact = bool(torch.equal(manual, reference))
    m, r = manual.double(), reference.double()
    finite = torch.isfinite(m) & torch.isfinite(r)
    # NaN where autograd has NaN, or the same infinity, agrees; any other non-finite disagrees.
    agree = (m.isnan() & r.isnan()) | (torch.isinf(m) & (m == r))
    nonfinite_bad = ~finite & ~agree
    zero = torch.zeros_like(m)
    diff = torch.where(finite, (m - r).abs(), torch.where(agree, zero, math.inf))
    allowed = tol.atol + tol.rtol * torch.where(finite, r.abs(), zero)
    bad = (diff > allowed) | nonfinite_bad
    ratio = torch.where(allowed > 0, diff / allowed, torch.where(diff > 0, math.inf, 0.0))
    rel = torch.where(finite & (r != 0), diff / r.abs(), torch.where(diff > 0, math.inf, 0.0))
    nonfinite = int(nonfinite_bad.sum())
    numel = manual.numel()
    if numel == 0:
        return Check(exact, True, 0.0, 0.0, 0.0, (), 0.0, 0.0, 0, 0, 0)
    flat = int(ratio.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), manual.shape))
    return Check(
        exact=exact,
        passed=not bool(bad.any()),
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        budget=float(ratio.reshape(-1)[flat]),
        worst_index=index,
        manual_value=float(m.reshape(-1)[flat]),
        reference_value=float(r.reshape(-1)[flat]),
        mismatched=int(bad.sum()),
        nonfinite=nonfinite,
        numel=numel,
    )


@dataclass
class TensorSummary:
    """One tensor on one (device, dtype), accumulated batch by batch (results stream)."""

    tensor: str
    tol: Tol
    batches: int = 0
    failed_batches: int = 0
    exact: bool = True
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatched: int = 0
    nonfinite: int = 0
    numel: int = 0
    worst: Check | None = None
    worst_batch: int | None = None
    worst_seed: int | None = None
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    seconds: float = 0.0
    skipped: str | None = None  # why this tensor was not checked (device absent, empty shard)

    def add(self, result: Check, batch_index: int, seed: int) -> None:
        self.batches += 1
        self.failed_batches += not result.passed
        self.exact &= result.exact
        self.max_abs = max(self.max_abs, result.max_abs)
        self.max_rel = max(self.max_rel, result.max_rel)
        self.mismatched += result.mismatched
        self.nonfinite += result.nonfinite
        self.numel += result.numel
        if self.worst is None or result.budget > self.worst.budget:
            self.worst, self.worst_batch, self.worst_seed = result, batch_index, seed

    def merge(self, other: TensorSummary) -> None:
        """Fold in the same tensor's summary from another shard of the batches."""
        self.batches += other.batches
        self.failed_batches += other.failed_batches
        self.exact &= other.exact
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.mismatched += other.mismatched
        self.nonfinite += other.nonfinite
        self.numel += other.numel
        self.seconds += other.seconds
        if other.worst is not None and (
            self.worst is None
            or other.worst.budget > self.worst.budget
            or (
                other.worst.budget == self.worst.budget
                and (other.worst_batch or 0) < (self.worst_batch or 0)
            )
        ):
            self.worst, self.worst_batch, self.worst_seed = (
                other.worst,
                other.worst_batch,
                other.worst_seed,
            )
        if self.skipped and not other.skipped:
            self.skipped = None
        self.errors = (self.errors + other.errors)[:MAX_ERRORS_KEPT]
        self.error_count += other.error_count

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSummary:
        fields = {k: v for k, v in data.items() if k != "status"}
        fields["tol"] = Tol(**fields["tol"])
        if fields.get("worst") is not None:
            worst = dict(fields["worst"])
            worst["worst_index"] = tuple(worst["worst_index"])
            fields["worst"] = Check(**worst)
        return cls(**fields)

    def add_error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)

    @property
    def budget(self) -> float:
        return self.worst.budget if self.worst else 0.0

    @property
    def status(self) -> str:
        if self.error_count:
            return "error"
        if self.failed_batches:
            return "fail"
        if self.skipped or not self.batches:
            return "skipped"
        return "pass"
