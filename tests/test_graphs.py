"""CUDA-graph timing (``sweep --cuda-graphs``, and the benchmarks' forward and decode points):
refused off CUDA with the reason; on a GPU the replay's output is the direct call's and the record
says how it was timed; what cannot be captured is timed call by call, with the reason."""

from __future__ import annotations

import pytest
import torch

from attnperf.backends import Unsupported
from attnperf.bench import build_point
from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, PointSpec
from attnperf.correctness import WrongResult
from attnperf.graphs import first_error_line, graphed, out_of_memory, replay_or_direct
from attnperf.records import Status
from attnperf.sweep import run_point

from .test_cli import run


def test_graphs_are_refused_off_cuda_with_the_reason() -> None:
    with pytest.raises(Unsupported, match="CUDA graphs need a CUDA device, case is on cpu"):
        graphed(lambda: torch.zeros(1), "cpu", 1e-5)


def test_the_sweep_flag_names_the_device_it_needs() -> None:
    proc = run("sweep", "--device", "cpu", "--variants", "decode", "--backends", "eager", "--cuda-graphs")
    assert proc.returncode == 2
    assert "--cuda-graphs needs --device cuda (got cpu)" in proc.stderr


def decode_spec(backend: str) -> PointSpec:
    return PointSpec(backend=backend, variant="decode", seq_len=4096, head_dim=128, dtype="bfloat16", mode=DECODE,
                     device="cuda", heads=16)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["eager", "sdpa-flash", "sdpa-cudnn"])
def test_on_gpu_a_graphed_decode_step_is_checked_and_marked(backend: str) -> None:
    record = run_point(decode_spec(backend), repeat=3, cuda_graph=True)
    if record.status is Status.UNSUPPORTED:
        pytest.skip(record.reason or "unsupported")
    assert record.status is Status.OK, record.reason
    assert record.cuda_graph is True
    assert record.median_s is not None
    assert record.median_s > 0


@pytest.mark.gpu
def test_on_gpu_a_replay_that_computes_something_else_is_wrong() -> None:
    """The check compares the replay with the warm-up's direct output: a runner whose result
    changes between calls (here a counter) cannot pass as graphed."""
    calls = torch.zeros(1, device="cuda")

    def drifting() -> torch.Tensor:
        calls.add_(1)
        return calls.clone()

    with pytest.raises(WrongResult, match="replay differs from the direct call"):
        graphed(drifting, "cuda", 1e-5)


def test_benchmark_points_off_cuda_are_timed_as_called() -> None:
    point = build_point(PointSpec("eager", "causal", 64, 16, "float32", FORWARD, device="cpu", heads=2))
    assert point.run is point.call
    assert not point.cuda_graph
    assert point.graph_reason is None


@pytest.mark.gpu
def test_on_gpu_benchmark_forward_and_decode_points_are_replayed_and_steps_are_not() -> None:
    forward = build_point(PointSpec("sdpa-cudnn", "causal", 1024, 128, "bfloat16", FORWARD, device="cuda", heads=16))
    assert forward.cuda_graph, forward.graph_reason
    assert forward.run is not forward.call
    assert build_point(decode_spec("sdpa-flash")).cuda_graph
    step = build_point(PointSpec("sdpa-cudnn", "causal", 1024, 128, "bfloat16", BACKWARD, device="cuda", heads=16))
    assert not step.cuda_graph  # a forward+backward step is timed as called
    assert step.graph_reason is None


@pytest.mark.gpu
def test_on_gpu_what_cannot_be_captured_is_timed_as_called_with_the_reason() -> None:
    x = torch.ones(4, device="cuda")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()

    def syncs() -> torch.Tensor:
        return x * float(x.sum())  # a host read inside the call: capture refuses it

    run, reason = replay_or_direct(syncs, "cuda", 1e-5)
    assert run is syncs
    assert reason is not None
    assert reason.startswith("timed call by call: cannot be captured in a CUDA graph")
    own, why = replay_or_direct(syncs, "cuda", 1e-5, own_stream=True)
    assert own is syncs
    assert "stream of its own" in (why or "")
    # The failed capture left nothing under way: the next one works and the cache empties.
    replay = graphed(lambda: x * 2, "cuda", 1e-5)
    assert torch.equal(replay(), torch.full((4,), 2.0, device="cuda"))
    del replay
    torch.cuda.empty_cache()  # frees nothing while the allocator thinks a capture is under way
    assert torch.cuda.memory_reserved() <= before


def chained(first: BaseException) -> BaseException:
    """``first`` as the context of the error a failed capture_end raises after it."""
    try:
        try:
            raise first
        finally:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as exc:
        return exc


def test_a_failed_capture_is_named_by_its_first_error_and_out_of_memory_is_recognised() -> None:
    sync = chained(RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors ..."))
    assert first_error_line(sync) == "operation not permitted when stream is capturing"
    assert not out_of_memory(sync)
    assert out_of_memory(chained(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")))
