"""The regression verdict: head against base, with the process as the unit of replication.

Timings of one process share its state (clocks, memory layout, compiled kernels, what else runs),
so the samples inside one process are not independent evidence: the check runs base and head
alternately in several fresh processes each, reduces every process to its median per point and
timing, and compares those medians.

* **Time** (the direct call, and on CUDA the CUDA-graph replay: each is its own benchmark, both
  gate): ``d = mean(log head) − mean(log base)``. Its spread ``s`` is the run's own pooled spread
  of log medians (``ν_o = n_base + n_head − 2`` degrees of freedom) shrunk toward the runner's A/A
  calibration σ (:class:`~attnperf.noise.Noise`, worth ``ν_c`` degrees of freedom, at most
  :data:`PRIOR_DOF`): ``s² = (ν_c σ² + ν_o s_o²) / (ν_c + ν_o)``, judged with Student's t at
  ``ν_c + ν_o`` degrees of freedom. A time **regresses** when the lower end of the 99% interval of
  ``d`` lies above ``log(1 + min_effect)``; it **improves** when the upper end lies below
  ``−log(1 + min_effect)``. A point whose run spread is beyond its calibration (an F test at
  99.9%), or that has no spread at all (one process a side on an uncalibrated machine), is
  **inconclusive**: never called slower or faster.
* **Guarded slowdown**: for every timed point, the slowdown the check catches with 90% probability
  (first pass and confirmation both flagging) at this run's spread: what the check guards, printed
  per benchmark.
* **Memory** (the CUDA allocator's peak, exact; forward, forward+backward and decode) regresses when
  head's median exceeds base's by :data:`MEMORY_MIN_EFFECT` and 1 MiB. RSS growth on the CPU depends
  on glibc's reuse of freed pages and does not gate.
* **First call** (compilation, autotuning) is reported when head's median is more than
  :data:`FIRST_CALL_FACTOR` × base's and :data:`FIRST_CALL_MIN_S` longer; it does not fail the check
  (compile caches make it vary between runs).
* A benchmark that ran on base but is skipped, unsupported, wrong, out of memory, failed or missing
  on head is a **hole** and fails the check with its reason, unless the grid change is declared.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from attnperf.noise import Noise
from attnperf.records import Record, ResultFile
from attnperf.stats import f_ppf, t_cdf, t_ppf

MIN_EFFECT = 0.01
#: The most degrees of freedom a calibration lends a point: σ drifts between days, so even a large
#: A/A pool is not taken as exact.
PRIOR_DOF = 10
#: Two-sided 99% interval.
LEVEL = 0.99
#: A run's spread beyond its calibration at this confidence makes a point inconclusive.
STALE_LEVEL = 0.999
POWER = 0.9
MEMORY_MIN_EFFECT = 0.02
MEMORY_MIN_BYTES = 1 << 20
FIRST_CALL_FACTOR = 2.0
FIRST_CALL_MIN_S = 1.0
#: A point whose guarded slowdown exceeds this is listed as not guarded.
GUARD_LIMIT = 0.10
REGRESSION, IMPROVEMENT, SAME, HOLE, NEW = "regression", "improvement", "same", "hole", "new"
INCONCLUSIVE, SLOWER_FIRST_CALL = "inconclusive", "slower first call"
TIME_KINDS = ("direct", "replay")


@dataclass(frozen=True)
class PointVerdict:
    key: str
    kind: str  # "direct", "replay", "memory" or "first_call"
    outcome: str
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    threshold: float | None = None
    n_base: int = 0
    n_head: int = 0
    reason: str | None = None
    #: The spread of log medians the point was judged with, and its degrees of freedom.
    sigma: float | None = None
    dof: float | None = None
    #: The slowdown this check catches with 90% probability at that spread (as a fraction).
    guarded: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    points: list[PointVerdict]
    #: Why no failure of this verdict can be trusted (an uncalibrated machine); None when it can.
    advisory: str | None = None

    def where(self, outcome: str) -> list[PointVerdict]:
        return [p for p in self.points if p.outcome == outcome]

    @property
    def failed(self) -> bool:
        """A hole always fails; a slowdown only when the machine is calibrated."""
        return bool(self.where(HOLE)) or (self.advisory is None and bool(self.where(REGRESSION)))

    def flagged_keys(self) -> set[str]:
        """The point keys to measure again: slower, inconclusive, or a hole."""
        return {p.key for p in self.points if p.outcome in (REGRESSION, HOLE, INCONCLUSIVE)}


@dataclass(frozen=True)
class Judged:
    """One time comparison: the ratio, its interval and what it was judged with."""

    ratio: float
    low: float
    high: float
    sigma: float
    dof: float
    se: float
    stale: bool


def judge_times(base: Sequence[float], head: Sequence[float], sigma: float | None, prior_dof: float) -> Judged | None:
    """head/base from per-process medians (see the module text); None when nothing estimates the
    spread (no calibration and a single process on a side)."""
    lb, lh = [math.log(x) for x in base], [math.log(x) for x in head]
    d = statistics.fmean(lh) - statistics.fmean(lb)
    dof_o = len(lb) + len(lh) - 2
    squares = sum((x - statistics.fmean(lb)) ** 2 for x in lb) + sum((x - statistics.fmean(lh)) ** 2 for x in lh)
    prior = min(prior_dof, PRIOR_DOF) if sigma is not None else 0
    dof = prior + dof_o
    if dof < 1:
        return None
    variance = ((prior * sigma**2 if sigma is not None else 0.0) + squares) / dof
    s = math.sqrt(variance)
    se = s * math.sqrt(1 / len(lb) + 1 / len(lh))
    q = t_ppf(1 - (1 - LEVEL) / 2, dof)
    stale = bool(sigma and dof_o > 0 and (squares / dof_o) / sigma**2 > f_ppf(STALE_LEVEL, dof_o, prior))
    return Judged(math.exp(d), math.exp(d - q * se), math.exp(d + q * se), s, dof, se, stale)


def guarded_slowdown(sigma: float, dof: float, n_base: int, n_head: int, confirm: int, min_effect: float) -> float:
    """The slowdown (a fraction) flagged with :data:`POWER` probability by a first pass of ``n_base``
    and ``n_head`` processes and, when ``confirm`` > 0, a confirmation of ``confirm`` a side, both
    needing the lower end of the interval above ``log(1 + min_effect)``: the smallest ``δ`` with
    ``P₁(δ)·P₂(δ) ≥ 0.9``, ``P(δ) = T_ν((δ − m)/se − q)`` (the spread taken as known)."""
    m = math.log1p(min_effect)
    q = t_ppf(1 - (1 - LEVEL) / 2, dof)
    sigma = max(sigma, 1e-9)  # a spread read as 0 (identical medians): the minimum effect is what is guarded
    passes = [sigma * math.sqrt(1 / n_base + 1 / n_head)]
    if confirm > 0:
        passes.append(sigma * math.sqrt(2 / confirm))

    def power(delta: float) -> float:
        return math.prod(t_cdf((delta - m) / se - q, dof) for se in passes)

    low, high = m, m + 50 * max(passes)
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if power(mid) < POWER else (low, mid)
    return math.expm1(high)


def per_process(runs: Iterable[ResultFile]) -> dict[str, list[Record]]:
    """``{key: [record of process 1, record of process 2, …]}`` over the given processes."""
    table: dict[str, list[Record]] = {}
    for run in runs:
        for record in run.records:
            table.setdefault(record.key, []).append(record)
    return table


def _majority_ok(records: Sequence[Record], processes: int) -> bool:
    """Whether more than half of the ``processes`` measured the point: a process that crashed
    before it counts against it, so a head that dies on a point cannot pass on its survivors."""
    return sum(r.ok for r in records) * 2 > processes


def _why_not(records: Sequence[Record], expected: int) -> str:
    if not records:
        return "missing on head (the process ended before it, or head's grid lacks it)"
    missing = f"missing in {expected - len(records)} of {expected} head processes (they ended before it)"
    bad = [r for r in records if not r.ok]
    if not bad:
        return missing
    return f"{bad[0].status} on head: {bad[0].reason or ''}" + (f"; {missing}" if len(records) < expected else "")


def decide(
    base_runs: Sequence[ResultFile], head_runs: Sequence[ResultFile], noise: Noise, *,
    allow_grid_change: bool = False, keys: Iterable[str] | None = None, confirm: int = 2,
    min_effect: float = MIN_EFFECT,
) -> Verdict:  # fmt: skip
    """The verdict on every benchmark that ran on base (``keys``: only those points). ``confirm``: the
    processes a side a flagged point is measured again with (for the guarded slowdown)."""
    base, head = per_process(base_runs), per_process(head_runs)
    wanted = set(keys) if keys is not None else None
    points: list[PointVerdict] = []
    for key in sorted(base):
        b = base[key]
        if (wanted is not None and key not in wanted) or not _majority_ok(b, len(base_runs)):
            continue
        h = head.get(key, [])
        if not _majority_ok(h, len(head_runs)):
            outcome = SAME if allow_grid_change else HOLE
            points.append(PointVerdict(key, "direct", outcome, n_base=len(b), n_head=len(h),
                                       reason=_why_not(h, len(head_runs))))  # fmt: skip
            continue
        for kind in TIME_KINDS:
            verdict = _time_verdict(key, kind, b, h, noise, confirm, min_effect)
            if verdict is not None:
                points.append(verdict)
        points += [v for v in (_memory_verdict(key, b, h), _first_call_verdict(key, b, h)) if v is not None]
    for key in sorted(set(head) - set(base)):
        new = head[key]
        if (wanted is None or key in wanted) and _majority_ok(new, len(head_runs)):
            points.append(PointVerdict(key, "direct", NEW, n_head=len(new), reason="not on base"))
    advisory = None if noise.calibrated else f"advisory: uncalibrated ({noise.why_uncalibrated})"
    return Verdict(points, advisory)


def _time_verdict(
    key: str, kind: str, b: Sequence[Record], h: Sequence[Record], noise: Noise, confirm: int, min_effect: float
) -> PointVerdict | None:
    bt = [t for r in b if r.ok and (t := r.timing(kind)[0]) is not None]
    ht = [t for r in h if r.ok and (t := r.timing(kind)[0]) is not None]
    if not bt or not ht:
        return None  # this timing exists on one side only (an older base times the replay alone)
    sigma, prior_dof = noise.of(kind, key)
    judged = judge_times(bt, ht, sigma, prior_dof)
    threshold = 1 + min_effect
    if judged is None:
        return PointVerdict(key, kind, INCONCLUSIVE, n_base=len(bt), n_head=len(ht), threshold=threshold,
                            reason="one process a side and no calibration: no between-process spread")  # fmt: skip
    guarded = guarded_slowdown(judged.sigma, judged.dof, len(bt), len(ht), confirm, min_effect)
    outcome, reason = SAME, None
    if judged.stale:
        outcome = INCONCLUSIVE
        reason = f"this run's spread is beyond the calibration's (σ {sigma:.2%}): the noise cannot support a verdict"
    elif judged.low > threshold:
        outcome = REGRESSION
    elif judged.high < 1 / threshold:
        outcome = IMPROVEMENT
    return PointVerdict(key, kind, outcome, judged.ratio, judged.low, judged.high, threshold, len(bt), len(ht),
                        reason, judged.sigma, judged.dof, guarded)  # fmt: skip


def _memory_verdict(key: str, b: Sequence[Record], h: Sequence[Record]) -> PointVerdict | None:
    """CUDA peak memory (exact); None where it is not measured or not exact (RSS on the CPU)."""
    bm = [r.peak_bytes for r in b if r.peak_bytes is not None and r.peak_kind == "cuda-allocated"]
    hm = [r.peak_bytes for r in h if r.peak_bytes is not None and r.peak_kind == "cuda-allocated"]
    if not bm or not hm:
        return None
    base_peak, head_peak = statistics.median(bm), statistics.median(hm)
    grew = head_peak > base_peak * (1 + MEMORY_MIN_EFFECT) and head_peak - base_peak >= MEMORY_MIN_BYTES
    ratio = head_peak / base_peak if base_peak else (math.inf if head_peak else 1.0)
    return PointVerdict(key, "memory", REGRESSION if grew else SAME, ratio, threshold=1 + MEMORY_MIN_EFFECT,
                        n_base=len(bm), n_head=len(hm))  # fmt: skip


def _first_call_verdict(key: str, b: Sequence[Record], h: Sequence[Record]) -> PointVerdict | None:
    """Head's first call against base's: reported past the threshold, never failing (see the module text)."""
    bf = [r.first_call_s for r in b if r.first_call_s is not None]
    hf = [r.first_call_s for r in h if r.first_call_s is not None]
    if not bf or not hf:
        return None
    base_s, head_s = statistics.median(bf), statistics.median(hf)
    slower = head_s > FIRST_CALL_FACTOR * base_s and head_s - base_s > FIRST_CALL_MIN_S
    return PointVerdict(key, "first_call", SLOWER_FIRST_CALL if slower else SAME, head_s / base_s if base_s else None,
                        threshold=FIRST_CALL_FACTOR, n_base=len(bf), n_head=len(hf),
                        reason=f"first call {base_s:.2f} s → {head_s:.2f} s" if slower else None)  # fmt: skip
