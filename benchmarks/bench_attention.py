"""asv suites: thin — they name grid points; attnperf checks, prepares and measures them.

Parameters (backend first, as scipy and pandas order theirs): backend × variant × seq_len ×
head_dim × dtype, from :func:`attnperf.benchgrid.active_grid` (CPU grid by default, GPU grid
when CUDA is visible; ``ATTNPERF_*`` environment variables pick subsets). A combination the
backend cannot run is skipped (``NotImplementedError`` in ``setup``) with the reason.

Every point is prepared by :func:`attnperf.point.prepare` (checked against the float64 reference,
then warmed), and the figures that are not asv's own timings come from
:func:`attnperf.point.measure`: the same closures and the same measuring function as the sweep,
the batch runner and the regression check. These names and parameters are also what
:mod:`attnperf.asvhistory` records from the batch runner (``nox -s bench``), listed once in
``attnperf.benchgrid.BENCHMARKS``.

Sample counts: asv's Mann–Whitney test needs 7+ samples a side to ever fire (6 a side cannot
reach p < 0.002), so ``rounds = 2`` × ``repeat`` ≥ 7 gives at least 14 per commit.
"""

from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, active_grid
from attnperf.measure import synchronized_clock, warm_point
from attnperf.point import DIRECT, derived, measure, prepare

GRID = active_grid()
PARAMS = [list(GRID.backends), list(GRID.variants), list(GRID.seq_lens), list(GRID.head_dims), list(GRID.dtypes)]
PARAM_NAMES = ["backend", "variant", "seq_len", "head_dim", "dtype"]
_PREPARED = {}


def prepared(backend, variant, seq_len, head_dim, dtype, mode=FORWARD):
    """The checked, warmed point, once per process (asv re-runs ``setup`` before every sample)."""
    spec = GRID.spec(backend, variant, seq_len, mode=mode, head_dim=head_dim, dtype=dtype)
    if spec not in _PREPARED:
        point = prepare(spec)
        warm_point(point.call, point.case.device)
        _PREPARED[spec] = point
    return _PREPARED[spec]


def replayed(point):
    """The point's CUDA-graph replay, warmed; skipped (with why) where there is none."""
    replay, reason = point.replay()
    if replay is None:
        raise NotImplementedError(reason)
    warm_point(replay, point.case.device)
    return replay


def peak_bytes(point):
    m = measure(point, repeat=3, timings=(), memory=True)
    if m.peak_bytes is None:
        raise NotImplementedError(m.peak_kind)
    return m.peak_bytes


class _Suite:
    params = PARAMS
    param_names = PARAM_NAMES
    timer = staticmethod(synchronized_clock)
    rounds = 2
    repeat = (7, 10, 20.0)
    warmup_time = 0.05
    timeout = 600
    mode = FORWARD

    def setup(self, backend, variant, seq_len, head_dim, dtype):
        self.point = prepared(backend, variant, seq_len, head_dim, dtype, self.mode)


class TimeForward(_Suite):
    """Forward latency as called: what a model calling the backend from Python pays."""

    def time_forward(self, *params):
        self.point.call()


class TimeForwardReplay(_Suite):
    """Forward latency as a CUDA-graph replay (the device's work alone); skipped off CUDA."""

    def setup(self, *params):
        super().setup(*params)
        self.replay = replayed(self.point)

    def time_forward_replay(self, *params):
        self.replay()


class TimeForwardBackward(_Suite):
    """Forward plus backward latency (skipped where a backend is forward-only); gradients are
    checked against the float64 reference's before it is timed."""

    mode = BACKWARD

    def time_forward_backward(self, *params):
        self.point.call()

    def track_peak_bytes_backward(self, *params):
        """Peak memory of one forward+backward step beyond its inputs (bytes)."""
        return peak_bytes(self.point)

    track_peak_bytes_backward.unit = "bytes"


class TimeForwardBackwardReplay(_Suite):
    """A forward+backward step as a CUDA-graph replay (a training loop that captures its step);
    the replay's gradients are held to the direct step's before it is timed. Skipped off CUDA."""

    mode = BACKWARD

    def setup(self, *params):
        super().setup(*params)
        self.replay = replayed(self.point)

    def time_forward_backward_replay(self, *params):
        self.replay()


class TrackPeakMemory(_Suite):
    """Peak memory of one forward alone, beyond its inputs (bytes): the CUDA allocator's peak on a
    GPU (exact), RSS growth on the CPU. Not asv's ``peakmem_*``, which reads the process's lifetime
    peak and so whatever ``setup`` allocated (the float64 check) rather than the forward."""

    unit = "bytes"

    def track_peak_bytes(self, *params):
        return peak_bytes(self.point)

    def track_predicted_peak_bytes(self, *params):
        """The analyzer's prediction for the same point, to read beside the measured one."""
        return derived(self.point.spec, self.point.case, None)["predicted_peak_bytes"]


class TrackTFLOPs(_Suite):
    """Achieved TFLOP/s: the analyzer's useful FLOPs over the median forward time as called.

    asv reads every benchmark as smaller-is-better, so a drop here shows as an improvement in
    ``asv compare``: it is for the graphs, and the regression check never gates on it.
    """

    unit = "TFLOP/s"

    def track_tflops(self, *params):
        m = measure(self.point, repeat=7, timings=(DIRECT,), memory=False)
        tflops = derived(self.point.spec, self.point.case, m.direct.median)["useful_tflops"]
        return float(f"{tflops:.4g}")  # four digits: asv prints the float as returned


class TrackFirstCall(_Suite):
    """Seconds of a point's first call in a fresh process (compilation, autotuning): for the graphs."""

    unit = "seconds"

    def setup(self, backend, variant, seq_len, head_dim, dtype):
        spec = GRID.spec(backend, variant, seq_len, mode=self.mode, head_dim=head_dim, dtype=dtype)
        self.point = prepare(spec)  # not warmed: the first call is what is measured

    def track_first_call_s(self, *params):
        return measure(self.point, repeat=3, timings=(), memory=False).first_call_s


class _Decode:
    """One decode step: a single new token against a KV cache of ``cache_len`` tokens."""

    params = [list(GRID.backends), list(GRID.decode_lens), list(GRID.head_dims), list(GRID.dtypes)]
    param_names = ["backend", "cache_len", "head_dim", "dtype"]
    timer = staticmethod(synchronized_clock)
    rounds = 2
    repeat = (7, 10, 20.0)
    warmup_time = 0.05

    def setup(self, backend, cache_len, head_dim, dtype):
        self.point = prepared(backend, "decode", cache_len, head_dim, dtype, DECODE)


class TimeDecode(_Decode):
    """A decode step as called."""

    def time_decode_step(self, *params):
        self.point.call()

    def track_peak_bytes_decode(self, *params):
        """Peak memory of one decode step beyond its inputs (bytes)."""
        return peak_bytes(self.point)

    track_peak_bytes_decode.unit = "bytes"


class TimeDecodeReplay(_Decode):
    """One decode step as a CUDA-graph replay, as a serving engine that captures its step runs it."""

    def setup(self, *params):
        super().setup(*params)
        self.replay = replayed(self.point)

    def time_decode_step_replay(self, *params):
        self.replay()
