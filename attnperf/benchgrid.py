"""The grid: what gets measured, for every entry point (asv, the batch runner and the PR check,
``attnperf sweep`` / ``check`` / ``analyze`` / ``tune``, pytest-benchmark).

A :class:`Grid` names backends × variants × lengths × head dims × dtypes × batch sizes on one
device, with mechanism options. Its :meth:`Grid.points` are what the benchmark history measures:
a forward point per combination, a forward+backward point at ``backward_seq_lens``, and a decode
step per ``decode_lens``; :meth:`Grid.sweep_points` are a sweep's points. Each
point carries the asv benchmark names it feeds (``bench_attention.TimeForward.time_forward``
with the same parameters), so measurements made by :mod:`attnperf.batch` land in the same asv
history as ``asv run`` would write.

Four grids:

=================  ===================================================================
``cpu``            the main job on a CPU machine (``nox -s bench``): three complexity classes
``gpu``            the main-branch history on a GPU: every GPU backend, 512 → 16k tokens
``pr-cpu``         the pull-request check's CPU counterpart (what CI's end-to-end test runs)
``pr-gpu``         the pull-request check on the GPU runner: every GPU backend and every
                   mechanism class at two lengths, bf16 — sized to finish in minutes
=================  ===================================================================

Environment variables pick subsets without editing code (comma-separated lists):

=====================  ====================================================
``ATTNPERF_GRID``      a grid name above (default: ``gpu`` when CUDA is visible, else ``cpu``)
``ATTNPERF_BACKENDS``  backends, e.g. ``eager,flex``
``ATTNPERF_VARIANTS``  variants, e.g. ``causal,sliding_window``
``ATTNPERF_SEQ_LENS``  sequence lengths, e.g. ``1024,4096``
``ATTNPERF_HEAD_DIMS`` head dims (GPU grid default ``128``; ``64,128`` for both)
``ATTNPERF_DTYPES``    dtypes (GPU grid default ``bfloat16``)
``ATTNPERF_DECODE_LENS`` KV-cache lengths of the decode step
=====================  ====================================================

CUDA is never initialized at import time: asv forks benchmark processes from a server that
imported this module, and a parent with a CUDA context breaks every child. The GPU check uses
NVML (``PYTORCH_NVML_BASED_CUDA_CHECK``), which is fork-safe.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from attnperf.case import Case
from attnperf.catalog import get_variant
from attnperf.errors import UsageError

FORWARD, BACKWARD, DECODE = "forward", "forward+backward", "decode"
#: The modes a sweep measures in (decode steps are the history's and the batch runner's).
SWEEP_MODES = (FORWARD, BACKWARD)
SUITE = "bench_attention"

#: The asv benchmarks one point feeds, by mode: (asv name, which figure of the point's record it
#: holds, whether the regression check gates on it). The first of each mode names the point's key.
#: Times (the direct call and, on CUDA, the CUDA-graph replay) and measured peak memory gate;
#: derived numbers (TFLOP/s, the analyzer's prediction) and the first call's time are for the graphs.
BENCHMARKS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    FORWARD: (
        (f"{SUITE}.TimeForward.time_forward", "direct", True),
        (f"{SUITE}.TimeForwardReplay.time_forward_replay", "replay", True),
        (f"{SUITE}.TrackPeakMemory.track_peak_bytes", "memory", True),
        (f"{SUITE}.TrackPeakMemory.track_predicted_peak_bytes", "prediction", False),
        (f"{SUITE}.TrackTFLOPs.track_tflops", "tflops", False),
        (f"{SUITE}.TrackFirstCall.track_first_call_s", "first_call", False),
    ),
    BACKWARD: (
        (f"{SUITE}.TimeForwardBackward.time_forward_backward", "direct", True),
        (f"{SUITE}.TimeForwardBackwardReplay.time_forward_backward_replay", "replay", True),
        (f"{SUITE}.TimeForwardBackward.track_peak_bytes_backward", "memory", True),
    ),
    DECODE: (
        (f"{SUITE}.TimeDecode.time_decode_step", "direct", True),
        (f"{SUITE}.TimeDecodeReplay.time_decode_step_replay", "replay", True),
        (f"{SUITE}.TimeDecode.track_peak_bytes_decode", "memory", True),
    ),
}


@dataclass(frozen=True)
class PointSpec:
    """One thing to measure: a backend on a variant's case, in one mode."""

    backend: str
    variant: str
    seq_len: int
    head_dim: int
    dtype: str
    mode: str
    device: str
    heads: int
    batch: int = 1
    #: Mechanism options over the variant's own (``window``, ``top_k``, …), as sorted pairs.
    options: tuple[tuple[str, int], ...] = ()

    @property
    def asv_params(self) -> tuple[Any, ...]:
        """The asv parameter values of this point, in the suites' order."""
        if self.mode == DECODE:
            return (self.backend, self.seq_len, self.head_dim, self.dtype)
        return (self.backend, self.variant, self.seq_len, self.head_dim, self.dtype)

    @property
    def key(self) -> str:
        """A stable id, asv's spelling of the point: ``TimeForward('eager', 'causal', 256, 64, 'float32')``
        (a batch size other than 1 and mechanism options, which asv's suites do not have, are
        appended, so that two points that differ only there never share a key)."""
        suite = BENCHMARKS[self.mode][0][0].split(".")[1]
        batch = f"[batch={self.batch}]" if self.batch != 1 else ""
        options = "".join(f"[{name}={value}]" for name, value in self.options)
        return f"{suite}({', '.join(map(repr, self.asv_params))}){batch}{options}"

    @property
    def mechanism(self) -> str:
        return get_variant(self.variant_name).mechanism

    @property
    def variant_name(self) -> str:
        return "decode" if self.mode == DECODE else self.variant

    def case(self) -> Case:
        return get_variant(self.variant_name).case(
            self.seq_len, batch=self.batch, heads=self.heads, head_dim=self.head_dim, dtype=self.dtype,
            device=self.device, **dict(self.options),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The JSON form; empty options are left out, so that a base commit's older batch runner
        (whose ``PointSpec`` has no ``options``) reads the points file the check writes."""
        data = dataclasses.asdict(self)
        if not self.options:
            del data["options"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PointSpec:
        """The inverse of :meth:`as_dict` through JSON (which turns tuples into lists); fields a
        newer writer added are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known | {"options": tuple(tuple(pair) for pair in data.get("options", ()))})


