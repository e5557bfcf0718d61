"""Tolerances: one object per resolved tolerance owns its formula, sensitivity and sentence.

compare.py applies `Tol.allowed` elementwise, mutation testing asks `Tol.sensitivity`, and
every report explains a tensor's verdict with `Tol.explain`: the rule lives here only.

Modes: exact (bitwise); allclose (|manual - autograd| <= atol + rtol |autograd|, defaults from
torch.testing.assert_close); baseline (|manual - truth| <= k * max|autograd - truth| + a floor
of `floor_ulps` ULPs of the truth's scale, truth = autograd in float64); auto (allclose for
float64, baseline for lower precisions).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from gradaudit.spec import Tolerance

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


def floor_scale(own: float, reference_error: float, batch_scale: float) -> float:
    """What the baseline floor counts ULPs of: the tensor's own largest truth entry, unless
    autograd in the tested dtype cannot resolve the tensor at all (its error exceeds the true
    values: a gradient that is zero by cancellation, like a bias before batch norm). Such a
    tensor is rounding noise, held to a share of the batch's largest gradient instead of to
    autograd's own noise, which another summation order legitimately exceeds."""
    if own > reference_error:
        return own
    return max(own, BATCH_FLOOR_SHARE * batch_scale)


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
        """The rule in a few words, with its numbers."""
        if self.mode == "exact":
            return "exact (bitwise)"
        if self.mode == "baseline":
            return f"baseline k={self.k:g} floor={self.floor_ulps:g} ulps"
        return f"allclose rtol={self.rtol:g} atol={self.atol:g}"

    def baseline_allowed(self, scale: float, reference_error: float, batch_scale: float) -> float:
        """Baseline's one number: k x autograd's own error + the ULP floor."""
        floor = floor_scale(scale, reference_error, batch_scale)
        return self.k * reference_error + self.floor_ulps * self.eps * floor

    def sensitivity(self, scale: float, reference_error: float, batch_scale: float = 0.0) -> float:
        """The smallest relative error (1 + d) * g that this tolerance still catches on a
        tensor whose largest entry is `scale`.

        allclose: d > rtol + atol / max|g|; baseline: d > allowed / max|g|.
        """
        if scale == 0.0:
            return float("inf")
        if self.mode == "exact":
            return self.eps or 0.0
        if self.mode == "baseline":
            return self.baseline_allowed(scale, reference_error, batch_scale) / scale
        return self.rtol + self.atol / scale

    def explain(self, allowed: float, reference_error: float) -> str:
        """The sentence a report gives for the numbers one batch was held to."""
        if self.mode == "baseline":
            return (
                f"allowed {allowed:.3g} = {self.k:g} x autograd's own error "
                f"{reference_error:.3g} + {self.floor_ulps:g} ULPs of the truth's largest entry"
            )
        if self.mode == "exact":
            return "bitwise equality"
        return (
            f"allowed at the worst element {allowed:.3g} = {self.atol:g} + {self.rtol:g} "
            "x |autograd|"
        )

    @property
    def compared_with(self) -> str:
        """What the manual value is measured against."""
        return "float64 truth" if self.mode == "baseline" else "autograd"


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
