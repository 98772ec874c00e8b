"""The regression verdict: head against base, with the process as the unit of replication.

Timings of one process share its state (clocks, memory layout, compiled kernels, what else runs),
so the samples inside one process are not independent evidence: on the H200 the samples of one
process vary by 0.2–1%, yet two processes of the same point differ by up to 1.5%, and sessions by
up to 6%. So the check runs base and head alternately in several fresh processes each, reduces
every process to its median per point, and compares those:

* ``d = mean(log head medians) − mean(log base medians)``; its standard error uses
  ``s = max(σ_calibrated, s_observed)``, the between-process spread of log medians measured on the
  runner by A/A trials (:mod:`attnperf.trials`, stored per benchmark) or, where none is stored,
  :data:`DEFAULT_SIGMA`; the pooled spread of this very run is never ignored when it is larger.
* A time regresses when the lower end of the 99% interval ``d ± z·se`` lies above
  ``log(1 + min_effect)``: it is slower beyond doubt *and* by more than the minimum effect. The
  minimum effect is :data:`MIN_EFFECT` (1%), raised to σ for a benchmark whose calibrated spread is
  larger, so a noisy point needs a larger effect (its threshold is in the summary).
* Peak memory (CUDA allocator, exact) regresses when head's median exceeds base's by
  :data:`MEMORY_MIN_EFFECT` and 1 MiB. RSS growth on the CPU depends on glibc's reuse of freed pages
  and is tracked for the graphs only, as are TFLOP/s and the analyzer's predictions.
* A benchmark that ran on base but is skipped, unsupported, wrong, out of memory, failed or missing
  on head is a *hole* and fails the check with its reason, unless the grid change is declared
  (``--allow-grid-change``).

The regression check measures flagged points once more in fresh processes and fails only on what
is flagged again (a confirmation, as PyTorch's dashboard wants two violations in a row).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnperf.benchgrid import FORWARD
from attnperf.records import Status
from attnperf.results import read_json

#: Between-process spread (sd of log medians) assumed where no A/A calibration is stored: about
#: twice what six processes of one point showed on the H200 (CV 0.18–0.52%).
DEFAULT_SIGMA = 0.01
MIN_EFFECT = 0.01
MEMORY_MIN_EFFECT = 0.02
MEMORY_MIN_BYTES = 1 << 20
#: Two-sided 99% normal quantile.
Z = 2.576
REGRESSION, IMPROVEMENT, SAME, HOLE, NEW = "regression", "improvement", "same", "hole", "new"


@dataclass(frozen=True)
class Noise:
    """Calibrated between-process spreads per benchmark key (and the defaults for the rest)."""

    sigma: Mapping[str, float] = field(default_factory=dict)
    default_sigma: float = DEFAULT_SIGMA
    min_effect: float = MIN_EFFECT
    source: str = "defaults"

    def of(self, key: str) -> tuple[float, float]:
        """(σ, minimum effect) for ``key``."""
        sigma = self.sigma.get(key, self.default_sigma)
        return sigma, max(self.min_effect, sigma)

    @classmethod
    def load(cls, path: Path | None, *, min_effect: float = MIN_EFFECT) -> Noise:
        """The calibration stored at ``path`` (written by ``regress trials``), or the defaults."""
        if path is None or not path.exists():
            return cls(min_effect=min_effect)
        data = read_json(path)
        return cls(sigma=data["sigma"], default_sigma=data.get("default_sigma", DEFAULT_SIGMA),
                   min_effect=min_effect, source=str(path))  # fmt: skip


@dataclass(frozen=True)
class PointVerdict:
    key: str
    kind: str  # "time" or "memory"
    outcome: str
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    threshold: float | None = None
    n_base: int = 0
    n_head: int = 0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Verdict:
    points: list[PointVerdict]

    def where(self, outcome: str) -> list[PointVerdict]:
        return [p for p in self.points if p.outcome == outcome]

    @property
    def failed(self) -> bool:
        return bool(self.where(REGRESSION) or self.where(HOLE))

    def flagged_keys(self) -> set[str]:
        """The point keys to measure again (a memory key names its forward point)."""
        return {p.key for p in self.points if p.outcome in (REGRESSION, HOLE)}


def compare_times(base: Sequence[float], head: Sequence[float], sigma: float, min_effect: float) -> tuple[float, ...]:
    """(ratio, low, high, flagged) of head/base from per-process medians (see the module text)."""
    lb, lh = [math.log(x) for x in base], [math.log(x) for x in head]
    d = statistics.fmean(lh) - statistics.fmean(lb)
    s = sigma
    if len(lb) > 1 and len(lh) > 1:
        pooled = ((len(lb) - 1) * statistics.variance(lb) + (len(lh) - 1) * statistics.variance(lh)) / (
            len(lb) + len(lh) - 2
        )
        s = max(s, math.sqrt(pooled))
    se = s * math.sqrt(1 / len(lb) + 1 / len(lh))
    low, high = d - Z * se, d + Z * se
    flagged = low > math.log1p(min_effect)
    return math.exp(d), math.exp(low), math.exp(high), float(flagged)


def per_process(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{key: [record of process 1, record of process 2, …]}`` over the given process outputs."""
    table: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for record in run["records"]:
            table.setdefault(record["key"], []).append(record)
    return table


