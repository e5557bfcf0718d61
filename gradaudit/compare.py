"""Comparing one manual gradient with autograd's, and summarising a tensor over batches."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gradaudit.spec import Tolerance
from gradaudit.text import clean

if TYPE_CHECKING:
    import torch

# torch.testing.assert_close's defaults, so `allclose` with no numbers means what torch means.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {  # dtype -> (rtol, atol)
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
# FlashAttention's factor: a manual gradient may be at most twice as far from the float64
# truth as autograd in the same dtype is, plus a floor in ULPs of the truth's magnitude.
# In float32, autograd's own error is often under 2 ULPs while a manual gradient that sums
# in another order lands a few ULPs away: with a 2-ULP floor, 1 of 300 CharRNN batches
# failed a correct U.weight (115% of budget); 8 ULPs covers that order-of-summation noise.
# In bfloat16 and float16 autograd's error already dominates, so 2 ULPs suffice.
DEFAULT_K = 2.0
DEFAULT_FLOOR_ULPS = {"float64": 8.0, "float32": 8.0, "bfloat16": 2.0, "float16": 2.0}
BATCH_FLOOR_SHARE = 1.0 / 16
MAX_ERRORS_KEPT = 5
MAX_ERROR_CHARS = 2000  # a plugin's error text can be megabytes; reports need the start


@dataclass(frozen=True)
class Tol:
    """The tolerance applied to one tensor, with `auto` already resolved for its dtype."""

    mode: str = "allclose"  # exact | allclose | baseline
    rtol: float = 0.0
    atol: float = 0.0
    k: float = DEFAULT_K
    floor_ulps: float = 2.0
    eps: float = 0.0  # machine epsilon of the tested dtype (baseline's floor unit)

    def describe(self) -> str:
        if self.mode == "exact":
            return "exact (bitwise)"
        if self.mode == "baseline":
            return f"baseline k={self.k:g} floor={self.floor_ulps:g} ulps"
        return f"allclose rtol={self.rtol:g} atol={self.atol:g}"


def tolerance_for(spec: Tolerance, tensor: str, device: str, dtype: str) -> Tol:
    """Spec-wide settings, then matching overrides (last one wins), then dtype defaults."""
    settings = {
        "mode": spec.mode,
        "rtol": spec.rtol,
        "atol": spec.atol,
        "k": spec.k,
        "floor_ulps": spec.floor_ulps,
    }
    for rule in spec.overrides:
        if not any(fnmatch.fnmatchcase(tensor, glob) for glob in rule.tensors):
            continue
        if rule.devices is not None and device not in rule.devices:
            continue
        if rule.dtypes is not None and dtype not in rule.dtypes:
            continue
        for key in settings:
            value = getattr(rule, key)
            if value is not None:
                settings[key] = value
    mode = settings["mode"]
    if mode == "auto":
        mode = "allclose" if dtype == "float64" else "baseline"
    rtol, atol = DEFAULT_TOLERANCES[dtype]
    return Tol(
        mode=str(mode),
        rtol=float(rtol if settings["rtol"] is None else settings["rtol"]),
        atol=float(atol if settings["atol"] is None else settings["atol"]),
        k=float(DEFAULT_K if settings["k"] is None else settings["k"]),
        floor_ulps=float(
            DEFAULT_FLOOR_ULPS[dtype] if settings["floor_ulps"] is None else settings["floor_ulps"]
        ),
        eps=EPS[dtype],
    )


class GradientMismatch(ValueError):
    """The manual gradient cannot be compared at all (wrong shape, dtype or device)."""


@dataclass(frozen=True)
class Check:
    """One tensor on one batch. In baseline mode differences are taken to the float64 truth."""

    exact: bool
    passed: bool
    max_abs: float
    max_rel: float
    budget: float  # max over elements of |diff| / allowed; above 1 fails
    worst_index: tuple[int, ...]
    manual_value: float
    reference_value: float  # autograd's value (allclose, exact) or the truth's (baseline)
    mismatched: int
    nonfinite: int  # elements where the two disagree on NaN/Inf
    numel: int
    allowed: float = 0.0  # the allowed difference at the worst element
    reference_error: float = 0.0  # baseline: max|autograd in dtype - truth|
    sym_rel: float = 0.0  # max of 2|a - b| / (|a| + |b|)
    cosine: float = 1.0  # cosine similarity of the flattened tensors


def check(
    manual: torch.Tensor,
    reference: torch.Tensor,
    tol: Tol,
    truth: torch.Tensor | None = None,
    batch_scale: float = 0.0,
) -> Check:
    """Compare in float64. NaN/Inf agree only with the same NaN/Inf; anything else fails.

    `batch_scale` (baseline mode) is the largest truth entry among all of the batch's
    gradients; see _floor_scale.
    """
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
    m = manual.double()
    r = reference.double()
    reference_error = 0.0
    if tol.mode == "baseline":
        if truth is None:
            raise ValueError("baseline mode needs the float64 truth")
        t = truth.double().to(m.device)
        gap = (r - t).abs()
        reference_error = float(gap.max()) if gap.numel() else 0.0
        if not math.isfinite(reference_error):
            reference_error = _max_finite(gap)
        r = t
    signed = m - r  # finite exactly when both are (inf - inf and NaN give NaN)
    all_finite = bool(signed.isfinite().all())
    if all_finite:  # the common case, with a third of the elementwise work
        diff = signed.abs_()
        magnitude = r.abs()
        nonfinite_bad = None
    else:
        finite = torch.isfinite(m) & torch.isfinite(r)
        # NaN where autograd has NaN, or the same infinity, agrees; any other non-finite fails.
        agree = (m.isnan() & r.isnan()) | (torch.isinf(m) & (m == r))
        nonfinite_bad = ~finite & ~agree
        zero = torch.zeros_like(m)
        diff = torch.where(finite, (m - r).abs(), torch.where(agree, zero, math.inf))
        magnitude = torch.where(finite, r.abs(), zero)
    allowed: torch.Tensor | float  # a single number in baseline and exact mode
    if tol.mode == "baseline":
        largest = float(magnitude.max()) if magnitude.numel() else 0.0
        scale = _floor_scale(largest, reference_error, batch_scale)
        allowed = tol.k * reference_error + tol.floor_ulps * tol.eps * scale
    elif tol.mode == "exact":
        allowed = 0.0
    else:
        allowed = tol.atol + tol.rtol * magnitude
    bad = diff > allowed
    if nonfinite_bad is not None:
        bad |= nonfinite_bad
    if isinstance(allowed, float):
        ratio = diff / allowed if allowed > 0 else _safe_ratio(diff, torch.zeros_like(diff))
    else:
        ratio = _safe_ratio(diff, allowed)
    rel = _safe_ratio(diff, magnitude)
    sym = _safe_ratio(2 * diff, m.abs().nan_to_num_(posinf=0.0).add_(magnitude))
    numel = manual.numel()
    if numel == 0:
        return Check(exact, True, 0.0, 0.0, 0.0, (), 0.0, 0.0, 0, 0, 0)
    flat = int(ratio.reshape(-1).argmax())
    index = _unravel(flat, tuple(manual.shape))
    mismatched = int(bad.sum())
    return Check(
        exact=exact,
        passed=mismatched == 0,
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        budget=float(ratio.reshape(-1)[flat]),
        worst_index=index,
        manual_value=float(m.reshape(-1)[flat]),
        reference_value=float(r.reshape(-1)[flat]),
        mismatched=mismatched,
        nonfinite=0 if nonfinite_bad is None else int(nonfinite_bad.sum()),
        numel=numel,
        allowed=allowed if isinstance(allowed, float) else float(allowed.reshape(-1)[flat]),
        reference_error=reference_error,
        sym_rel=float(sym.max()),
        cosine=_cosine(m, r, all_finite),
    )


def _floor_scale(own: float, reference_error: float, batch_scale: float) -> float:
    """What the baseline floor counts ULPs of: the tensor's own largest truth entry, unless
    autograd in the tested dtype cannot resolve the tensor at all (its error exceeds the true
    values: a gradient that is zero by cancellation, like a bias before batch norm). Such a
    tensor is rounding noise, held to a share of the batch's largest gradient instead of to
    autograd's own noise, which another summation order legitimately exceeds."""
    if own > reference_error:
        return own
    return max(own, BATCH_FLOOR_SHARE * batch_scale)


