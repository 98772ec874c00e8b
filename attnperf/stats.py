"""The few distributions the regression check needs, without SciPy.

The check compares two or three processes a side: at those sample sizes the spread estimated
from the run is judged with Student's t (2 degrees of freedom need 9.92 at the 99.5% quantile,
against the normal's 2.576), a noise level is compared with its calibration by an F ratio, and
error rates counted over few trials carry exact (Clopper–Pearson) intervals. Each function is the
textbook one, computed through the regularized incomplete beta function (Numerical Recipes'
continued fraction) and bisection; the tests hold them to tabulated values.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _bisect(f: Callable[[float], float], target: float, low: float, high: float) -> float:
    """x in [low, high] with f(x) = target, for f increasing."""
    for _ in range(200):
        mid = (low + high) / 2
        if f(mid) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def t_cdf(x: float, dof: float) -> float:
    """P(T ≤ x) for Student's t with ``dof`` degrees of freedom."""
    tail = 0.5 * betainc(dof / 2, 0.5, dof / (dof + x * x))
    return 1.0 - tail if x > 0 else tail


def t_ppf(p: float, dof: float) -> float:
    """The ``p`` quantile of Student's t."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1 - p, dof)
    high = 1.0
    while t_cdf(high, dof) < p:
        high *= 2
    return _bisect(lambda x: t_cdf(x, dof), p, 0.0, high)


def f_cdf(x: float, dof1: float, dof2: float) -> float:
    """P(F ≤ x) for the F distribution with (``dof1``, ``dof2``) degrees of freedom."""
    if x <= 0:
        return 0.0
    return betainc(dof1 / 2, dof2 / 2, dof1 * x / (dof1 * x + dof2))


def f_ppf(p: float, dof1: float, dof2: float) -> float:
    high = 1.0
    while f_cdf(high, dof1, dof2) < p:
        high *= 2
    return _bisect(lambda x: f_cdf(x, dof1, dof2), p, 0.0, high)


def beta_ppf(p: float, a: float, b: float) -> float:
    return _bisect(lambda x: betainc(a, b, x), p, 0.0, 1.0)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) ``level`` interval of a proportion k/n (``(0, 1)`` for n = 0)."""
    if n == 0:
        return 0.0, 1.0
    alpha = 1 - level
    low = 0.0 if k == 0 else beta_ppf(alpha / 2, k, n - k + 1)
    high = 1.0 if k == n else beta_ppf(1 - alpha / 2, k + 1, n - k)
    return low, high
