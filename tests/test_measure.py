"""The steady host the samples are taken with (:func:`attnperf.measure.steady_host`): on CUDA the
calling thread on one core, a different one per local rank, everything given back afterwards, also
when a sample raises; the garbage collector off while sampling."""

from __future__ import annotations

import gc
import os

import pytest

from attnperf import measure
from attnperf.measure import steady_core, steady_host


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
