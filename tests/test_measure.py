"""The steady host the samples are taken with (:func:`attnperf.measure.steady_host`): on CUDA the
calling thread on one core, a different one per local rank, everything given back afterwards, also
when a sample raises; the garbage collector off while sampling. The warm-up runs where the samples
do, and a call is timed in batches until it settles (:func:`attnperf.measure.settle`) before its
samples are sized and taken."""

from __future__ import annotations

import gc
import os

import pytest

from attnperf import measure
from attnperf.measure import measure_time, settle, steady_core, steady_host


@pytest.fixture
def affinity(monkeypatch) -> list[set[int]]:
    """The calling thread's affinity as ``os.sched_setaffinity`` is asked to set it, on eight cores."""
    current = [set(range(8))]
    monkeypatch.setattr(measure.os, "sched_getaffinity", lambda pid: set(current[-1]), raising=False)
    monkeypatch.setattr(measure.os, "sched_setaffinity", lambda pid, cores: current.append(set(cores)), raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return current


def test_on_cuda_the_thread_is_pinned_while_sampling_and_given_every_core_back(affinity) -> None:
    with steady_host("cuda"):
        assert affinity[-1] == {7}, "the highest core"
        assert not gc.isenabled()
    assert affinity[-1] == set(range(8))
    assert gc.isenabled()


def test_a_sample_that_raises_restores_the_affinity_and_the_collector(affinity) -> None:
    with pytest.raises(RuntimeError, match="a failing sample"), steady_host("cuda:0"):
        raise RuntimeError("a failing sample")
    assert affinity[-1] == set(range(8))
    assert gc.isenabled()


def test_on_the_cpu_nothing_is_pinned_and_a_disabled_collector_stays_disabled(affinity) -> None:
    gc.disable()
    try:
        with steady_host("cpu"):
            assert affinity == [set(range(8))]
        assert not gc.isenabled(), "the caller had turned the collector off"
    finally:
        gc.enable()


def test_ranks_of_one_host_are_pinned_to_different_cores(monkeypatch) -> None:
    """torchrun's ranks share one affinity mask: all pinned to the highest core, their launches
    would take turns on it."""
    cores = {0, 1, 2, 3}
    chosen = []
    for rank in range(6):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        chosen.append(steady_core(cores))
    assert chosen == [3, 2, 1, 0, 3, 2]
    monkeypatch.setenv("LOCAL_RANK", "not a number")
    assert steady_core(cores) == 3
    monkeypatch.delenv("LOCAL_RANK")
    assert steady_core({5}) == 5


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity is Linux's")
def test_on_linux_the_real_affinity_comes_back() -> None:
    before = os.sched_getaffinity(0)
    with steady_host("cuda"):
        assert len(os.sched_getaffinity(0)) == 1
    assert os.sched_getaffinity(0) == before


def scripted(monkeypatch, per_call: list[float]) -> list[int]:
    """``time_calls`` answering each batch with the next of ``per_call`` (the last repeats); returns the
    calls per batch it was asked for."""
    asked: list[int] = []

    def time_calls(fn, device, number: int) -> float:
        asked.append(number)
        return per_call[min(len(asked) - 1, len(per_call) - 1)]

    monkeypatch.setattr(measure, "time_calls", time_calls)
    return asked


def test_settle_waits_until_a_call_stops_getting_faster(monkeypatch) -> None:
    asked = scripted(monkeypatch, [5e-3, 3e-3, 2e-3, 1.2e-3, 1.0e-3, 1.01e-3, 0.99e-3, 1.0e-3])
    assert settle(lambda: None, "cpu", 4, limit_s=60.0) == pytest.approx(1.0e-3)
    assert len(asked) == 7, "three batches in a row within 5%: the 5th to the 7th"
    assert set(asked) == {4}


def test_settle_gives_up_at_its_limit(monkeypatch) -> None:
    asked = scripted(monkeypatch, [1e-3, 2e-3] * 50)
    settle(lambda: None, "cpu", 1, limit_s=0.0)
    assert len(asked) == 1, "past the limit after the first batch"


def test_calls_per_sample_come_from_the_settled_time_and_the_warm_up_runs_on_the_sampled_core(
    monkeypatch, affinity
) -> None:
    """A warm call read ten times slow would size a sample at a tenth of its calls: that count
    then differs between processes that caught the host at different moments."""
    monkeypatch.setattr(measure, "_WARMED", {"cuda"})
    monkeypatch.setattr(measure, "warm_up", lambda fn, device, seconds: fn() or 1e-2)
    scripted(monkeypatch, [1e-3])
    cores = []
    timing = measure_time(lambda: cores.append(set(affinity[-1])), "cuda", repeat=3)
    assert timing.number == 10, "min_sample_s 10 ms over a settled 1 ms call"
    assert cores == [{7}], "the warm-up ran on the core the samples are pinned to"
    assert affinity[-1] == set(range(8))
