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
from typing import Any

import torch

from attnperf.backends import Unsupported, get_backend
from attnperf.catalog import get_variant
from attnperf.correctness import WrongResult, verified_runner
from attnperf.measure import measure_peak, measure_time
from attnperf.sweep import free_memory


@dataclass
class TuneResult:
    backend: str
    best_batch: int | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return next((t for t in self.trials if t["batch"] == self.best_batch), None)


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


def trial(variant: str, backend: str, batch: int, shape: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Check, time and measure one batch size; the record says ``ok``, ``oom`` or why not."""
    case = get_variant(variant).case(batch=batch, **shape)
    try:
        runner, _ = verified_runner(get_variant(variant).mechanism, backend, case)
        with torch.no_grad():
            timing = measure_time(runner, case.device, repeat=repeat, min_sample_s=0.0)
            peak, kind = measure_peak(runner, case.device, own_cpu_allocator=get_backend(backend).own_cpu_allocator)
    except torch.OutOfMemoryError:
        free_memory(case.device)
        return {"batch": batch, "status": "oom"}
    except (Unsupported, WrongResult) as exc:
        return {"batch": batch, "status": "unsupported", "reason": str(exc)}
    if peak is None:  # a memory limit cannot be held to a peak nobody measured
        return {"batch": batch, "status": "unsupported", "reason": f"peak memory {kind}"}
    tokens = batch * case.q_len
    return {
        "batch": batch, "status": "ok", "median_ms": timing.median * 1e3, "p95_ms": p95(timing.samples) * 1e3,
        "tokens_per_s": tokens / timing.median, "peak_bytes": peak,
    }  # fmt: skip


def tune_backend(
    variant: str, backend: str, shape: dict[str, Any], *, memory_limit: int, p95_ms: float | None = None,
    max_batch: int = 1024, repeat: int = 7,
) -> TuneResult:  # fmt: skip
    """Search batch sizes for ``backend``; ``shape`` holds seq_len, heads, head_dim, dtype, device."""
    result = TuneResult(backend)
    tried: dict[int, dict[str, Any]] = {}
    smallest_bad = max_batch + 1

    def run(batch: int) -> bool:
        nonlocal smallest_bad
        if batch >= smallest_bad or batch in tried:  # a known failure rules out every larger size
            return batch in tried and tried[batch]["fits"]
        record = trial(variant, backend, batch, shape, repeat)
        fits = record["status"] == "ok" and record["peak_bytes"] <= memory_limit
        if fits and p95_ms is not None:
            fits = record["p95_ms"] <= p95_ms
        record["fits"] = fits
        tried[batch] = record
        result.trials.append(record)
        if not fits:
            smallest_bad = min(smallest_bad, batch)
        return fits

    good, batch = 0, 1
    while batch <= max_batch and run(batch):
        good, batch = batch, batch * 2
    if good == 0:
        first = tried.get(1, {})
        result.reason = first.get("reason") or f"batch 1 does not fit ({first.get('status', 'not run')})"
        return result
    low, high = good, min(smallest_bad, max_batch + 1)
    while high - low > 1:
        mid = (low + high) // 2
        if run(mid):
            low = mid
        else:
            high = mid
    fitting = [t for t in result.trials if t["fits"]]
    result.best_batch = max(fitting, key=lambda t: t["tokens_per_s"])["batch"]
    return result
