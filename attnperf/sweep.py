"""A sweep: a grid's points checked, then timed, each ending in a :class:`~attnperf.records.Record`.

Each point is checked against the float64 reference before it is timed (a wrong result is
recorded as ``wrong`` and never timed); a backend that cannot run it, or a case that does not fit
its mechanism, is recorded with the reason; a point whose inputs, output and predicted peak memory
exceed what the device has free is ``refused`` without running, and an allocation that fails
anyway is ``oom``; any other error of the backend (a kernel that fails to compile, say) is
``failed`` with its message.
The sweep goes on after each of them. :func:`run_point` is the one place that does this, for the
sweep, ``analyze --measure`` and the tuner.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from attnperf.analysis.flops import forward_flops
from attnperf.analysis.memory import min_bytes
from attnperf.backends import Unsupported, get_backend
from attnperf.benchgrid import Grid, PointSpec
from attnperf.case import Case
from attnperf.correctness import WrongResult, verified_runner
from attnperf.errors import error_line
from attnperf.graphs import graphed
from attnperf.machine import available_bytes
from attnperf.measure import measure_peak, measure_time
from attnperf.mechanisms import get_mechanism
from attnperf.records import Record, Status, with_ratios
from attnperf.registry import fit

BASELINE = "eager"


def free_memory(device: str, *, between_points: bool = False) -> None:
    """Collect garbage and give the allocator's cached blocks back.

    ``between_points``: called after a point, when nothing of it is referenced any more. What
    survives that collection is long-lived (modules, compiled kernels, caches), and
    ``gc.freeze()`` moves it out of every later collection. Without it each collection walked every
    object of the process: 0.2–0.25 s a point on the CPU with torch and inductor loaded (370k
    objects), most of a batch process's overhead per point on the GPU, where flash-attn-4, fla and
    xFormers are loaded as well. A cycle frozen while alive is never collected, hence only between
    points (not in an exception handler, whose traceback still holds the point)."""
    gc.collect()
    if between_points:
        gc.freeze()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def poisons_device(exc: BaseException) -> bool:
    """A CUDA error that leaves the context unusable (an illegal memory access, a device-side
    assert, a launch failure): every later call in this process would fail with it too, so it
    stops the run instead of becoming one ``failed`` record after another."""
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return isinstance(exc, accelerator_error) or "CUDA error" in str(exc)


def is_oom(exc: BaseException) -> bool:
    """An allocation failure: CUDA's ``OutOfMemoryError``, or the CPU allocator's RuntimeError
    ("DefaultCPUAllocator: can't allocate memory")."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def failure(exc: Exception, device: str) -> tuple[Status, str]:
    """The status and reason of a point whose backend raised ``exc`` (the sweep, the profiler and
    the batch runner all go on after it): ``oom`` (memory freed for the next point) or ``failed``.
    An error that poisons the device is raised again instead (:func:`poisons_device`)."""
    if poisons_device(exc):
        raise exc
    if is_oom(exc):
        free_memory(device)
        return Status.OOM, error_line(exc)
    return Status.FAILED, error_line(exc)


@dataclass(frozen=True)
class Refusal:
    """Why a point is not run: the memory it needs against what the device has free."""

    reason: str
    #: Inputs, output and the backend's predicted peak: what the call needs free.
    needed_bytes: int
    #: The backend's predicted peak extra memory alone (what ``analyze`` and asv call the prediction).
    predicted_peak_bytes: int
    available_bytes: int


def memory_refusal(spec: PointSpec, case: Case) -> Refusal | None:
    """The refusal when the point's inputs, output and predicted peak exceed the memory the device
    has free now; None when it fits or nothing is known."""
    available = available_bytes(case.device)
    if available is None:
        return None
    peak = get_backend(spec.backend).predicted_peak_bytes(get_mechanism(spec.mechanism), case)
    needed = min_bytes(case) + peak
    if needed <= available:
        return None
    gib = 2**30
    reason = (f"predicted {needed / gib:.1f} GiB (inputs, output, peak) > {available / gib:.1f} GiB free "
              f"on {case.device}")  # fmt: skip
    return Refusal(reason, needed, peak, available)


