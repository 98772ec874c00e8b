"""Timing and memory, one module, so asv, pytest-benchmark and the CLI measure the same way.

* GPU work is asynchronous: every sample synchronizes the device before reading the host clock.
* One warm-up :class:`Policy` per kind of device, for every entry point (asv, the batch runner,
  the sweep, the tuner, pytest-benchmark): the device is kept busy once per process (an idle GPU
  sits at a low clock and needs load to reach its boost; a fresh CPU process reads slow at its
  first point: thread pools, page faults), then each point is called for a short while before its
  samples, which keeps compilation (flex, flash-attn-4's JIT) and first-call caches out of them,
  and then timed in batches until its time stops moving (:func:`settle`).
* Each sample times enough back-to-back calls to last ``min_sample_s`` (as ``timeit``'s
  autorange, sized from the settled time), and the median of the samples is reported with all
  samples kept.
* The warm-up and the samples are taken with a steady host (:func:`steady_host`): Python's
  garbage collector off (as ``timeit`` does), and, on CUDA, the launching thread pinned to one
  fixed core, the one its warm-up ran on. A GPU call
  timed as called is bound by the host's launches at short lengths, so between-process variation
  of the host (a collection landing in one sample, the scheduler moving the thread between cores
  of different clocks) is variation of the measurement.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Policy:
    """How every entry point warms up and samples on one kind of device."""

    device_warmup_s: float  #: once per process, before its first point (clocks, thread pools)
    point_warmup_s: float  #: before each point's samples (compilation, first-call caches)
    min_sample_s: float  #: a sample times enough calls to last this long
    settle_s: float  #: no batch of :func:`settle` starts after this long


POLICIES: dict[str, Policy] = {"cuda": Policy(1.0, 0.05, 0.01, 0.25), "cpu": Policy(1.0, 0.1, 0.05, 0.5)}
#: :func:`settle` stops once this many batches in a row agree within :data:`SETTLED`.
SETTLE_RUN = 3
SETTLED = 0.05
_WARMED: set[str] = set()


def policy(device: str | torch.device) -> Policy:
    return POLICIES.get(torch.device(device).type, POLICIES["cpu"])


def ensure_warm(device: str | torch.device) -> None:
    """Warm the device once in this process (:attr:`Policy.device_warmup_s`)."""
    kind = torch.device(device).type
    if kind not in _WARMED:
        warm_device(device, policy(device).device_warmup_s)
        _WARMED.add(kind)


def warm_point(fn: Callable[[], object], device: str | torch.device) -> float:
    """The policy's warm-up of one point (the device's first): returns the last call's time."""
    ensure_warm(device)
    return warm_up(fn, device, policy(device).point_warmup_s)


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and every sample (each the mean of ``number`` calls)."""

    median: float
    samples: list[float] = field(default_factory=list)
    number: int = 1

    @property
    def spread(self) -> float:
        """Relative interquartile range of the samples (0 with fewer than 4 samples)."""
        if len(self.samples) < 4:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return (q3 - q1) / self.median


def time_calls(fn: Callable[[], object], device: str | torch.device, number: int) -> float:
    """Seconds per call of ``number`` back-to-back calls, device synchronized at both ends."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / number


def warm_up(fn: Callable[[], object], device: str | torch.device, seconds: float) -> float:
    """Call ``fn`` for at least ``seconds`` (and at least twice); return the last call's time."""
    deadline = time.perf_counter() + seconds
    last = time_calls(fn, device, 1)
    last = time_calls(fn, device, 1)
    while time.perf_counter() < deadline:
        last = time_calls(fn, device, 1)
    return last


def measure_time(
    fn: Callable[[], object],
    device: str | torch.device,
    *,
    repeat: int = 7,
    min_sample_s: float | None = None,
    number: int | None = None,
) -> Timing:
    """Median seconds per call of ``fn`` over ``repeat`` samples, after the policy's warm-up.

    ``min_sample_s`` overrides the policy's (0: every sample is one call, as a latency
    percentile needs). ``number`` fixes the calls: two warm-up calls, then ``number`` per sample.
    A collective ``fn`` (context parallelism) needs that, since every rank must make the same
    calls, which a warm-up by the clock and a per-rank calibration would not give.
    """
    with steady_host(device):  # warmed where it is sampled: the core it is pinned to starts cold
        if number is not None:
            ensure_warm(device)
            warm_up(fn, device, 0.0)
        else:
            one = max(warm_point(fn, device), 1e-9)
            if min_sample_s is None:
                min_sample_s = policy(device).min_sample_s
            settled = settle(fn, device, max(1, int(min_sample_s / one)), policy(device).settle_s)
            number = max(1, int(min_sample_s / max(settled, 1e-9)))
        samples = [time_calls(fn, device, number) for _ in range(repeat)]
    return Timing(median=statistics.median(samples), samples=samples, number=number)