def _max_finite(values: torch.Tensor) -> float:
    finite = values[values.isfinite()]
    return float(finite.max()) if finite.numel() else 0.0


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index of element `flat` of a row-major tensor of this shape."""
    index = []
    for size in reversed(shape):
        flat, position = divmod(flat, size)
        index.append(position)
    return tuple(reversed(index))


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator with 0/0 = 0 and x/0 = inf (numerator is never negative)."""
    return (numerator / denominator).nan_to_num(nan=0.0, posinf=math.inf)


def _cosine(a: torch.Tensor, b: torch.Tensor, all_finite: bool) -> float:
    if not all_finite:
        keep = a.isfinite() & b.isfinite()
        a, b = a[keep], b[keep]
    a, b = a.reshape(-1), b.reshape(-1)
    norms = math.sqrt(float(a.dot(a)) * float(b.dot(b)))
    if norms == 0.0:
        return 1.0 if float(a.abs().sum() + b.abs().sum()) == 0.0 else 0.0
    return max(-1.0, min(1.0, float(a.dot(b)) / norms))


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
    max_sym_rel: float = 0.0
    min_cosine: float = 1.0
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
        self.max_sym_rel = max(self.max_sym_rel, result.sym_rel)
        self.min_cosine = min(self.min_cosine, result.cosine)
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
        self.max_sym_rel = max(self.max_sym_rel, other.max_sym_rel)
        self.min_cosine = min(self.min_cosine, other.min_cosine)
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
            self.errors.append(clean(message, MAX_ERROR_CHARS))

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