def intended_shape(spec: PointSpec) -> dict[str, Any]:
    """What a point was asked to measure: the grid's shape and mechanism options. The ``case`` of a
    record whose case could not be built or does not run here (``case_id`` ""): a resumed sweep
    compares it as it compares an ok record's case, so that a run with other heads, head dim,
    dtype, device or batch size is refused instead of keeping these records as its own."""
    shape = {"batch": spec.batch, "heads": spec.heads, "head_dim": spec.head_dim, "dtype": spec.dtype,
             "device": spec.device}  # fmt: skip
    return shape | dict(spec.options)


def run_point(spec: PointSpec, *, repeat: int, min_sample_s: float | None = None, cuda_graph: bool = False) -> Record:
    """Check and time one point; the record always says what happened. ``cuda_graph``: time the
    call's CUDA-graph replay (:mod:`attnperf.graphs`); the peak memory is still the direct call's."""
    head = {"variant": spec.variant, "mechanism": spec.mechanism, "backend": spec.backend, "seq_len": spec.seq_len,
            "batch": spec.batch}  # fmt: skip
    case, reason = fit(spec)
    if case is None:
        return Record(**head, case_id="", case=intended_shape(spec), status=Status.UNSUPPORTED, reason=reason)
    head |= {"case_id": case.id, "case": case.as_dict()}
    refusal = memory_refusal(spec, case)
    if refusal is not None:
        return Record(**head, status=Status.REFUSED, reason=refusal.reason, needed_bytes=refusal.needed_bytes,
                      predicted_peak_bytes=refusal.predicted_peak_bytes,
                      available_bytes=refusal.available_bytes)  # fmt: skip
    backend = get_backend(spec.backend)
    try:
        runner, checked = verified_runner(spec.mechanism, backend, case)
        kernel = getattr(runner, "kernel", None)  # sdpa: the kernel its dispatch picked
        with torch.no_grad():
            # The peak first: a captured graph's memory pool would sit beside the call it measures.
            peak, peak_kind = measure_peak(runner, case.device, own_cpu_allocator=backend.own_cpu_allocator,
                                           own_cuda_allocator=backend.own_cuda_allocator)  # fmt: skip
            timed = graphed(runner, case.device, checked.bound or backend.bound(case.dtype)) if cuda_graph else runner
            timing = measure_time(timed, case.device, repeat=repeat, min_sample_s=min_sample_s)
    except Unsupported as exc:
        return Record(**head, status=Status.UNSUPPORTED, reason=str(exc))
    except WrongResult as exc:
        return Record(**head, status=Status.WRONG, reason=str(exc))
    except Exception as exc:  # out of memory, or any other error of the backend: recorded, and the sweep goes on
        status, reason = failure(exc, case.device)
        return Record(**head, status=status, reason=reason)
    flops = forward_flops(get_mechanism(spec.mechanism), backend, case)
    return Record(
        **head, status=Status.OK, rel_error=checked.error, median_s=timing.median, samples_s=tuple(timing.samples),
        spread=timing.spread, tokens_per_s=spec.batch * case.q_len / timing.median,
        useful_tflops=flops.useful / timing.median / 1e12, executed_tflops=flops.executed / timing.median / 1e12,
        peak_bytes=peak, peak_kind=peak_kind, kernel=kernel, cuda_graph=cuda_graph or None,
    )  # fmt: skip


def run_sweep(
    grid: Grid,
    *,
    repeat: int = 7,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    on_record: Callable[[list[Record]], None] | None = None,
    done: Iterable[Record] = (),
    cuda_graph: bool = False,
) -> list[Record]:
    """Run every point of ``grid`` not already in ``done`` (a resumed sweep's records, kept in
    front); ``on_record(records so far)`` after each one, so a sweep that is stopped midway (a time
    limit, Ctrl-C, a hung kernel) still leaves the points it finished on disk. ``cuda_graph``: see
    :func:`run_point`."""
    records = list(done)
    finished = {r.point for r in records}
    points = [p for p in grid.forward_points() if (p.variant, p.backend, p.seq_len, p.batch) not in finished]
    iterator = progress(points) if progress is not None else points
    for spec in iterator:
        records.append(run_point(spec, repeat=repeat, cuda_graph=cuda_graph))
        free_memory(grid.device, between_points=True)
        if on_record is not None:
            on_record(with_ratios(records, BASELINE))
    return with_ratios(records, BASELINE)
