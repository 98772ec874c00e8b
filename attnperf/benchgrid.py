"""The benchmark grids asv and pytest-benchmark run, and the one place a benchmark is prepared.

Two grids: a CPU grid small enough for ``asv run --quick`` in CI, and a GPU grid (long
sequences, bf16/fp16, head_dim 64/128) chosen when CUDA is present. Environment variables pick
subsets without editing code (comma-separated lists):

=====================  ====================================================
``ATTNPERF_GRID``      ``cpu`` or ``gpu`` (default: ``gpu`` when CUDA is visible)
``ATTNPERF_BACKENDS``  backends, e.g. ``eager,flex``
``ATTNPERF_VARIANTS``  variants, e.g. ``causal,sliding_window``
``ATTNPERF_SEQ_LENS``  sequence lengths, e.g. ``1024,4096``
``ATTNPERF_HEAD_DIMS`` head dims (GPU grid default ``128``; ``64,128`` for both)
``ATTNPERF_DTYPES``    dtypes (GPU grid default ``bfloat16``)
=====================  ====================================================

asv's own ``-b REGEX`` selects benchmarks and parameter combinations on top of that.

CUDA is never initialized at import time: asv forks benchmark processes from a server that
imported this module, and a parent with a CUDA context breaks every child. The GPU check uses
NVML (``PYTORCH_NVML_BASED_CUDA_CHECK``), which is fork-safe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from attnperf.case import Case
from attnperf.catalog import get_variant


@dataclass(frozen=True)
class BenchGrid:
    backends: tuple[str, ...]
    variants: tuple[str, ...]
    seq_lens: tuple[int, ...]
    decode_lens: tuple[int, ...]
    head_dims: tuple[int, ...]
    dtypes: tuple[str, ...]
    device: str
    heads: int
    batch: int = 1
    options: dict[str, int] = field(default_factory=dict)

    def case(self, variant: str, seq_len: int, head_dim: int, dtype: str) -> Case:
        return get_variant(variant).case(
            seq_len, batch=self.batch, heads=self.heads, head_dim=head_dim, dtype=dtype, device=self.device,
            **self.options,
        )  # fmt: skip


#: asv runs every parameter combination in a process of its own (a few seconds each on a 2-core
#: machine, flex compiling in each), so the default CPU grid is kept to what shows the three
#: complexity classes; every other variant and backend is one environment variable away.
CPU_GRID = BenchGrid(
    backends=("eager", "sdpa-flash", "flex", "tiled"),
    variants=("causal", "sliding_window", "linear_causal"),
    seq_lens=(256, 1024),
    decode_lens=(1024, 4096),
    head_dims=(64,),
    dtypes=("float32",),
    device="cpu",
    heads=8,
)

GPU_GRID = BenchGrid(
    backends=(
        "eager", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "flash-attn4", "flash-attn3",
        "xformers", "fla",
    ),
    variants=("full", "causal", "gqa", "sliding_window", "bigbird", "linear_causal", "alibi", "rope"),
    seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
    decode_lens=(4096, 32768, 131072),
    head_dims=(128,),
    dtypes=("bfloat16",),
    device="cuda",
    heads=16,
)  # fmt: skip


def cuda_visible() -> bool:
    """Whether a GPU is visible, without initializing CUDA (fork-safe NVML check)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


def _env_list(name: str, default: tuple, convert: type = str) -> tuple:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return tuple(convert(item.strip()) for item in raw.split(",") if item.strip())


def active_grid() -> BenchGrid:
    """The grid for this machine, narrowed by the ``ATTNPERF_*`` environment variables."""
    choice = os.environ.get("ATTNPERF_GRID") or ("gpu" if cuda_visible() else "cpu")
    if choice not in ("cpu", "gpu"):
        raise ValueError(f"ATTNPERF_GRID must be 'cpu' or 'gpu', got {choice!r}")
    base = GPU_GRID if choice == "gpu" else CPU_GRID
    return BenchGrid(
        backends=_env_list("ATTNPERF_BACKENDS", base.backends),
        variants=_env_list("ATTNPERF_VARIANTS", base.variants),
        seq_lens=_env_list("ATTNPERF_SEQ_LENS", base.seq_lens, int),
        decode_lens=_env_list("ATTNPERF_DECODE_LENS", base.decode_lens, int),
        head_dims=_env_list("ATTNPERF_HEAD_DIMS", base.head_dims, int),
        dtypes=_env_list("ATTNPERF_DTYPES", base.dtypes),
        device=base.device,
        heads=base.heads,
        batch=base.batch,
    )