def settle(fn: Callable[[], object], device: str | torch.device, number: int, limit_s: float) -> float:
    """Time batches of ``number`` calls until :data:`SETTLE_RUN` of them in a row agree within
    :data:`SETTLED`, starting none after ``limit_s``; returns the last batches' median seconds per
    call. (With ``min_sample_s`` 0, as latency percentiles sample single calls, it is a warm-up
    until single calls agree.)

    A warm-up by the clock can end while a call is still getting faster: a host that was idle ramps
    up over tens of milliseconds, and a device left idle between points clocks down. Samples taken
    then fall across the samples of one process and, worse, differ between processes, which is the
    spread the check must see through. The calls per sample are sized from the settled time, not from
    one warm call, so that every process takes the same number where the call's time is the same."""
    deadline = time.perf_counter() + limit_s
    last: collections.deque[float] = collections.deque(maxlen=SETTLE_RUN)
    while True:
        last.append(time_calls(fn, device, number))
        steady = len(last) == SETTLE_RUN and max(last) <= (1 + SETTLED) * min(last)
        if steady or time.perf_counter() > deadline:
            return statistics.median(last)


@contextlib.contextmanager
def steady_host(device: str | torch.device) -> Iterator[None]:
    """The host held still while samples are taken: no garbage collection, and on CUDA the calling
    thread on one fixed core (:func:`steady_core`).

    Only the calling thread is pinned (Linux's ``sched_setaffinity(0, …)`` sets the caller's), only while
    a point is warmed and sampled: threads started before keep every core (a point's first call, which
    starts autograd's and compilation's threads, is made before :func:`measure_time`), and on the CPU,
    where the thread pool is the computation, nothing is pinned. A forward+backward step's backward is
    launched by autograd's own thread for the device, which is not pinned: the steady host covers its
    forward's launches only.
    Where affinity cannot be set (not Linux) the samples are taken as they are."""
    collecting = gc.isenabled()
    gc.disable()
    before: set[int] | None = None
    if torch.device(device).type == "cuda" and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            before = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {steady_core(before)})
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)
        if collecting:
            gc.enable()


def steady_core(cores: set[int]) -> int:
    """The core :func:`steady_host` pins to: the highest of ``cores`` (the lowest usually serves
    interrupts), counted down by the process's ``LOCAL_RANK``, so that the ranks of one host
    (``torchrun``, context parallelism), which share one affinity mask, are not all pinned to one
    core and do not launch in turn."""
    try:
        rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        rank = 0
    ordered = sorted(cores, reverse=True)
    return ordered[rank % len(ordered)]


