"""The systematic-error check: is a manual gradient consistently off where autograd is not?

Elementwise rules bound the largest error, which in bfloat16 cannot see an error below one
rounding step of the largest element. Rounding noise, though, averages out across elements
and batches; a systematic error does not. Per batch and tensor, the error's component along
the true gradient t is

    delta = <g - t, t> / <t, t>

(a gradient scaled by 1 + s has delta = s). With d = delta(manual) - delta(autograd in the same
dtype), paired on each batch so that the rounding both share cancels, a tensor fails when

    |mean d| > max(BIAS_FLOOR * eps, t_{n-1} * sd(d) / sqrt(n))

where t_{n-1} is Student's t quantile at two-sided p = 1e-4 with n - 1 degrees of freedom:
the bias must be both larger than one rounding of a constant can make (half an epsilon: a
correct gradient that multiplies by a rounded 1/B) and significant against the spread of
the batches (so a noisy tensor cannot fail on a few unlucky batches). Pure rounding noise
fails the t test alone with probability 1e-4; the floor sits far above its mean (under 0.15
eps on the shipped specs), so together they do not fire on correct code. With
fewer than 2 usable batches there is no spread to judge by: no verdict. In float64 the truth
is autograd itself, so d = delta(manual). Batches where the tensor is rounding noise (zero by
construction, or not resolved by autograd in the dtype) carry no direction and are left out.

Torch-free: the statistic is a running sum (count, sum, sum of squares) that summaries fold
batch by batch and merge across shards. Summaries keep the sums as integers of QUANTUM_BITS
below the dtype's epsilon (`quantize`): integer sums are exact in any order, so a run merged
from shards reports the very numbers of the unsharded run.
"""

from __future__ import annotations

import math

BIAS_FLOOR = 0.5  # in units of the dtype's epsilon
P_VALUE = 1e-4
# Student's t, two-sided p = 1e-4, by degrees of freedom (scipy.stats.t.ppf(1 - 5e-5, dof)).
_T = {
    1: 6366.2, 2: 99.99, 3: 28.0, 4: 15.54, 5: 11.18, 6: 9.08, 7: 7.88, 8: 7.12, 9: 6.59,
    10: 6.21, 11: 5.92, 12: 5.69, 13: 5.51, 14: 5.36, 15: 5.24, 16: 5.13, 17: 5.04, 18: 4.97,
    19: 4.90, 20: 4.84, 25: 4.62, 30: 4.48, 40: 4.32, 60: 4.17, 120: 4.03, 1000: 3.91,
}  # fmt: skip
_NORMAL = 3.89
QUANTUM_BITS = 32


def quantum(eps: float) -> float:
    """The unit of a summary's integer sums: 2^-32 of the dtype's epsilon."""
    return (eps or 2.0**-52) * 2.0**-QUANTUM_BITS


def quantize(value: float, eps: float) -> int:
    return round(value / quantum(eps))


def critical(dof: int) -> float:
    """t quantile for `dof` degrees of freedom (the next tabulated dof below, conservative)."""
    if dof < 1:
        return math.inf
    below = [d for d in _T if d <= dof]
    return _T[max(below)] if dof <= 1000 else _NORMAL


def spread(n: int, total: float, squares: float) -> float:
    """Sample standard deviation from running sums (0 below 2 samples); integer sums (quanta)
    are combined exactly before the one rounding."""
    if n < 2:
        return 0.0
    if isinstance(total, int) and isinstance(squares, int):
        return math.sqrt(max(0, n * squares - total * total) / (n * (n - 1)))
    mean = total / n
    return math.sqrt(max(0.0, (squares - n * mean * mean) / (n - 1)))


def bound(n: int, total: float, squares: float, eps: float) -> float:
    """The largest |mean d| rounding noise is allowed to produce; inf below 2 batches."""
    if n < 2:
        return math.inf
    return max(BIAS_FLOOR * eps, critical(n - 1) * spread(n, total, squares) / math.sqrt(n))


def verdict(n: int, total: float, squares: float, eps: float) -> str:
    """pass | fail | inconclusive (fewer than 2 usable batches)."""
    if n < 2:
        return "inconclusive"
    return "fail" if abs(total / n) > bound(n, total, squares, eps) else "pass"
