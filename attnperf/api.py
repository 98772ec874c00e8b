"""The class-style entry points for a notebook: :class:`Benchmark` (a sweep) and :class:`BatchSizeTuner`
(the batch-size search), thin front-ends over :func:`attnperf.sweep.run_sweep` and
:func:`attnperf.tune.tune_backend`.

They measure nothing themselves: a :class:`Benchmark` builds the very :class:`~attnperf.benchgrid.Grid`
that ``attnperf sweep`` builds from the same values (:func:`attnperf.cli.args.grid_of`), and its
arguments go through the command's own argument checks, so a bad value is refused with the command's
message, prefixed by the parameter's name, as a :class:`~attnperf.errors.UsageError` (a ``ValueError``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from attnperf.backends import BACKENDS
from attnperf.benchgrid import BACKWARD, FORWARD, SWEEP_MODES, Grid
from attnperf.case import DTYPES
from attnperf.catalog import VARIANTS
from attnperf.cli.args import OPTION_FLAGS, choices_list, device_arg, grid_of, int_list, positive_float, positive_int
from attnperf.errors import UsageError
from attnperf.records import Record
from attnperf.tune import TuneResult, tune_backend


def _checked(name: str, parse: Callable[[str], Any], value: Any) -> Any:
    """``value`` through the command's argument type ``parse`` (lists joined with commas, as typed on
    the command line); its refusal becomes a UsageError naming the parameter ``name``."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{name}: {exc}") from None


def _dtype(value: str) -> str:
    if value not in DTYPES:
        raise UsageError(f"dtype: invalid choice: {value!r} (choose from {', '.join(DTYPES)})")
    return value


def _shape(heads: int, head_dim: int, dtype: str, device: str, options: dict[str, Any]) -> dict[str, Any]:
    """The case arguments every command shares (``add_case_arguments``), checked as the command checks them."""
    unknown = sorted(set(options) - set(OPTION_FLAGS))
    if unknown:
        raise UsageError(f"unknown options {unknown}; allowed: {', '.join(OPTION_FLAGS)}")
    return {
        "heads": _checked("heads", positive_int, heads),
        "head_dim": _checked("head_dim", positive_int, head_dim),
        "dtype": _dtype(dtype),
        "device": _checked("device", device_arg, device),
        **{name: _checked(name, positive_int, value) for name, value in options.items() if value is not None},
    }


