"""One point, measured once: every entry point that times a point calls :func:`measure_point`.

The sweep, ``analyze --measure``, the tuner, the profiler, the batch runner behind the
pull-request check and the history, and context parallelism's single-device baselines all end a
point here; the asv suites and pytest-benchmark time the very closures :func:`prepare` builds.
So every command answers "how long does this take" the same way:

1. :func:`prepare`: the point's case is built and fitted (:func:`attnperf.registry.fit`); the pair
   is checked against the float64 reference on fresh inputs (forward, and gradients for a
   forward+backward point) before anything is timed, so a wrong result is never reported as a
   speed; the direct call is the forward, the forward+backward step or the decode step.
2. :func:`measure`: the first call's time (compilation, autotuning, lazy initialisation), the peak
   memory of one call (before any CUDA graph holds a memory pool beside it), the **direct** call's
   samples (what a model calling the backend from Python pays: host work and launches included)
   and, for CUDA points that can be captured (forward, forward+backward and decode), the
   **CUDA-graph replay**'s samples (the device's work alone, as an engine or a training loop that
   captures its step pays it). Sampling itself is :func:`attnperf.measure.measure_time`'s.
3. :func:`derived`: tokens/s, useful and executed TFLOP/s and the analyzer's predicted peak, from
   the median the record shows; the one place they are computed.

A point that cannot run ends in a record that says why (``unsupported``, ``wrong``, ``refused``,
``oom``, ``failed``); the caller goes on to the next point.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from attnperf.analysis.flops import forward_backward_flops, forward_flops
from attnperf.analysis.memory import min_bytes
from attnperf.backends import Backend, Runner, Unsupported, get_backend
from attnperf.benchgrid import BACKWARD, PointSpec
from attnperf.case import Case, make_inputs
from attnperf.correctness import GRADIENT_FACTOR, CheckResult, WrongResult, verified_runner
from attnperf.errors import error_line
from attnperf.graphs import graphed, graphed_step
from attnperf.machine import available_bytes
from attnperf.measure import Timing, ensure_warm, measure_peak, measure_time, time_calls
from attnperf.mechanisms import Mechanism, get_mechanism
from attnperf.records import TIMINGS, Record, Status
from attnperf.registry import fit

DIRECT, REPLAY = "direct", "replay"


@dataclass
class Point:
    """A checked point, ready to time: its direct call and, on demand, its CUDA-graph replay."""

    spec: PointSpec
    case: Case
    mechanism: Mechanism
    backend: Backend
    #: The direct call (a forward, a forward+backward step or a decode step), verified.
    call: Callable[[], object]
    checked: CheckResult
    #: The call's ``q, k, v`` (a forward+backward step accumulates into their ``.grad``).
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = field(repr=False)
    _replay: tuple[Callable[[], object] | None, str | None] | None = field(default=None, repr=False)

    def replay(self) -> tuple[Callable[[], object] | None, str | None]:
        """(the call's CUDA-graph replay, None) or (None, why not), captured at the first request so
        that a point measured for its memory alone never holds a graph's pool beside the call.

        Only CUDA calls are captured; a backend that launches on a stream of its own (ONNX
        Runtime) is not, since a capture on PyTorch's stream would miss its work; a replay whose
        output (or gradients) differ from the checked direct call's is not timed."""
        if self._replay is None:
            self._replay = self._capture()
        return self._replay

    def _capture(self) -> tuple[Callable[[], object] | None, str | None]:
        if torch.device(self.case.device).type != "cuda":
            return None, "CUDA graphs need a CUDA device"
        if self.backend.own_cuda_stream:
            return None, "runs on a CUDA stream of its own, which a graph on PyTorch's stream does not capture"
        try:
            return self.graph_of(self.call), None
        except (Unsupported, WrongResult) as exc:
            return None, str(exc)

    def graph_of(self, fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` (this point's call, or a slowed copy of it) captured and held to the direct call:
        a forward's output, a forward+backward step's gradients (bound widened as the check's)."""
        bound = self.checked.bound or self.backend.bound(self.case.dtype)
        if self.spec.mode == BACKWARD:
            with torch.enable_grad():
                return graphed_step(fn, self.inputs, self.case.device, GRADIENT_FACTOR * bound)
        with torch.no_grad():
            return graphed(fn, self.case.device, bound)  # type: ignore[arg-type]


def prepare(spec: PointSpec, *, checked: CheckResult | None = None) -> Point:
    """A checked point for ``spec`` (``checked``: a verdict this very code reached before).

    Raises ``NotImplementedError`` with the reason when the point cannot run here (asv's
    "skipped"): the backend's reasons, or a case that does not fit the mechanism. A wrong result
    raises :class:`~attnperf.correctness.WrongResult`.
    """
    case, reason = fit(spec)
    if case is None:
        raise NotImplementedError(reason)
    mechanism, backend = get_mechanism(spec.mechanism), get_backend(spec.backend)
    inputs = make_inputs(case, requires_grad=spec.mode == BACKWARD, on_device=True)
    try:
        runner, result = verified_runner(mechanism, backend, case, requires_grad=spec.mode == BACKWARD,
                                         checked=checked, inputs=inputs)  # fmt: skip
    except Unsupported as exc:  # found only at run time (e.g. "No available kernel")
        raise NotImplementedError(str(exc)) from None
    call = _forward_backward(runner) if spec.mode == BACKWARD else runner
    return Point(spec, case, mechanism, backend, call, result, inputs)


def _forward_backward(runner: Runner) -> Callable[[], None]:
    grad = runner().detach().clone().normal_()

    def step() -> None:
        runner().backward(grad)  # gradients accumulate into q/k/v.grad: one cheap add per call

    return step


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` found for one point in this process."""

    first_call_s: float
    direct: Timing | None = None
    replay: Timing | None = None
    graph_reason: str | None = None
    peak_bytes: int | None = None
    peak_kind: str | None = None


def measure(
    point: Point, *, repeat: int, min_sample_s: float | None = None, timings: Sequence[str] = (DIRECT, REPLAY),
    memory: bool = True, number: int | None = None,
) -> Measurement:  # fmt: skip
    """Time and measure a prepared point (see the module text): first call, peak memory, then the
    ``timings`` asked for (``replay`` only where a CUDA graph can be captured). ``number`` fixes the
    calls per sample, as a collective call needs (every rank must make the same calls)."""
    device = point.case.device
    ensure_warm(device)  # before the first call, so that its time is not read on a cold device
    grad = torch.enable_grad() if point.spec.mode == BACKWARD else torch.no_grad()
    with grad:
        first_call = time_calls(point.call, device, 1)  # compilation and lazy initialisation land here
        peak, kind = None, None
        if memory:
            peak, kind = measure_peak(point.call, device, own_cpu_allocator=point.backend.own_cpu_allocator,
                                      own_cuda_allocator=point.backend.own_cuda_allocator)  # fmt: skip
        direct = None
        if DIRECT in timings:
            direct = measure_time(point.call, device, repeat=repeat, min_sample_s=min_sample_s, number=number)
        replay, reason = None, None
        if REPLAY in timings:
            replayed, reason = point.replay()
            if replayed is not None:
                replay = measure_time(replayed, device, repeat=repeat, min_sample_s=min_sample_s)
    return Measurement(first_call, direct, replay, reason, peak, kind)


def timing_fields(direct: Timing | None, replay: Timing | None) -> dict[str, Any]:
    """A record's fields for the direct and replay timings measured (those not measured left unset)."""
    fields: dict[str, Any] = {}
    for kind, timing in ((DIRECT, direct), (REPLAY, replay)):
        if timing is not None:
            median, samples, number = TIMINGS[kind]
            fields |= {median: timing.median, samples: tuple(timing.samples), number: timing.number}
    return fields


def derived(spec: PointSpec, case: Case, median_s: float | None) -> dict[str, Any]:
    """Tokens/s, useful and executed TFLOP/s of the point's call at ``median_s`` (a forward, or a
    forward+backward step) and the analyzer's predicted peak of the forward; ``model_reason`` where
    the analyzer has no model for the pair. Derived numbers are for tables and graphs, never a gate."""
    figures: dict[str, Any] = {}
    mechanism, backend = get_mechanism(spec.mechanism), get_backend(spec.backend)
    try:
        figures["predicted_peak_bytes"] = backend.predicted_peak_bytes(mechanism, case)
        if median_s:
            figures["tokens_per_s"] = case.batch * case.q_len / median_s
            count = forward_backward_flops if spec.mode == BACKWARD else forward_flops
            flops = count(mechanism, backend, case)
            figures["useful_tflops"] = flops.useful / median_s / 1e12
            figures["executed_tflops"] = flops.executed / median_s / 1e12
    except (KeyError, ValueError, NotImplementedError) as exc:  # no model for this pair: the tables go without
        figures["model_reason"] = error_line(exc)
    return figures


class CheckCache(Protocol):
    """Correctness verdicts a runner keeps for its later processes (:class:`attnperf.batchrun.VerdictCache`)."""

    def get(self, spec: PointSpec) -> CheckResult | None: ...

    def put(self, spec: PointSpec, result: CheckResult) -> None: ...


def measure_point(
    spec: PointSpec, *, repeat: int, min_sample_s: float | None = None, timings: Sequence[str] = (DIRECT,),
    checks: CheckCache | None = None, then: Callable[[Point, Record], list[Record]] | None = None,
) -> list[Record]:  # fmt: skip
    """Check, refuse, time and measure one point: its :class:`Record` (first), which always says
    what happened, and whatever ``then(point, record)`` adds for an ok point (a trial's injected
    measurements). ``checks``: verdicts to reuse and to keep (the batch runner's)."""
    cached = checks.get(spec) if checks is not None else None
    reused = True if cached is not None else None
    case, reason = fit(spec)
    if case is None:
        if checks is not None and cached is None:
            checks.put(spec, CheckResult(spec.mechanism, spec.backend, "", Status.UNSUPPORTED, reason=reason))
        return [Record(spec, Status.UNSUPPORTED, case=intended_shape(spec), reason=reason, check_cached=reused)]
    head: dict[str, Any] = {"case_id": case.id, "case": case.as_dict()}
    refusal = memory_refusal(spec, case)
    if refusal is not None:
        return [
            Record(
                spec,
                Status.REFUSED,
                **head,
                reason=refusal.reason,
                needed_bytes=refusal.needed_bytes,
                predicted_peak_bytes=refusal.predicted_peak_bytes,
                available_bytes=refusal.available_bytes,
            )
        ]
    started = time.perf_counter()
    try:
        try:
            point = prepare(spec, checked=cached)
        except (NotImplementedError, WrongResult) as exc:
            status = Status.UNSUPPORTED if isinstance(exc, NotImplementedError) else Status.WRONG
            if checks is not None and cached is None:
                checks.put(spec, CheckResult(spec.mechanism, spec.backend, case.id, status, reason=str(exc)))
            return [Record(spec, status, **head, reason=str(exc), check_cached=reused)]
        if checks is not None and cached is None:
            checks.put(spec, point.checked)
        head |= {
            "rel_error": point.checked.error,
            "bound": point.checked.bound,
            "check_cached": reused,
        }
        check_s = time.perf_counter() - started
        m = measure(point, repeat=repeat, min_sample_s=min_sample_s, timings=timings)
        record = Record(
            spec, Status.OK, **head, first_call_s=m.first_call_s, peak_bytes=m.peak_bytes, peak_kind=m.peak_kind,
            **timing_fields(m.direct, m.replay),
            graph_reason=m.graph_reason if REPLAY in timings and torch.device(case.device).type == "cuda" else None,
            seconds={"check": check_s, "measure": time.perf_counter() - started - check_s},
        )  # fmt: skip
        record = dataclasses.replace(
            record,
            kernel=getattr(point.call, "kernel", None) or point.checked.kernel,
            **derived(spec, case, record.shown_s),
        )
        return [record, *(then(point, record) if then is not None else [])]
    except Exception as exc:  # out of memory, or any other error of the backend: recorded, and the run goes on
        status, why = failure(exc, case.device)
        return [Record(spec, status, **head, reason=why)]


def intended_shape(spec: PointSpec) -> dict[str, Any]:
    """What a point was asked to measure: the grid's shape and mechanism options. The ``case`` of a
    record whose case could not be built or does not run here: a resumed sweep compares it as it
    compares an ok record's case."""
    shape = {"batch": spec.batch, "heads": spec.heads, "head_dim": spec.head_dim, "dtype": spec.dtype,
             "device": spec.device}  # fmt: skip
    return shape | dict(spec.options)


@dataclass(frozen=True)
class Refusal:
    """Why a point is not run: the memory it needs against what the device has free."""

    reason: str
    #: Inputs, output and the backend's predicted peak: what the call needs free.
    needed_bytes: int
    #: The backend's predicted peak extra memory alone (what ``analyze`` calls the prediction).
    predicted_peak_bytes: int
    available_bytes: int


def memory_refusal(spec: PointSpec, case: Case) -> Refusal | None:
    """The refusal when the point's inputs, output and predicted peak exceed the memory the device
    has free now; None when it fits or nothing is known. The prediction is the forward's: for a
    forward+backward step a lower bound (the analyzer has no backward model), so a step whose
    forward fits and whose backward does not ends as ``oom`` instead, and the run goes on."""
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


def free_memory(device: str, *, between_points: bool = False) -> None:
    """Collect garbage and give the allocator's cached blocks back.

    ``between_points``: called after a point, when nothing of it is referenced any more. What
    survives that collection is long-lived (modules, compiled kernels, caches), and
    ``gc.freeze()`` moves it out of every later collection, which otherwise walks every object of
    the process at each point (most of a batch process's overhead per point with the GPU libraries
    loaded). A cycle frozen while alive is never collected, hence only between points (not in an
    exception handler, whose traceback still holds the point)."""
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
    """The status and reason of a point whose backend raised ``exc`` (every runner goes on after
    it): ``oom`` (memory freed for the next point) or ``failed``. An error that poisons the device
    is raised again instead (:func:`poisons_device`)."""
    if poisons_device(exc):
        raise exc
    if is_oom(exc):
        free_memory(device)
        return Status.OOM, error_line(exc)
    return Status.FAILED, error_line(exc)
