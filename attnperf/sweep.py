"""A sweep: variants × backends × sequence lengths × batch sizes, checked, then timed.

Each point is checked against the float64 reference before it is timed (a wrong result is
recorded as ``wrong`` and never timed); a backend that cannot run it is recorded with its
reason; an out-of-memory point is recorded as ``oom`` and the sweep goes on.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from attnperf.analysis.flops import forward_flops
from attnperf.backends import Unsupported, get_backend
from attnperf.case import Case
from attnperf.catalog import get_variant
from attnperf.correctness import WrongResult, verified_runner
from attnperf.measure import measure_peak, measure_time

BASELINE = "eager"


@dataclass(frozen=True)
class Grid:
    variants: tuple[str, ...]
    backends: tuple[str, ...]
    seq_lens: tuple[int, ...]
    batches: tuple[int, ...] = (1,)
    heads: int = 8
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    options: tuple[tuple[str, Any], ...] = ()

    def case(self, variant: str, seq_len: int, batch: int = 1) -> Case:
        """The case of ``variant`` at ``seq_len`` and ``batch`` with this grid's shape and options."""
        return get_variant(variant).case(
            seq_len, batch=batch, heads=self.heads, head_dim=self.head_dim, dtype=self.dtype, device=self.device,
            **dict(self.options),
        )  # fmt: skip

    def points(self) -> list[tuple[str, str, int, int]]:
        return [
            (variant, backend, seq_len, batch)
            for variant in self.variants
            for seq_len in self.seq_lens
            for batch in self.batches
            for backend in self.backends
        ]


def free_memory(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run_point(
    grid: Grid, variant_name: str, backend_name: str, seq_len: int, batch: int, *, repeat: int
) -> dict[str, Any]:
    """Check and time one point; the record always says what happened."""
    variant, backend = get_variant(variant_name), get_backend(backend_name)
    case = grid.case(variant_name, seq_len, batch)
    record: dict[str, Any] = {
        "variant": variant.name,
        "mechanism": variant.mechanism,
        "backend": backend.name,
        "seq_len": seq_len,
        "batch": batch,
        "case_id": case.id,
        "case": case.as_dict(),
    }
    try:
        runner, checked = verified_runner(variant.mechanism, backend, case)
        record["rel_error"] = checked.error
        if (kernel := getattr(runner, "kernel", None)) is not None:  # sdpa: the kernel its dispatch picked
            record["kernel"] = kernel
        with torch.no_grad():
            timing = measure_time(runner, case.device, repeat=repeat)
            peak, record["peak_kind"] = measure_peak(runner, case.device, own_cpu_allocator=backend.own_cpu_allocator)
            if peak is not None:
                record["peak_bytes"] = peak
    except Unsupported as exc:
        return record | {"status": "unsupported", "reason": str(exc)}
    except WrongResult as exc:
        return record | {"status": "wrong", "reason": str(exc)}
    except torch.OutOfMemoryError as exc:
        free_memory(case.device)
        return record | {"status": "oom", "reason": str(exc).splitlines()[0]}
    flops = forward_flops(variant.mechanism, backend.name, case)
    return record | {
        "status": "ok",
        "median_s": timing.median,
        "samples_s": timing.samples,
        "spread": timing.spread,
        "tokens_per_s": batch * case.q_len / timing.median,
        "useful_tflops": flops.useful / timing.median / 1e12,
        "executed_tflops": flops.executed / timing.median / 1e12,
    }


def add_ratios(records: list[dict[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """Add ``speedup`` (baseline time / time) and ``memory_ratio`` against the baseline backend
    measured at the same point in the same run."""
    base = {
        (r["variant"], r["seq_len"], r["batch"]): r for r in records if r["backend"] == baseline and r["status"] == "ok"
    }
    for r in records:
        ref = base.get((r["variant"], r["seq_len"], r["batch"]))
        if r["status"] != "ok" or ref is None:
            continue
        r["speedup"] = ref["median_s"] / r["median_s"]
        if r.get("peak_bytes") and ref.get("peak_bytes"):
            r["memory_ratio"] = r["peak_bytes"] / ref["peak_bytes"]
    return records


def run_sweep(
    grid: Grid,
    *,
    repeat: int = 7,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    on_record: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every point; ``on_record(records so far)`` after each one, so a sweep that is killed
    midway (a time limit, a hung kernel) still leaves the points it finished on disk."""
    points = grid.points()
    iterator = progress(points) if progress is not None else points
    records: list[dict[str, Any]] = []
    for variant, backend, seq_len, batch in iterator:
        records.append(run_point(grid, variant, backend, seq_len, batch, repeat=repeat))
        free_memory(grid.device)
        if on_record is not None:
            on_record(add_ratios(records))
    return add_ratios(records)