@dataclass(frozen=True)
class Grid:
    backends: tuple[str, ...]
    variants: tuple[str, ...]
    seq_lens: tuple[int, ...]
    decode_lens: tuple[int, ...] = ()
    head_dims: tuple[int, ...] = (64,)
    dtypes: tuple[str, ...] = ("float32",)
    device: str = "cpu"
    heads: int = 8
    batches: tuple[int, ...] = (1,)
    #: Lengths at which forward+backward is measured (None: every length in ``seq_lens``).
    backward_seq_lens: tuple[int, ...] | None = None
    #: Mechanism options over each variant's own, as sorted pairs (``(("window", 32),)``).
    options: tuple[tuple[str, int], ...] = ()

    def spec(self, backend: str, variant: str, seq_len: int, *, mode: str = FORWARD, batch: int | None = None,
             head_dim: int | None = None, dtype: str | None = None) -> PointSpec:  # fmt: skip
        """The point of this grid (its first head dim, dtype and batch unless given)."""
        return PointSpec(
            backend, variant, seq_len, head_dim or self.head_dims[0], dtype or self.dtypes[0], mode,
            device=self.device, heads=self.heads, batch=batch or self.batches[0], options=self.options,
        )  # fmt: skip

    def points(self) -> list[PointSpec]:
        """Every point of the grid: forward, forward+backward (at ``backward_seq_lens``), decode."""
        backward_lens = self.seq_lens if self.backward_seq_lens is None else self.backward_seq_lens
        points = []
        for backend in self.backends:
            for head_dim in self.head_dims:
                for dtype in self.dtypes:
                    for batch in self.batches:
                        shape = {"head_dim": head_dim, "dtype": dtype, "batch": batch}
                        for variant in self.variants:
                            points += [self.spec(backend, variant, n, **shape) for n in self.seq_lens]
                            points += [self.spec(backend, variant, n, mode=BACKWARD, **shape) for n in backward_lens]
                        points += [self.spec(backend, "decode", n, mode=DECODE, **shape) for n in self.decode_lens]
        return points

    def sweep_points(self, mode: str = FORWARD) -> list[PointSpec]:
        """A sweep's points, all in one ``mode`` (forward, or forward+backward steps), the backends
        innermost, so that the baseline and the others at one point are measured next to each other."""
        if mode not in SWEEP_MODES:
            raise ValueError(f"a sweep's mode must be one of {SWEEP_MODES}, got {mode!r}")
        return [
            self.spec(backend, variant, seq_len, mode=mode, batch=batch, head_dim=head_dim, dtype=dtype)
            for head_dim in self.head_dims
            for dtype in self.dtypes
            for variant in self.variants
            for seq_len in self.seq_lens
            for batch in self.batches
            for backend in self.backends
        ]


#: asv runs every parameter combination in a process of its own (a few seconds each on a 2-core
#: machine, flex compiling in each), so the default CPU grid is kept to what shows the three
#: complexity classes; every other variant and backend is one environment variable away.
CPU_GRID = Grid(
    backends=("eager", "sdpa-flash", "flex", "tiled"),
    variants=("causal", "sliding_window", "linear_causal"),
    seq_lens=(256, 1024),
    decode_lens=(1024, 4096),
    head_dims=(64,),
    dtypes=("float32",),
    device="cpu",
    heads=8,
    backward_seq_lens=(256,),
)

