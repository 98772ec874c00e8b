"""The batch runner (many points in one process, verdicts cached) and its records in asv's history."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import subprocess
from pathlib import Path

import pytest
import torch

from attnperf.asvhistory import commits_to_measure, record, shard_points, values_by_benchmark
from attnperf.batchrun import Injection, parse_inject, process_costs, run
from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, PointSpec, grid_named
from attnperf.errors import UsageError
from attnperf.processes import read_points, write_points
from attnperf.records import ResultFile, load_records

from .test_regress import copy_as_repository, git

ROOT = Path(__file__).resolve().parents[1]
POINTS = [
    PointSpec("eager", "causal", 64, 16, "float32", FORWARD, device="cpu", heads=2),
    PointSpec("tiled", "causal", 64, 16, "float32", BACKWARD, device="cpu", heads=2),
    PointSpec("sdpa-flash", "linear_causal", 64, 16, "float32", FORWARD, device="cpu", heads=2),
    PointSpec("eager", "decode", 128, 16, "float32", DECODE, device="cpu", heads=2),
]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ResultFile]]:
    folder = tmp_path_factory.mktemp("batch")
    write_points(folder / "points.json", POINTS)
    points = read_points(folder / "points.json")
    assert points == POINTS
    outputs = [run(points, folder / f"run-{i}.json", verdicts=folder / "verdicts.json",
                   inject="spin:eager=50;host:eager=100", repeat=3, min_sample_s=0.005) for i in (1, 2)]  # fmt: skip
    return folder, outputs


def test_every_point_is_recorded_with_what_happened(two_processes) -> None:
    folder, (first, _second) = two_processes
    assert load_records(folder / "run-1.json").to_dict() == first.to_dict(), "the file holds what was measured"
    by_key = {r.key: r for r in first.records}
    forward = by_key[POINTS[0].key]
    assert forward.ok
    assert len(forward.samples_s) == 3
    assert forward.peak_bytes is not None
    assert forward.first_call_s is not None
    assert forward.useful_tflops is not None
    assert by_key[POINTS[1].key].ok  # forward+backward, gradients checked first
    assert by_key[POINTS[1].key].peak_bytes is not None  # a step's memory is measured too
    # Timed as called on the CPU: no CUDA-graph replay, and no reason needed for it.
    assert all(r.replay_median_s is None and r.graph_reason is None for r in first.records)
    assert first.meta["gpu"] is None, "CPU points name no GPU"
    assert not by_key[POINTS[2].key].ok
    assert "does not implement linear" in by_key[POINTS[2].key].reason
    # Injected measurements live in their own list, never among the plain records.
    assert {r.key for r in first.injected} == {POINTS[0].key, POINTS[3].key}
    kinds = sorted((r.injection["kind"], r.injection["level"]) for r in first.injected)
    assert kinds == [("host", 100.0), ("host", 100.0), ("spin", 50.0), ("spin", 50.0)]
    assert all(r.injection is None for r in first.records)


def test_the_second_process_reuses_the_first_ones_verdicts(two_processes) -> None:
    folder, (first, second) = two_processes
    assert not any(r.check_cached for r in first.records)
    assert all(r.check_cached for r in second.records)
    cache = json.loads((folder / "verdicts.json").read_text())
    assert list(cache["fingerprints"]) == [first.meta["fingerprint"]]
    costs = process_costs(second)
    assert costs["statuses"] == {"ok": 3, "unsupported": 1}
    assert costs["measure_s"] > 0
    # a process stopped from outside (a deadline) has neither its wall time nor its total: its start-up
    # and the points it finished stand in, never 0 (which made its overhead per point negative)
    meta = {k: v for k, v in second.meta.items() if k != "wall_s"} | {"seconds": {"startup": 5.0, "points": 10.0}}
    assert process_costs(ResultFile(None, meta, second.records))["wall_s"] == 15.0


def test_parse_inject_names_the_flag() -> None:
    assert parse_inject("flash-attn4=2,3.5") == (Injection("spin", frozenset({"flash-attn4"}), (2.0, 3.5)),)
    assert parse_inject("host:all=20;pass:eager,tiled=1") == (
        Injection("host", None, (20.0,)), Injection("pass", frozenset({"eager", "tiled"}), (1.0,)))  # fmt: skip
    assert parse_inject(None) == ()
    for bad in ("flash-attn4", "flash-attn4=x", "flash-attn4=-1", "warp:all=3", "spin:=3"):
        with pytest.raises(UsageError, match="--inject must be KIND:BACKENDS="):
            parse_inject(bad)
    with pytest.raises(UsageError, match=r"--inject: unknown backends \['nosuch'\]"):
        parse_inject("nosuch=3")


def test_values_by_benchmark_pool_samples_and_take_medians(two_processes) -> None:
    _, outputs = two_processes
    table = values_by_benchmark(outputs)
    forward = table["bench_attention.TimeForward.time_forward"][("'eager'", "'causal'", "64", "16", "'float32'")]
    assert len(forward["samples"]) == 6
    replays = table.get("bench_attention.TimeForwardReplay.time_forward_replay", {})
    assert ("'eager'", "'causal'", "64", "16", "'float32'") not in replays, "no replay on the CPU"
    peak = table["bench_attention.TrackPeakMemory.track_peak_bytes"][("'eager'", "'causal'", "64", "16", "'float32'")]
    assert peak["value"] == statistics.median(r.peak_bytes for o in outputs for r in o.records
                                              if r.key == POINTS[0].key)  # fmt: skip
    step = table["bench_attention.TimeForwardBackward.track_peak_bytes_backward"]
    assert step[("'tiled'", "'causal'", "64", "16", "'float32'")]["value"] > 0
    skipped = table["bench_attention.TimeForward.time_forward"][
        ("'sdpa-flash'", "'linear_causal'", "64", "16", "'float32'")]  # fmt: skip
    assert skipped["status"] == "unsupported"


def test_shards_partition_the_grid() -> None:
    points = grid_named("pr-cpu").points()
    shards = [shard_points(points, f"{i}/3") for i in (1, 2, 3)]
    assert sorted(p.key for s in shards for p in s) == sorted(p.key for p in points)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(UsageError, match="--shard must be I/N"):
            shard_points(points, bad)


@pytest.mark.slow
def test_record_writes_asv_results_that_publish_reads(two_processes, tmp_path: Path, monkeypatch) -> None:
    """The records land under asv's own benchmark names; ``asv publish`` draws them."""
    _, outputs = two_processes
    repo = copy_as_repository(tmp_path / "repo")
    sha = git(repo, "rev-parse", "HEAD")
    grid = {
        "ATTNPERF_GRID": "cpu",
        "ATTNPERF_BACKENDS": "eager,tiled,sdpa-flash",
        "ATTNPERF_SEQ_LENS": "64",
        "ATTNPERF_HEAD_DIMS": "16",
        "ATTNPERF_DECODE_LENS": "128",
        "ATTNPERF_VARIANTS": "causal,linear_causal",
    }
    for key, value in grid.items():
        monkeypatch.setenv(key, value)
    # The host travels with the measurements: the recorder (GitHub's runner in publish.yml) is not it.
    assert outputs[0].meta["host"]["arch"]
    outputs = [ResultFile(o.path, {**o.meta, "host": {**o.meta["host"], "cpu": "the measuring host's CPU; GPU X"}},
                          o.records) for o in outputs]  # fmt: skip
    path = record(outputs, sha, repo=repo, machine="history-test")
    machine = json.loads((repo / ".asv/results/history-test/machine.json").read_text())
    assert machine["cpu"] == "the measuring host's CPU; GPU X"
    data = json.loads(path.read_text())
    columns = data["result_columns"]
    forward = dict(zip(columns, data["results"]["bench_attention.TimeForward.time_forward"], strict=False))
    params = forward["params"]
    combos = [(b, v) for b in params[0] for v in params[1]]
    values = dict(zip(combos, forward["result"], strict=True))
    samples = [s for o in outputs for r in o.records if r.key == POINTS[0].key for s in r.samples_s]
    assert values[("'eager'", "'causal'")] == pytest.approx(statistics.median(samples))
    assert math.isnan(values[("'sdpa-flash'", "'linear_causal'")])  # skipped, with its reason on record
    assert commits_to_measure(repo, 3, "history-test") == []  # recorded already
    published = subprocess.run(
        ["python", "-m", "asv", "publish"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert published.returncode == 0, published.stderr
    index = json.loads((repo / ".asv/html/index.json").read_text())
    assert "bench_attention.TimeForward.time_forward" in index["benchmarks"]
    assert "history-test" in index["machines"]


def test_points_that_differ_only_in_options_or_batch_have_different_keys() -> None:
    from attnperf.benchgrid import PointSpec

    base = PointSpec("eager", "sliding_window", 256, 64, "float32", "forward", "cpu", 8)
    keys = {
        base.key,
        dataclasses.replace(base, options=(("window", 32),)).key,
        dataclasses.replace(base, options=(("window", 64),)).key,
        dataclasses.replace(base, batch=4).key,
    }
    assert len(keys) == 4
    assert base.key == "TimeForward('eager', 'sliding_window', 256, 64, 'float32')", "asv's spelling stays"


def test_a_backend_that_breaks_is_a_failed_record_and_a_poisoned_device_ends_the_process(monkeypatch) -> None:
    """The batch runner ends a point the way the sweep does (:func:`attnperf.point.failure`)."""
    from attnperf.backends import get_backend
    from attnperf.batchrun import BatchRunner, VerdictCache

    errors = [TypeError("no kernel"), RuntimeError("CUDA error: an illegal memory access was encountered")]

    def broken(*args: object, **kwargs: object) -> None:
        raise errors[0]

    monkeypatch.setattr(get_backend("tiled"), "prepare", broken)
    runner = BatchRunner(cache=VerdictCache(None, "test"), repeat=3)
    spec = PointSpec("tiled", "causal", 32, 16, "float32", FORWARD, device="cpu", heads=2)
    (record,) = runner.measure(spec)
    assert (record.status.value, record.reason) == ("failed", "TypeError: no kernel")
    errors.pop(0)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        runner.measure(spec)


def test_memory_freed_between_points_keeps_later_collections_small() -> None:
    """Between points the survivors are frozen out of later collections (a full collection over a
    process with the GPU libraries loaded cost most of a point's overhead), and garbage made after
    the freeze is still collected."""
    import gc
    import weakref

    from attnperf.point import free_memory

    class Node:
        pass

    try:
        frozen_before = gc.get_freeze_count()
        free_memory("cpu", between_points=True)
        assert gc.get_freeze_count() > frozen_before
        cycle = Node()
        cycle.me = cycle  # garbage only the cyclic collector frees
        alive = weakref.ref(cycle)
        del cycle
        free_memory("cpu", between_points=True)
        assert alive() is None
    finally:
        gc.unfreeze()


def test_an_injected_slowdown_is_sized_by_what_the_spin_adds_behind_queued_work(monkeypatch) -> None:
    """A device on which a spin of x seconds adds 2.7 µs + 0.9·x behind queued work: the fit reads the
    2.7 µs and the 0.9 once a point, the spin is sized so that the call takes pct % longer, and a
    slowdown below 2.7 µs is recorded unsupported with both sizes, never measured."""
    from types import SimpleNamespace

    from attnperf import batchrun, measure
    from attnperf.measure import Timing
    from attnperf.records import Record, Status

    plain_s, fixed_s, slope, busy_s = 100e-6, 2.7e-6, 0.9, 50e-6
    fits: list[int] = []
    queue: list[float] = []

    def added(spins: list[float]) -> float:  # what the spins add behind work already queued
        return sum(fixed_s + slope * s for s in spins)

    def spin(seconds: float) -> None:
        queue.append(seconds)

    def fake_time_calls(fn, device, number) -> float:  # the fit's variants: busy work, then spins
        queue.clear()
        fn()
        fits.append(number)
        first, *rest = queue
        assert first == busy_s
        return busy_s + added(rest)

    def fake_measure_time(fn, device, **_) -> Timing:  # the slowed call: the point, then its spin
        queue.clear()
        fn()
        return Timing(median=plain_s + added(queue))

    monkeypatch.setattr(measure, "time_calls", fake_time_calls)
    monkeypatch.setattr(batchrun, "measure_time", fake_measure_time)
    monkeypatch.setattr(batchrun, "spinner", lambda device: spin)
    runner = batchrun.BatchRunner(cache=batchrun.VerdictCache(None, "x"), repeat=3,
                                  injections=parse_inject("spin:eager=5,1"))  # fmt: skip
    spec = POINTS[0]
    point = SimpleNamespace(spec=spec, case=SimpleNamespace(device="cpu"), call=lambda: None,
                            replay=lambda: (None, "no"))  # fmt: skip
    plain = Record(spec, Status.OK, median_s=plain_s, samples_s=(plain_s,))
    five, one = runner._injected(point, plain)
    assert five.ok
    assert five.injection["spin_fixed_s"] == pytest.approx(fixed_s)
    assert five.injection["spin_slope"] == pytest.approx(slope)
    assert five.median_s == pytest.approx(plain_s * 1.05), "the call takes 5% longer, fixed cost included"
    assert five.injection["spin_s"] == pytest.approx((5e-6 - fixed_s) / slope)
    assert five.replay_median_s is None, "no replay to slow"
    assert one.status is Status.UNSUPPORTED  # 1 µs, below the 2.7 µs a spin adds at least
    assert "below the shortest spin's cost" in one.reason
    assert one.median_s is None
    assert len(fits) == 30, "three variants, five times each, once per injected level"


def test_the_spins_cost_is_fitted_on_this_machine() -> None:
    """The real CPU spin (a busy wait): a small fixed cost, and about a second a second."""
    from attnperf.measure import spin_cost, spinner

    cost = spin_cost(spinner("cpu"), "cpu", busy_s=200e-6, long_s=400e-6, number=5, repeat=9)
    assert -50e-6 < cost.fixed_s < 50e-6  # a shortest busy wait adds a call (< 1 µs); 10 µs is samples' noise
    assert 0.8 < cost.slope < 1.25
    fixed = max(0.0, cost.fixed_s)  # what a request takes off: a fixed part read below 0 is noise
    assert cost.request(fixed - 1e-9) is None
    assert cost.request(fixed + 100e-6) == pytest.approx(100e-6 / cost.slope)


def test_a_spin_that_cannot_be_fitted_leaves_its_injected_records_unsupported(monkeypatch) -> None:
    """A device whose spins add nothing measurable: no slowdown is claimed, each level says why."""
    from types import SimpleNamespace

    from attnperf import batchrun, measure
    from attnperf.records import Record, Status

    monkeypatch.setattr(measure, "time_calls", lambda fn, device, number: 1e-3)
    monkeypatch.setattr(batchrun, "spinner", lambda device: lambda seconds: None)
    runner = batchrun.BatchRunner(cache=batchrun.VerdictCache(None, "x"), repeat=3,
                                  injections=parse_inject("spin:eager=2,10"))  # fmt: skip
    point = SimpleNamespace(spec=POINTS[0], case=SimpleNamespace(device="cpu"), call=lambda: None,
                            replay=lambda: (None, "no"))  # fmt: skip
    records = runner._injected(point, Record(POINTS[0], Status.OK, median_s=1e-3, samples_s=(1e-3,)))
    assert [r.status for r in records] == [Status.UNSUPPORTED, Status.UNSUPPORTED]
    assert all("could not be fitted" in r.reason for r in records)


@pytest.mark.gpu
def test_on_gpu_a_fitted_spin_slows_a_replayed_graph_by_what_was_asked() -> None:
    """Behind a CUDA-graph replay of a matrix product (about 0.2 ms on an H100 or H200), as the
    benchmarks' forward points are timed: 5% asked, 4-6% measured. Sized from back-to-back spins
    the H200 measured 3.9% for 5% on such points."""
    from attnperf.measure import ensure_warm, measure_time, spin_cost, spinner

    device = "cuda"
    ensure_warm(device)
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    stream, graph = torch.cuda.Stream(), torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        a @ a
        with torch.cuda.graph(graph):
            a @ a
    torch.cuda.synchronize()
    spin = spinner(device)
    plain = measure_time(graph.replay, device, repeat=10).median
    cost = spin_cost(spin, device)
    assert 0.8 < cost.slope < 1.25
    assert cost.fixed_s < 10e-6
    request = cost.request(plain * 0.05)
    assert request is not None
    slowed = measure_time(lambda: (graph.replay(), spin(request)), device, repeat=10).median
    assert 1.04 < slowed / plain < 1.06
