"""asv suites: thin — they name grid points; attnperf checks, prepares and measures them.

Parameters (backend first, as scipy and pandas order theirs): backend × variant × seq_len ×
head_dim × dtype, from :func:`attnperf.benchgrid.active_grid` (CPU grid by default, GPU grid
when CUDA is visible; ``ATTNPERF_*`` environment variables pick subsets). A combination the
backend cannot run is skipped (``NotImplementedError`` in ``setup``) with the reason.

These names and parameters are also what :mod:`attnperf.history` records from the batch runner
(``nox -s bench``), so results of ``asv run`` and of the batch runner share one history; the
benchmark names and what they hold are listed once, in ``attnperf.benchgrid.BENCHMARKS``.

Sample counts: asv's Mann–Whitney test needs 7+ samples a side to ever fire (6 a side cannot
reach p < 0.002), so ``rounds = 2`` × ``repeat`` ≥ 7 gives at least 14 per commit.
"""

from attnperf.analysis import forward_flops
from attnperf.backends import get_backend
from attnperf.bench import BACKWARD, FORWARD, prepare_point
from attnperf.benchgrid import active_grid
from attnperf.measure import measure_peak, measure_time, synchronized_clock
from attnperf.mechanisms import get_mechanism

GRID = active_grid()
PARAMS = [list(GRID.backends), list(GRID.variants), list(GRID.seq_lens), list(GRID.head_dims), list(GRID.dtypes)]
PARAM_NAMES = ["backend", "variant", "seq_len", "head_dim", "dtype"]


class _Suite:
    params = PARAMS
    param_names = PARAM_NAMES
    timer = staticmethod(synchronized_clock)
    rounds = 2
    repeat = (7, 10, 20.0)
    warmup_time = 0.05
    timeout = 600
    mode = FORWARD
    timed = True  # prepare the timed runner (a CUDA graph's replay on a GPU)

    def setup(self, backend, variant, seq_len, head_dim, dtype):
        self.point = prepare_point(backend, variant, seq_len, head_dim, dtype, mode=self.mode, timed=self.timed)


class TimeForward(_Suite):
    """Forward latency: on CUDA the call's CUDA-graph replay where it can be captured (the host's
    launch jitter between processes hid small slowdowns of sub-millisecond points), else the call."""

    def time_forward(self, *params):
        self.point.run()


class TimeForwardBackward(_Suite):
    """Forward plus backward latency (skipped where a backend is forward-only); gradients are
    checked against the float64 reference's before it is timed."""

    mode = BACKWARD

    def time_forward_backward(self, *params):
        self.point.run()


class TrackPeakMemory(_Suite):
    """Peak memory of one forward alone, beyond its inputs (bytes): the CUDA allocator's peak on a
    GPU (exact), RSS growth on the CPU. Not asv's ``peakmem_*``, which reads the process's lifetime
    peak and so whatever ``setup`` allocated (the float64 check) rather than the forward."""

    unit = "bytes"
    timed = False  # no CUDA graph's memory pool beside the call it measures

    def track_peak_bytes(self, *params):
        point = self.point
        backend = get_backend(point.backend)
        peak, kind = measure_peak(point.call, point.case.device, own_cpu_allocator=backend.own_cpu_allocator,
                                  own_cuda_allocator=backend.own_cuda_allocator)  # fmt: skip
        if peak is None:
            raise NotImplementedError(kind)
        return peak

    def track_predicted_peak_bytes(self, *params):
        """The analyzer's prediction for the same point, to read beside the measured one."""
        point = self.point
        return get_backend(point.backend).predicted_peak_bytes(get_mechanism(point.mechanism), point.case)


class TrackTFLOPs(_Suite):
    """Achieved TFLOP/s: the analyzer's useful FLOPs over the median forward time.

    asv reads every benchmark as smaller-is-better, so a drop here shows as an improvement in
    ``asv compare``: it is for the graphs, and the regression check never gates on it.
    """

    unit = "TFLOP/s"

    def track_tflops(self, *params):
        point = self.point
        timing = measure_time(point.run, point.case.device, repeat=7)
        flops = forward_flops(get_mechanism(point.mechanism), get_backend(point.backend), point.case)
        tflops = flops.useful / timing.median / 1e12
        return float(f"{tflops:.4g}")  # four digits: asv prints the float as returned


class TimeDecode:
    """One decode step: a single new token against a KV cache of ``cache_len`` tokens (on CUDA a
    CUDA-graph replay where it can be captured, as a serving engine runs its step)."""

    params = [list(GRID.backends), list(GRID.decode_lens), list(GRID.head_dims), list(GRID.dtypes)]
    param_names = ["backend", "cache_len", "head_dim", "dtype"]
    timer = staticmethod(synchronized_clock)
    rounds = 2
    repeat = (7, 10, 20.0)
    warmup_time = 0.05

    def setup(self, backend, cache_len, head_dim, dtype):
        self.point = prepare_point(backend, "decode", cache_len, head_dim, dtype)

    def time_decode_step(self, *params):
        self.point.run()
