"""Batch-size tuning: per backend, the batch of highest throughput under a memory limit and an
optional p95-latency target.

The search doubles the batch from 1 until a size fails (out of memory, over the memory limit or
over the latency target), then bisects between the last good and the first bad size. A size at
or above a known failure is never run again (an OOM at 64 rules out 64, 96 and 128 alike), and
no size is run twice. Memory is the measured peak of one call (CUDA allocator or CPU RSS growth).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from attnperf.benchgrid import Grid
from attnperf.point import free_memory, measure_point
from attnperf.records import Record, Status


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


@dataclass(frozen=True)
class Trial:
    """One batch size: its record (:func:`attnperf.point.measure_point`) and whether it met the limits."""

    record: Record
    fits: bool
    why_not: str | None = None  # the limit it broke, or the status and reason it did not run

    @property
    def batch(self) -> int:
        return self.record.batch

    @property
    def p95_ms(self) -> float | None:
        return p95(list(self.record.samples_s)) * 1e3 if self.record.samples_s else None


@dataclass
class TuneResult:
    backend: str
    best_batch: int | None = None
    trials: list[Trial] = field(default_factory=list)
    reason: str | None = None

    @property
    def best(self) -> Trial | None:
        return next((t for t in self.trials if t.batch == self.best_batch), None)


def trial(grid: Grid, variant: str, backend: str, batch: int, *, memory_limit: int, p95_ms: float | None,
          repeat: int) -> Trial:  # fmt: skip
    """Check, time and measure one batch size (one call a sample, for the p95) against the limits."""
    spec = grid.spec(backend, variant, grid.seq_lens[0], batch=batch)
    (record,) = measure_point(spec, repeat=repeat, min_sample_s=0.0)
    free_memory(grid.device)
    mib = 2**20
    if record.status is not Status.OK:
        return Trial(record, False, f"{record.status}: {record.reason}" if record.reason else str(record.status))
    if record.peak_bytes is None:  # a memory limit cannot be held to a peak nobody measured
        return Trial(record, False, f"peak memory {record.peak_kind}")
    if record.peak_bytes > memory_limit:
        return Trial(record, False, f"peak {record.peak_bytes / mib:.3g} MiB > limit {memory_limit / mib:.3g} MiB")
    result = Trial(record, True)
    if p95_ms is not None and result.p95_ms is not None and result.p95_ms > p95_ms:
        return Trial(record, False, f"p95 {result.p95_ms:.3g} ms > limit {p95_ms:g} ms")
    return result


def tune_backend(
    grid: Grid, variant: str, backend: str, *, memory_limit: int, p95_ms: float | None = None, max_batch: int = 1024,
    repeat: int = 7,
) -> TuneResult:  # fmt: skip
    """Search batch sizes for ``backend`` on ``variant`` at the grid's first length and shape."""
    result = TuneResult(backend)
    tried: dict[int, Trial] = {}
    smallest_bad = max_batch + 1

    def run(batch: int) -> bool:
        nonlocal smallest_bad
        if batch >= smallest_bad or batch in tried:  # a known failure rules out every larger size
            return batch in tried and tried[batch].fits
        outcome = trial(grid, variant, backend, batch, memory_limit=memory_limit, p95_ms=p95_ms, repeat=repeat)
        tried[batch] = outcome
        result.trials.append(outcome)
        if not outcome.fits:
            smallest_bad = min(smallest_bad, batch)
        return outcome.fits

    good, batch = 0, 1
    while batch <= max_batch and run(batch):
        good, batch = batch, batch * 2
    if good == 0:
        first = tried.get(1)
        result.reason = f"batch 1 does not fit: {first.why_not}" if first is not None else "not run"
        return result
    low, high = good, min(smallest_bad, max_batch + 1)
    while high - low > 1:
        mid = (low + high) // 2
        if run(mid):
            low = mid
        else:
            high = mid
    fitting = [t for t in result.trials if t.fits]
    result.best_batch = max(fitting, key=lambda t: t.record.tokens_per_s or 0.0).batch
    return result