def _majority_ok(records: Sequence[Mapping[str, Any]], processes: int) -> bool:
    """Whether more than half of the ``processes`` measured the point: a process that crashed
    before it counts against it, so a head that dies on a point cannot pass on its survivors."""
    return sum(r["status"] == Status.OK for r in records) * 2 > processes


def _why_not(records: Sequence[Mapping[str, Any]], expected: int) -> str:
    if not records:
        return "missing on head (the process ended before it, or head's grid lacks it)"
    missing = f"missing in {expected - len(records)} of {expected} head processes (they ended before it)"
    bad = [r for r in records if r["status"] != Status.OK]
    if not bad:
        return missing
    return f"{bad[0]['status']} on head: {bad[0].get('reason', '')}" + (
        f"; {missing}" if len(records) < expected else ""
    )


def decide(
    base_runs: Sequence[Mapping[str, Any]], head_runs: Sequence[Mapping[str, Any]], noise: Noise, *,
    allow_grid_change: bool = False, keys: Iterable[str] | None = None,
) -> Verdict:  # fmt: skip
    """The verdict on every gating benchmark that ran on base (``keys``: only those points)."""
    base, head = per_process(base_runs), per_process(head_runs)
    wanted = set(keys) if keys is not None else None
    points: list[PointVerdict] = []
    for key in sorted(base):
        b = base[key]
        if (wanted is not None and key not in wanted) or "injected_pct" in b[0] or not _majority_ok(b, len(base_runs)):
            continue
        h = head.get(key, [])
        if not _majority_ok(h, len(head_runs)):
            outcome = SAME if allow_grid_change else HOLE
            points.append(PointVerdict(key, "time", outcome, n_base=len(b), n_head=len(h),
                                       reason=_why_not(h, len(head_runs))))  # fmt: skip
            continue
        points.append(_time_verdict(key, b, h, noise))
        memory = _memory_verdict(key, b, h)
        if memory is not None:
            points.append(memory)
    for key in sorted(set(head) - set(base)):
        new = head[key]
        if (wanted is None or key in wanted) and "injected_pct" not in new[0] and _majority_ok(new, len(head_runs)):
            points.append(PointVerdict(key, "time", NEW, n_head=len(new), reason="not on base"))
    return Verdict(points)


def _time_verdict(
    key: str, b: Sequence[Mapping[str, Any]], h: Sequence[Mapping[str, Any]], noise: Noise
) -> PointVerdict:
    sigma, min_effect = noise.of(key)
    bt = [r["median"] for r in b if r["status"] == Status.OK]
    ht = [r["median"] for r in h if r["status"] == Status.OK]
    ratio, low, high, flagged = compare_times(bt, ht, sigma, min_effect)
    if flagged:
        outcome = REGRESSION
    elif high < 1 / (1 + min_effect):
        outcome = IMPROVEMENT
    else:
        outcome = SAME
    return PointVerdict(key, "time", outcome, ratio, low, high, 1 + min_effect, len(bt), len(ht))


def _memory_verdict(key: str, b: Sequence[Mapping[str, Any]], h: Sequence[Mapping[str, Any]]) -> PointVerdict | None:
    """CUDA peak memory of a forward point (exact); None where it is not measured or not exact."""
    spec = b[0]["spec"]
    if spec["mode"] != FORWARD or not spec["device"].startswith("cuda"):
        return None
    bm = [r["peak_bytes"] for r in b if r.get("peak_bytes") is not None]
    hm = [r["peak_bytes"] for r in h if r.get("peak_bytes") is not None]
    if not bm or not hm:
        return None
    base_peak, head_peak = statistics.median(bm), statistics.median(hm)
    grew = head_peak > base_peak * (1 + MEMORY_MIN_EFFECT) and head_peak - base_peak >= MEMORY_MIN_BYTES
    ratio = head_peak / base_peak if base_peak else math.inf
    return PointVerdict(key, "memory", REGRESSION if grew else SAME, ratio, threshold=1 + MEMORY_MIN_EFFECT,
                        n_base=len(bm), n_head=len(hm))  # fmt: skip
