"""Empirical scaling: the exponent p in time ∝ n^p fitted from a sweep, with a 95% interval.

Ordinary least squares on (log n, log t); the interval is slope ± t₀.₉₇₅(df) · SE. Theory to
hold it against: full and causal attention ≈ 2, a fixed window ≈ 1, linear attention ≈ 1 —
at lengths where per-call overhead no longer dominates. Short lengths flatten the slope: a fixed
per-call cost weighs most where the kernel's own work is smallest, so a linear-time kernel fitted
over a wide range of lengths reads well below 1. :func:`tail_exponent` fits the longer half of
the lengths, where that cost has faded, and both are reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Two-sided 95% quantiles of Student's t for df = 1 … 30 (then the normal 1.96).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]  # fmt: skip


@dataclass(frozen=True)
class Fit:
    exponent: float
    low: float
    high: float
    points: int
    lengths: tuple[float, ...] = ()


def fit_exponent(lengths: Sequence[float], values: Sequence[float]) -> Fit:
    """Slope of log(values) against log(lengths) with its 95% confidence interval."""
    if len(lengths) != len(values) or len(lengths) < 2:
        raise ValueError("fit_exponent needs at least two (length, value) pairs of equal count")
    if min(lengths) <= 0 or min(values) <= 0:
        raise ValueError("lengths and values must be positive to fit a power law")
    xs, ys = [math.log(x) for x in lengths], [math.log(y) for y in values]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("lengths must not all be equal")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if n == 2:
        return Fit(slope, float("-inf"), float("inf"), n, tuple(lengths))
    residual = sum((y - (my + slope * (x - mx))) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(residual / (n - 2) / sxx)
    t = _T975[n - 3] if n - 2 <= len(_T975) else 1.96
    return Fit(slope, slope - t * se, slope + t * se, n, tuple(lengths))


def tail_exponent(lengths: Sequence[float], values: Sequence[float]) -> Fit:
    """:func:`fit_exponent` over the longer half of the distinct lengths (at least the two longest;
    two lengths give a slope without an interval).

    The asymptotic exponent a complexity class predicts shows where the kernel's work dwarfs
    its fixed costs (launch, host overhead, a minimum grid), i.e. at the longest lengths.
    """
    distinct = sorted(set(lengths))
    cutoff = distinct[-max(2, -(-len(distinct) // 2))] if len(distinct) >= 2 else distinct[0]
    longest = [(x, y) for x, y in zip(lengths, values, strict=True) if x >= cutoff]
    return fit_exponent([x for x, _ in longest], [y for _, y in longest])
