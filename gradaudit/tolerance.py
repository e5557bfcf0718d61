"""Tolerances: one object per resolved tolerance owns its formula, sensitivity and sentence.

compare.py applies `Tol.allowed` elementwise, mutation testing asks `Tol.sensitivity`, and
every report explains a tensor's verdict with `Tol.explain`: the rule lives here only.

Modes: exact (bitwise); allclose (|manual - autograd| <= atol + rtol |autograd|, defaults from
torch.testing.assert_close); baseline (|manual - truth| <= k * max|autograd - truth| + a floor
of `floor_ulps` ULPs of the truth's scale, truth = autograd in float64); ulps (float64's own
precision: |manual - autograd| <= floor_ulps ULPs of the tensor's largest entry + batch_ulps
ULPs of the batch's largest gradient). auto: ulps for float64, baseline for lower precisions.
The systematic-error check across batches (gradaudit.systematic) runs wherever there is a
truth to pair with (`Rule.has_truth`), unless a spec says `systematic: false`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradaudit.spec.common import Tolerance

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
# float64 has no truth above it: autograd in float64 is the reference and its own error,
# which the floor stands in for, reached 7 ULPs of a tensor's scale on the shipped specs
# (a manual summing in another order as much again): 32 ULPs of the tensor's largest entry.
DEFAULT_K = 2.0
DEFAULT_FLOOR_ULPS = {"float64": 32.0, "float32": 8.0, "bfloat16": 2.0, "float16": 2.0}
BATCH_FLOOR_SHARE = 1.0 / 16
# float64 cannot measure a tensor's cancellation (no truth to measure autograd against), so
# its floor also counts ULPs of the batch's largest gradient: an RMSNorm input gradient at
# D = 1 (all cancellation) differs from autograd by up to 49 ULPs of it. 64 ULPs keep the
# relative sensitivity under 1e-10 for any tensor above 1.4e-4 of the batch's largest.
DEFAULT_BATCH_ULPS = 64.0
# Cancellation: autograd off by more than CANCEL_ULPS ULPs of a tensor's scale means the
# tensor is a small difference of larger terms, and autograd's error on one batch is a single
# noisy sample of their rounding (at D = 1, RMSNorm's input gradient in float32 saw a correct
# candidate at up to 16x autograd's largest error over 400 seeds). Above it, each further
# unit of autograd's error allows CANCEL_K units: 0 false failures in those 400 seeds.
CANCEL_ULPS = 16.0
CANCEL_K = 32.0
# A gradient whose float64 truth stays within this many ULPs of the batch's largest
# gradient is zero by construction (a bias before batch norm): rounding noise, no direction.
ZERO_ULPS = 64.0
FLOAT64_EPS = EPS["float64"]


def floor_scale(own: float, reference_error: float, batch_scale: float) -> float:
    """What the baseline floor counts ULPs of: the tensor's own largest truth entry, unless
    autograd in the tested dtype cannot resolve the tensor at all (its error exceeds the true
    values: a gradient that is zero by cancellation, like a bias before batch norm). Such a
    tensor is rounding noise, held to a share of the batch's largest gradient instead of to
    autograd's own noise, which another summation order legitimately exceeds; one whose
    float64 truth is itself noise (zero by construction) to the whole of it: a correct b1
    before batch norm used 99.6% of the 1/16 share in float16 over 1,000 batches."""
    if own > reference_error:
        return own
    if is_noise(own, batch_scale):  # zero by construction: noise of sums of batch-size terms
        return batch_scale
    return max(own, BATCH_FLOOR_SHARE * batch_scale)


def is_noise(own: float, batch_scale: float) -> bool:
    """True when a float64 gradient is rounding noise of the batch: zero by construction."""
    return own <= ZERO_ULPS * FLOAT64_EPS * batch_scale


@dataclass(frozen=True)
class Rule:
    """What one tolerance mode is. Everything outside this module asks a Tol these questions
    (through its properties), never its mode's name: a new mode is one more entry in MODES
    (and the spec schema's `Mode`)."""

    allowed: Callable[[Tol, float, float, float], float]  # (tol, scale, autograd's error, batch)
    describe: Callable[[Tol], str]
    explain: Callable[[Tol, float, float], str]  # (tol, allowed, autograd's error)
    compared_with: str = "autograd"
    elementwise: bool = False  # allowed per element: atol + rtol |second|; else one number
    truth: bool = False  # measured against the float64 truth (autograd's own error known)
    batch: bool = False  # counts ULPs of the batch's largest gradient, so needs that scale
    floor: bool = False  # its floor_ulps stand for summation-order noise (mutation's unit)
    has_truth: Callable[[str], bool] = lambda dtype: False  # a systematic check's truth
    estimate: bool = False  # allows for an estimate of autograd's own error (no truth)
    without_truth: str | None = None  # the mode where the truth is no autograd run


def _g(value: float) -> str:
    """A number as describe() writes it; "?" for one a report's record lacked (NaN)."""
    return "?" if math.isnan(value) else f"{value:g}"


def _bias(tol: Tol) -> str:
    return " + bias" if tol.systematic else ""


def _baseline_allowed(tol: Tol, scale: float, reference_error: float, batch: float) -> float:
    """Baseline's one number: k x autograd's own error + the ULP floor, and CANCEL_K x
    whatever of autograd's error exceeds CANCEL_ULPS ULPs of the floor's scale."""
    floor = floor_scale(scale, reference_error, batch)
    excess = max(0.0, reference_error - CANCEL_ULPS * tol.eps * floor)
    return (
        tol.k * reference_error
        + tol.floor_ulps * tol.eps * floor
        + max(0.0, CANCEL_K - tol.k) * excess
    )


def _cancellation(tol: Tol, scale: float, reference_error: float) -> float:
    """ulps' allowance for autograd's own error where it is estimated (Comparison.noise; 0
    elsewhere): k x the error, and CANCEL_K x what of it exceeds CANCEL_ULPS ULPs of the
    tensor's scale, as baseline takes its measured one."""
    excess = max(0.0, reference_error - CANCEL_ULPS * tol.eps * scale)
    return tol.k * reference_error + max(0.0, CANCEL_K - tol.k) * excess


def _baseline_explain(tol: Tol, allowed: float, reference_error: float) -> str:
    floor = allowed - tol.k * reference_error
    return (
        f"allowed {allowed:.3g} = {tol.k:g} x autograd's own error {reference_error:.3g} + "
        f"{floor:.3g} ({tol.floor_ulps:g} ULPs of the truth's largest entry; of the batch's "
        "for a gradient zero by cancellation; more where autograd's error shows cancellation)"
    )


def _allclose_explain(tol: Tol, allowed: float, reference_error: float) -> str:
    return f"allowed at the worst element {allowed:.3g} = {tol.atol:g} + {tol.rtol:g} x |autograd|"


MODES: dict[str, Rule] = {
    "exact": Rule(
        allowed=lambda tol, scale, error, batch: 0.0,
        describe=lambda tol: "exact (bitwise)",
        explain=lambda tol, allowed, error: "bitwise equality",
    ),
    "allclose": Rule(
        allowed=lambda tol, scale, error, batch: tol.atol + tol.rtol * scale,
        describe=lambda tol: f"allclose rtol={_g(tol.rtol)} atol={_g(tol.atol)}",
        explain=_allclose_explain,
        elementwise=True,
        has_truth=lambda dtype: dtype == "float64",  # autograd in float64 is the truth
    ),
    "baseline": Rule(
        allowed=_baseline_allowed,
        describe=lambda tol: f"baseline k={_g(tol.k)} floor={_g(tol.floor_ulps)} ulps{_bias(tol)}",
        explain=_baseline_explain,
        compared_with="float64 truth",
        truth=True,
        floor=True,
        has_truth=lambda dtype: True,
        without_truth="allclose",
    ),
    "ulps": Rule(
        allowed=lambda tol, scale, error, batch: (
            tol.eps * (tol.floor_ulps * scale + tol.batch_ulps * batch)
            + _cancellation(tol, scale, error)
        ),
        describe=lambda tol: (
            f"ulps {_g(tol.floor_ulps)} own + {_g(tol.batch_ulps)} batch{_bias(tol)}"
        ),
        explain=lambda tol, allowed, error: (
            f"allowed {allowed:.3g} = {tol.floor_ulps:g} ULPs of the tensor's largest entry + "
            f"{tol.batch_ulps:g} ULPs of the batch's largest gradient"
            + (f" + room for autograd's own error, estimated at {error:.3g}" if error else "")
        ),
        compared_with="float64 autograd",
        batch=True,
        estimate=True,
        floor=True,
        has_truth=lambda dtype: True,
        without_truth="allclose",
    ),
    # Only that the manual value is finite wherever the reference is (a backward that divides
    # by an input is inf or NaN at its exact zeros): any finite difference passes, since at a
    # kink (relu, abs at 0) a hand-written backward may rightly pick another subgradient.
    "finite": Rule(
        allowed=lambda tol, scale, error, batch: math.inf,
        describe=lambda tol: "finite (where the reference is)",
        explain=lambda tol, allowed, error: "any finite value where the reference is finite",
    ),
}
AUTO = {"float64": "ulps"}  # `auto`, per dtype; any other dtype: DEFAULT_AUTO
DEFAULT_AUTO = "baseline"


@dataclass(frozen=True)
class Tol:
    """The tolerance applied to one tensor, with `auto` already resolved for its dtype. Its
    mode names a Rule in MODES; the properties below are what comparison code may ask."""

    mode: str = "allclose"
    rtol: float = 0.0
    atol: float = 0.0
    k: float = DEFAULT_K
    floor_ulps: float = 2.0
    eps: float = 0.0  # machine epsilon of the tested dtype (the floor's unit)
    batch_ulps: float = 0.0  # ULPs of the batch's largest gradient added to the floor
    systematic: bool = False  # the systematic-error check across batches (auto)

    @property
    def rule(self) -> Rule:
        return MODES[self.mode]

    @property
    def elementwise(self) -> bool:
        """Whether the allowance is per element (atol + rtol |second|), not one number."""
        return self.rule.elementwise

    @property
    def needs_truth(self) -> bool:
        """Whether the comparison measures against a float64 truth."""
        return self.rule.truth

    @property
    def needs_batch_scale(self) -> bool:
        """Whether the allowance counts ULPs of the batch's largest gradient."""
        return self.rule.batch

    @property
    def takes_estimate(self) -> bool:
        """Whether the allowance has room for an estimate of autograd's own error
        (Comparison.noise), having no truth to measure it."""
        return self.rule.estimate

    @property
    def resolution_ulps(self) -> float:
        """ULPs of summation-order noise this rule allows for (0: none)."""
        return self.floor_ulps if self.rule.floor else 0.0

    @property
    def compared_with(self) -> str:
        """What the manual value is measured against."""
        return self.rule.compared_with

    def describe(self) -> str:
        """The rule in a few words, with its numbers."""
        return self.rule.describe(self)

    def allowed(self, scale: float, reference_error: float, batch_scale: float) -> float:
        """The one allowed difference of a tensor whose largest entry is `scale` (for an
        elementwise rule: at an element of that size)."""
        return self.rule.allowed(self, scale, reference_error, batch_scale)

    def sensitivity(self, scale: float, reference_error: float, batch_scale: float = 0.0) -> float:
        """The smallest relative error (1 + d) * g that this tolerance still catches on a
        tensor whose largest entry is `scale`: allowed / max|g|, and one ULP where nothing
        is allowed (exact)."""
        if scale == 0.0:
            return float("inf")
        allowed = self.allowed(scale, reference_error, batch_scale)
        return allowed / scale if allowed > 0.0 else self.eps

    def explain(self, allowed: float, reference_error: float) -> str:
        """The sentence a report gives for the numbers one batch was held to."""
        return self.rule.explain(self, allowed, reference_error)

    def without_truth(self) -> Tol:
        """This tolerance where the truth is no autograd run (finite differences): a rule
        that takes a baseline or ULPs from autograd becomes its `without_truth` rule,
        without the systematic check."""
        fallback = self.rule.without_truth
        if fallback is None:
            return self
        return dataclasses.replace(self, mode=fallback, systematic=False)

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> Tol | None:
        """A Tol from a report's `tol` record (a number it lacks is NaN); None when its mode
        is not one this version knows."""
        mode = record.get("mode")
        if not isinstance(mode, str) or mode not in MODES:
            return None
        fields: dict[str, Any] = {"mode": mode}
        for f in dataclasses.fields(cls):
            value = record.get(f.name)
            if f.name == "systematic":
                fields[f.name] = bool(value)
            elif (
                f.name != "mode" and isinstance(value, int | float) and not isinstance(value, bool)
            ):
                fields[f.name] = float(value)
            elif f.name != "mode":
                fields[f.name] = math.nan
        return cls(**fields)


def tolerance_for(spec: Tolerance, tensor: str, device: str, dtype: str) -> Tol:
    """Spec-wide settings, then matching overrides (last one wins), then dtype defaults."""
    settings = {
        "mode": spec.mode,
        "rtol": spec.rtol,
        "atol": spec.atol,
        "k": spec.k,
        "floor_ulps": spec.floor_ulps,
        "systematic": spec.systematic,
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
    mode = str(settings["mode"])
    if mode == "auto":
        mode = AUTO.get(dtype, DEFAULT_AUTO)
    rtol, atol = DEFAULT_TOLERANCES[dtype]
    return Tol(
        mode=mode,
        rtol=float(rtol if settings["rtol"] is None else settings["rtol"]),
        atol=float(atol if settings["atol"] is None else settings["atol"]),
        k=float(DEFAULT_K if settings["k"] is None else settings["k"]),
        floor_ulps=float(
            DEFAULT_FLOOR_ULPS[dtype] if settings["floor_ulps"] is None else settings["floor_ulps"]
        ),
        eps=EPS[dtype],
        batch_ulps=DEFAULT_BATCH_ULPS if MODES[mode].batch else 0.0,
        systematic=bool(settings["systematic"]) and MODES[mode].has_truth(dtype),
    )