GPU_GRID = Grid(
    backends=(
        "eager", "sdpa", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "tiled", "triton",
        "flash-attn4", "flash-attn3", "xformers", "fla", "onnxruntime-cuda", "onnxruntime-trt",
    ),
    variants=(
        "full", "causal", "gqa", "sliding_window", "strided", "bigbird", "topk", "linear_causal", "alibi", "rope",
    ),
    seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
    decode_lens=(4096, 32768, 131072),
    head_dims=(128,),
    dtypes=("bfloat16",),
    device="cuda",
    heads=16,
)  # fmt: skip

#: The pull-request grid on the GPU runner: every GPU library backend and one variant of each
#: mechanism class (dense causal, GQA, local, block-sparse, linear, positional, decode) at a short
#: and a long length, the backward at the short one, sized so that a process takes minutes: the
#: plain-PyTorch ``tiled`` loops (seconds a point at 8k) and the ONNX Runtime backends (an export
#: per shape) are left to the main-branch history and the CPU check. Its lengths are a subset of
#: the GPU grid's, so its results are points of the same asv history.
PR_GPU_GRID = dataclasses.replace(
    GPU_GRID,
    backends=tuple(b for b in GPU_GRID.backends if b not in ("tiled", "onnxruntime-cuda", "onnxruntime-trt")),
    variants=("causal", "gqa", "sliding_window", "bigbird", "linear_causal", "rope"),
    seq_lens=(2048, 8192),
    backward_seq_lens=(2048,),
    decode_lens=(4096, 32768),
)

#: The CPU counterpart: the CPU grid's backends and variants at 256 and 1024 tokens.
PR_CPU_GRID = dataclasses.replace(CPU_GRID, decode_lens=(1024,))


@dataclass(frozen=True)
class Cost:
    """Measured seconds of one :mod:`attnperf.batch` process over a grid, for the estimate the
    regression check prints before it starts."""

    startup_s: float  # interpreter, torch, GPU warm-up
    first_point_s: float  # per point in a commit's first process: the check, compilation, measurement
    point_s: float  # per point in later processes (verdicts cached, compile caches warm)
    confirm_share: float  # the confirmation pass, as a share of the first pass (when something is flagged)
    measured: str


GRID_COSTS: dict[str, Cost] = {
    # Fitted to measured processes (docs/measured.md has them): a commit's first process checks
    # every point and compiles; later ones load verdicts and compilations from the caches.
    "pr-cpu": Cost(6, 4.7, 1.2, 0.2, "2-core CPU, 40 points"),
    "pr-gpu": Cost(9, 1.7, 0.29, 0.2, "H200, 240 points"),
}

GRIDS: dict[str, Grid] = {"cpu": CPU_GRID, "gpu": GPU_GRID, "pr-cpu": PR_CPU_GRID, "pr-gpu": PR_GPU_GRID}


def cuda_visible() -> bool:
    """Whether a GPU is visible, without initializing CUDA (fork-safe NVML check)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


def _env_list(name: str, default: tuple, convert: type = str) -> tuple:
    """The comma-separated values of the variable ``name`` (``default`` when unset); a UsageError names
    the variable when a value is not what it holds."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(convert(item.strip()) for item in raw.split(",") if item.strip())
    except ValueError:
        raise UsageError(f"{name}={raw!r}: expected comma-separated {convert.__name__} values") from None
    if convert is int and any(v < 1 for v in values):
        raise UsageError(f"{name}={raw!r}: lengths and sizes must be at least 1")
    return values


def grid_named(name: str | None = None) -> Grid:
    """The grid called ``name`` (default: ``ATTNPERF_GRID``, else this machine's), narrowed by
    the ``ATTNPERF_*`` environment variables."""
    choice = name or os.environ.get("ATTNPERF_GRID") or ("gpu" if cuda_visible() else "cpu")
    if choice not in GRIDS:
        raise UsageError(f"grid (--grid or ATTNPERF_GRID) must be one of {sorted(GRIDS)}, got {choice!r}")
    base = GRIDS[choice]
    seq_lens = _env_list("ATTNPERF_SEQ_LENS", base.seq_lens, int)
    backward = base.backward_seq_lens
    return dataclasses.replace(
        base,
        backends=_env_list("ATTNPERF_BACKENDS", base.backends),
        variants=_env_list("ATTNPERF_VARIANTS", base.variants),
        seq_lens=seq_lens,
        decode_lens=_env_list("ATTNPERF_DECODE_LENS", base.decode_lens, int),
        head_dims=_env_list("ATTNPERF_HEAD_DIMS", base.head_dims, int),
        dtypes=_env_list("ATTNPERF_DTYPES", base.dtypes),
        backward_seq_lens=None if backward is None else tuple(n for n in backward if n in seq_lens) or seq_lens[:1],
    )


def active_grid() -> Grid:
    """The grid the asv suites declare: the full CPU or GPU grid of this machine (a PR grid's points
    are a subset of it, so they are points of the same history)."""
    name = os.environ.get("ATTNPERF_GRID")
    if name and name.startswith("pr-"):
        name = name[3:]
    return grid_named(name)