def warm_device(device: str | torch.device, seconds: float) -> None:
    """Keep the device busy with matrix products for ``seconds`` before the first timed sample of
    a process: a GPU's clocks boost under load, and on the CPU the first point of a fresh process
    otherwise read up to 3× slow (thread pools, page faults). A process measuring many points
    warms the device once instead of once per point."""
    cuda = torch.device(device).type == "cuda"
    size, dtype = (4096, torch.bfloat16) if cuda else (512, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(10):
            a @ a
        synchronize(device)


def spinner(device: str | torch.device) -> Callable[[float], None]:
    """``spin(seconds)``: added work of a known duration, to inject a slowdown in trials.

    On a GPU a ``torch.cuda._sleep`` kernel (queued after the call it slows, as a slower kernel
    would be) with its cycle count calibrated here against the clock; on the CPU a busy wait.
    """
    if torch.device(device).type != "cuda":

        def busy(seconds: float) -> None:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        return busy
    cycles = 2_000_000
    torch.cuda._sleep(cycles)  # load the kernel
    per_second = cycles / statistics.median(time_calls(lambda: torch.cuda._sleep(cycles), device, 5) for _ in range(5))

    def sleep(seconds: float) -> None:
        torch.cuda._sleep(max(1, int(seconds * per_second)))

    return sleep


@dataclass(frozen=True)
class SpinCost:
    """What ``spin(x)`` adds to a call queued before it: ``fixed_s + slope · x`` (a fit at two sizes)."""

    fixed_s: float  #: what the shortest spin adds (its launch gap and minimal run); a few ns under 0 is noise
    slope: float  #: added seconds per requested second

    def request(self, added_s: float) -> float | None:
        """The ``x`` for which ``spin(x)`` adds ``added_s``; None below the shortest spin's cost."""
        fixed = max(0.0, self.fixed_s)
        return None if added_s < fixed else (added_s - fixed) / self.slope


def spin_cost(
    spin: Callable[[float], None], device: str | torch.device, *, busy_s: float = 50e-6, long_s: float = 40e-6,
    number: int = 40, repeat: int = 5,
) -> SpinCost:  # fmt: skip
    """Fit what a spin adds behind ``busy_s`` of queued work (a spin itself), just before it is used.

    A slowdown is injected after a call that keeps the device busy, so the spin's launch overlaps
    that call: back-to-back shortest spins are launch-bound and overstate what one adds there (the
    injected sizes came out short when sized from them). Busy work,
    busy work plus the shortest spin, and busy work plus a ``long_s`` spin are timed alternately,
    ``repeat`` times each; their medians give the fixed cost and the slope. The busy work is a
    spin, not the slowed call (whose own noise, read as a difference of medians of long calls,
    became the cost before): behind heavier kernels the spin may add a little else, which is why
    the trials report the size measured against the call."""
    variants = {"busy": lambda: spin(busy_s), "short": lambda: (spin(busy_s), spin(0.0)),
                "long": lambda: (spin(busy_s), spin(long_s))}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            times[name].append(time_calls(fn, device, number))
    busy, short, long = (statistics.median(times[name]) for name in variants)
    slope, fixed = (long - short) / long_s, short - busy
    # A fit this far off measured something else. A fixed part under 0 is the medians' noise (on a
    # CPU, 10 µs in 1 ms samples); requests take it as 0.
    if not 0.5 < slope < 2.0 or not -busy_s < fixed < busy_s:
        raise RuntimeError(f"the spin's cost could not be fitted: the shortest spin added {fixed * 1e6:.2f} µs "
                           f"and {long_s * 1e6:g} µs requested {(long - short) * 1e6:.2f} µs more")  # fmt: skip
    return SpinCost(fixed_s=fixed, slope=slope)


def measure_cuda_peak(fn: Callable[[], object], device: str | torch.device) -> int:
    """Peak CUDA memory allocated by one call of ``fn`` beyond what was allocated before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def synchronized_clock() -> float:
    """``time.perf_counter()`` after waiting for queued CUDA work: asv's ``timer`` for GPU runs.

    Synchronizes only when this process has already initialized CUDA, so it never creates a
    CUDA context itself (CPU runs and asv's forking server stay CUDA-free).
    """
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Hand the allocator's free pages back to the OS (glibc ``malloc_trim``), so that memory a
    call reuses from earlier calls is faulted in again and shows in RSS. Timing is untouched:
    only the memory measurement calls this. Without glibc nothing changes and RSS may read low."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_cpu_peak_rss(fn: Callable[[], object], interval_s: float = 0.0005) -> int:
    """Peak growth of the process's resident memory during one call of ``fn`` (Linux).

    A sampling thread reads ``/proc/self/statm`` every ``interval_s``; short peaks between
    samples are missed. Free heap pages are released first (:func:`_release_free_heap`), so RSS
    growth follows the memory the call touches, whether newly mapped or reused.
    """
    _release_free_heap()
    baseline = _rss_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak, _rss_bytes()) - baseline


def measure_cpu_allocated_peak(fn: Callable[[], object]) -> int:
    """Peak of the bytes PyTorch's CPU allocator holds beyond what it held before one call of
    ``fn``: the CPU counterpart of ``torch.cuda.max_memory_allocated``, exact and independent of
    glibc, from the profiler's memory events (slow: for checking memory models, not for timing).

    On a GPU the same events agree with ``max_memory_allocated`` to the byte.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def measure_peak(
    fn: Callable[[], object],
    device: str | torch.device,
    *,
    own_cpu_allocator: bool = False,
    own_cuda_allocator: bool = False,
) -> tuple[int | None, str]:
    """Peak extra memory of one call and what was measured: the CUDA allocator's peak on a GPU,
    RSS growth on the CPU, or nothing (``None``) for a backend whose own arena hides it."""
    if torch.device(device).type == "cuda":
        if own_cuda_allocator:
            return None, "not measured: the backend keeps GPU memory in its own arena"
        return measure_cuda_peak(fn, device), "cuda-allocated"
    if own_cpu_allocator:
        return None, "not measured: the backend keeps CPU memory in its own arena"
    return measure_cpu_peak_rss(fn), "cpu-rss-growth"
