"""The Python API as a notebook uses it (docs/api.md): a Benchmark run, its table, file and plots,
and a BatchSizeTuner's answer, on the CPU at tiny shapes in seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import attnperf
from attnperf.cli import build_parser
from attnperf.cli.args import grid_of
from attnperf.records import Record, Status, load_records


def test_notebook_example(tmp_path: Path) -> None:
    """The page's example, line for line: measure, tabulate, save, plot, tune."""
    bench = attnperf.Benchmark(variants=["causal", "sliding_window"], backends=["eager", "sdpa"], seq_lens=[16, 32],
                               batch=[1, 2], heads=2, head_dim=8, window=8, repeat=1)  # fmt: skip
    records = bench.run()
    assert len(records) == 2 * 2 * 2 * 2
    assert all(isinstance(r, Record) for r in records)
    assert all(r.status is Status.OK for r in records), [(r.key, r.status, r.reason) for r in records]
    for r in records:
        assert r.rel_error is not None
        assert r.rel_error <= r.bound
        assert r.median_s is not None
        assert r.median_s > 0
        assert len(r.samples_s) == 1
        assert r.case["heads"] == 2
        assert r.case["head_dim"] == 8
        assert r.case["batch"] == r.batch
        assert r.speedup is not None  # against eager at the same point, measured in the same run
    assert {r.case["window"] for r in records if r.variant == "sliding_window"} == {8}
    assert {(r.variant, r.backend, r.seq_len, r.batch) for r in records} == {
        (v, b, n, batch) for v in ("causal", "sliding_window") for b in ("eager", "sdpa") for n in (16, 32)
        for batch in (1, 2)
    }  # fmt: skip

    rows = bench.table()  # plain dicts, one per record: what pandas.DataFrame takes
    assert len(rows) == len(records)
    assert all(type(row) is dict and {"variant", "backend", "seq_len", "batch", "median_s"} <= row.keys()
               for row in rows)  # fmt: skip
    assert [row["median_s"] for row in rows] == [r.median_s for r in records]

    saved = load_records(bench.save(tmp_path / "r.json"))
    assert saved.records == records
    assert "machine" in saved.meta
    paths = bench.plot(tmp_path / "plots", kinds=["scaling"])
    assert paths
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)

    answer = attnperf.BatchSizeTuner("causal", "eager", 16, heads=2, head_dim=8, memory_limit=64 * 2**20,
                                     max_batch=8, repeat=3).run()  # fmt: skip
    batches = [t.batch for t in answer.trials]
    assert len(batches) == len(set(batches))  # no size run twice
    fitting = [t for t in answer.trials if t.fits]
    assert answer.best_batch == max(fitting, key=lambda t: t.record.tokens_per_s).batch
    assert answer.best.fits
    assert answer.best.record.peak_bytes <= 64 * 2**20
    assert all(t.batch <= 8 for t in answer.trials)
    first_bad = min((t.batch for t in answer.trials if not t.fits), default=None)
    assert first_bad is None or all(t.batch < first_bad for t in fitting)


def test_the_benchmark_builds_the_grid_the_command_builds() -> None:
    """Benchmark(...) and ``attnperf sweep`` with the same values measure the same points."""
    args = build_parser().parse_args(
        ["sweep", "--variants", "gqa,topk", "--backends", "eager,tiled", "--seq-lens", "17,64", "--batches", "1,3",
         "--heads", "4", "--head-dim", "16", "--top-k", "5", "--kv-heads", "2"]
    )  # fmt: skip
    bench = attnperf.Benchmark(variants=["gqa", "topk"], backends=["eager", "tiled"], seq_lens=[17, 64], batch=[1, 3],
                               heads=4, head_dim=16, top_k=5, kv_heads=2)  # fmt: skip
    assert bench.grid == grid_of(args)
    assert attnperf.Benchmark(variants="causal", seq_lens=64).grid.seq_lens == (64,)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"variants": ["causal", "nope"]}, r"variants: unknown variants \['nope'\]; allowed: all or full, causal"),
        ({"backends": "eager,eager"}, r"backends: eager given twice; give each value once"),
        ({"seq_lens": [16, 0]}, r"seq_lens: expected an integer >= 1, got 0"),
        ({"heads": 0}, r"heads: expected an integer >= 1, got 0"),
        ({"repeat": "x"}, r"repeat: expected an integer >= 1, got 'x'"),
        ({"dtype": "float8"}, r"dtype: invalid choice: 'float8' \(choose from float64, float32"),
        ({"device": "tpu"}, r"device: expected cpu or cuda\[:N\], got 'tpu'"),
        ({"heads": 6, "kv_heads": 4}, r"--kv-heads 4: must divide --heads 6 \(allowed: 1, 2, 3, 6\)"),
        ({"windw": 8}, r"unknown options \['windw'\]; allowed: window, top_k"),
        ({"mode": "decode"}, r"mode: a sweep measures 'forward' or 'forward\+backward' points, got 'decode'"),
        ({"cuda_graphs": True}, r"cuda_graphs needs device cuda \(got cpu\)"),
    ],
)
def test_bad_arguments_get_the_commands_messages(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attnperf.Benchmark(**arguments)


def test_a_backward_benchmark_times_checked_steps() -> None:
    records = attnperf.Benchmark("causal", ["eager", "tiled"], 64, heads=2, head_dim=16, repeat=3,
                                 mode="forward+backward").run()  # fmt: skip
    assert [(r.backend, r.mode, r.status.value) for r in records] == [
        ("eager", "forward+backward", "ok"), ("tiled", "forward+backward", "ok"),
    ]  # fmt: skip
    assert all(r.median_s and r.useful_tflops for r in records)


def test_bad_tuner_arguments_and_nothing_measured_yet() -> None:
    with pytest.raises(ValueError, match=r"memory_limit: expected an integer >= 1, got 0"):
        attnperf.BatchSizeTuner(memory_limit=0)
    with pytest.raises(ValueError, match=r"backend: unknown backends \['flash'\]"):
        attnperf.BatchSizeTuner(backend="flash", memory_limit=2**20)
    with pytest.raises(ValueError, match=r"p95_ms: expected a finite number > 0, got -1"):
        attnperf.BatchSizeTuner(memory_limit=2**20, p95_ms=-1)
    with pytest.raises(ValueError, match=r"nothing measured yet: call \.run\(\) first"):
        attnperf.Benchmark().table()


def test_importing_attnperf_does_not_load_the_measuring_modules() -> None:
    """The classes are loaded on first use: ``import attnperf`` stays the layers' and backends' cost."""
    code = "import sys, attnperf; print(sorted(m for m in ('attnperf.api', 'attnperf.sweep', 'attnperf.point') if m in sys.modules))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert attnperf.Benchmark is __import__("attnperf.api").api.Benchmark