class Benchmark:
    """Variants × backends × lengths × batch sizes, each point checked against the float64 reference
    and then timed, exactly as ``attnperf sweep`` does::

        bench = Benchmark(variants=["causal"], backends=["eager", "sdpa"], seq_lens=[128, 256], repeat=3)
        records = bench.run()              # list of attnperf.records.Record, eager ratios filled in
        rows = bench.table()               # plain dicts: pandas.DataFrame(rows)

    ``variants`` / ``backends``: names, or ``"all"``; ``seq_lens`` and ``batch``: an int or a list;
    ``options``: the mechanism options and head layout of the command's flags (``window``, ``top_k``,
    ``stride``, ``block``, ``num_global``, ``num_random``, ``kv_heads``). ``mode``: ``"forward"``, or
    ``"forward+backward"`` for steps whose gradients are checked first (``attnperf sweep --backward``;
    decode points are the asv suites' and ``attnperf batch``'s). ``cuda_graphs`` also times each call
    replayed as a CUDA graph.
    """

    def __init__(
        self,
        variants: str | Sequence[str] = "causal",
        backends: str | Sequence[str] = ("eager", "sdpa"),
        seq_lens: int | Sequence[int] = (256, 1024),
        *,
        batch: int | Sequence[int] = 1,
        heads: int = 8,
        head_dim: int = 64,
        dtype: str = "float32",
        device: str = "cpu",
        mode: str = FORWARD,
        repeat: int = 7,
        cuda_graphs: bool = False,
        **options: int,
    ) -> None:
        if mode not in SWEEP_MODES:
            raise UsageError(f"mode: a sweep measures {FORWARD!r} or {BACKWARD!r} points, got {mode!r} (decode "
                             "points are measured by the asv suites and attnperf batch)")  # fmt: skip
        if not isinstance(cuda_graphs, bool):
            raise UsageError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        shape = _shape(heads, head_dim, dtype, device, options)
        if cuda_graphs and not shape["device"].startswith("cuda"):
            raise UsageError(f"cuda_graphs needs device cuda (got {shape['device']})")
        args = argparse.Namespace(
            variants=_checked("variants", choices_list(list(VARIANTS), "variants"), variants),
            backends=_checked("backends", choices_list(list(BACKENDS), "backends"), backends),
            seq_lens=_checked("seq_lens", int_list, seq_lens),
            batches=_checked("batch", int_list, batch),
            **dict.fromkeys(OPTION_FLAGS) | shape,
        )
        self.grid: Grid = grid_of(args)
        self.repeat: int = _checked("repeat", positive_int, repeat)
        self.cuda_graphs = cuda_graphs
        self.mode = mode
        self.records: list[Record] = []

    def run(self, *, progress: bool = False) -> list[Record]:
        """Check and time every point (``progress``: a tqdm bar on stderr); the records, also kept
        in :attr:`records`. A point that cannot run here, is wrong or fails is a record too, with
        its status and reason: the sweep goes on."""
        from attnperf.sweep import run_sweep

        bar = None
        if progress:
            from tqdm import tqdm

            def bar(points: Iterable[Any]) -> Iterable[Any]:
                return tqdm(points, desc="sweep", unit="point")

        self.records = run_sweep(self.grid, repeat=self.repeat, progress=bar, cuda_graph=self.cuda_graphs,
                                 mode=self.mode)  # fmt: skip
        return self.records

    def _measured(self) -> list[Record]:
        if not self.records:
            raise UsageError("nothing measured yet: call .run() first")
        return self.records

    def table(self) -> list[dict[str, Any]]:
        """One plain dict per record (the rows ``attnperf sweep --csv`` writes): ``pandas.DataFrame(rows)``."""
        from attnperf.cli.explore import csv_row

        return [csv_row(r) for r in self._measured()]

    def save(self, path: str | Path) -> Path:
        """The records and this machine, written atomically as ``attnperf sweep --json`` writes them
        (read back with :func:`attnperf.records.load_records`; ``attnperf plot`` draws them)."""
        from attnperf.machine import machine_info
        from attnperf.records import save_records

        return save_records(path, self._measured(), machine=machine_info())

    def plot(self, out: str | Path, kinds: Sequence[str] = ("scaling", "memory", "throughput")) -> list[Path]:
        """The result plots of ``attnperf plot`` (PNG and SVG into the folder ``out``); the paths
        written. The roofline needs the machine's ceilings: ``attnperf plot FILE --kinds roofline``."""
        from attnperf.plots import RESULT_PLOTS, plot_results, plot_rows

        allowed = [k for k in RESULT_PLOTS if k != "roofline"]
        unknown = [k for k in kinds if k not in allowed]
        if unknown:
            raise UsageError(f"kinds: unknown {unknown}; allowed: {', '.join(allowed)}")
        records = self._measured()
        if not any(r.ok for r in records):
            raise UsageError(f"no point ran successfully, nothing to plot ({len(records)} records)")
        return plot_results(plot_rows(records), Path(out), list(kinds), None)


class BatchSizeTuner:
    """Per backend, the batch of highest throughput under a memory limit and an optional p95 target,
    as ``attnperf tune`` searches it::

        answer = BatchSizeTuner("causal", "eager", 256, memory_limit=64 * 2**20, max_batch=8, repeat=3).run()
        answer.best_batch, [(t.batch, t.fits, t.why_not) for t in answer.trials]

    ``memory_limit``: bytes of peak extra memory one call may take; ``p95_ms``: an optional latency
    target per call. :meth:`run` returns :class:`attnperf.tune.TuneResult`.
    """

    def __init__(
        self,
        variant: str = "causal",
        backend: str = "eager",
        seq_len: int = 1024,
        *,
        memory_limit: int,
        p95_ms: float | None = None,
        max_batch: int = 256,
        heads: int = 8,
        head_dim: int = 64,
        dtype: str = "float32",
        device: str = "cpu",
        repeat: int = 7,
        **options: int,
    ) -> None:
        (self.variant,) = _checked("variant", choices_list(list(VARIANTS), "variants"), [variant])
        (self.backend,) = _checked("backend", choices_list(list(BACKENDS), "backends"), [backend])
        self.memory_limit: int = _checked("memory_limit", positive_int, memory_limit)
        self.p95_ms = None if p95_ms is None else _checked("p95_ms", positive_float, p95_ms)
        self.max_batch: int = _checked("max_batch", positive_int, max_batch)
        self.repeat: int = _checked("repeat", positive_int, repeat)
        args = argparse.Namespace(
            variant=self.variant, backends=[self.backend], seq_len=_checked("seq_len", positive_int, seq_len),
            **dict.fromkeys(OPTION_FLAGS) | _shape(heads, head_dim, dtype, device, options),
        )  # fmt: skip
        self.grid: Grid = grid_of(args)

    def run(self) -> TuneResult:
        """Search the batch sizes: its ``best_batch`` (None, with ``reason``, when batch 1 does not
        fit) and every size tried (``trials``, each with its record and the limit it broke)."""
        return tune_backend(self.grid, self.variant, self.backend, memory_limit=self.memory_limit,
                            p95_ms=self.p95_ms, max_batch=self.max_batch, repeat=self.repeat)  # fmt: skip
