"""CUDA-graph timing (``sweep --cuda-graphs``, and the benchmarks' forward, forward+backward and
decode points): refused off CUDA with the reason; on a GPU the replay's output (a step's
gradients) is the direct call's and the record says how it was timed; what cannot be captured is
timed call by call, with the reason."""

from __future__ import annotations

import pytest
import torch

from attnperf.backends import Unsupported
from attnperf.benchgrid import BACKWARD, DECODE, FORWARD, PointSpec
from attnperf.correctness import WrongResult
from attnperf.graphs import first_error_line, graphed, graphed_step, out_of_memory
from attnperf.point import DIRECT, REPLAY, measure_point, prepare
from attnperf.records import Status

from .cli.test_cli import run


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
    (record,) = measure_point(decode_spec(backend), repeat=3, timings=(DIRECT, REPLAY))
    if record.status is Status.UNSUPPORTED:
        pytest.skip(record.reason or "unsupported")
    assert record.status is Status.OK, record.reason
    assert record.graph_reason is None
    assert record.replay_median_s is not None
    assert record.replay_median_s > 0
    assert record.median_s is not None  # the direct call is timed beside it


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


def test_benchmark_points_off_cuda_have_no_replay_and_say_why() -> None:
    point = prepare(PointSpec("eager", "causal", 64, 16, "float32", FORWARD, device="cpu", heads=2))
    assert point.replay() == (None, "CUDA graphs need a CUDA device")
    (record,) = measure_point(point.spec, repeat=3, timings=(DIRECT, REPLAY))
    assert record.median_s is not None
    assert record.replay_median_s is None
    assert record.graph_reason is None  # not a CUDA point: nothing to explain


def test_a_step_graph_is_refused_off_cuda_with_the_reason() -> None:
    with pytest.raises(Unsupported, match="CUDA graphs need a CUDA device, case is on cpu"):
        graphed_step(lambda: None, [], "cpu", 1e-5)


@pytest.mark.gpu
def test_on_gpu_benchmark_forward_decode_and_backward_points_are_replayed() -> None:
    forward = prepare(PointSpec("sdpa-cudnn", "causal", 1024, 128, "bfloat16", FORWARD, device="cuda", heads=16))
    replay, reason = forward.replay()
    assert replay is not None, reason
    assert prepare(decode_spec("sdpa-flash")).replay()[0] is not None


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["eager", "sdpa-flash", "sdpa-efficient"])
def test_on_gpu_a_replayed_step_accumulates_the_direct_steps_gradients(backend: str) -> None:
    """The step's replay adds into the very ``.grad`` buffers the direct step does, and what it
    adds is the direct step's gradient (the capture itself was held to it at ``graphed_step``)."""
    step = prepare(PointSpec(backend, "causal", 1024, 64, "bfloat16", BACKWARD, device="cuda", heads=4))
    replay, reason = step.replay()
    assert replay is not None, reason
    for leaf in step.inputs:
        leaf.grad.zero_()
    step.call()
    direct = [leaf.grad.float().clone() for leaf in step.inputs]
    replay()
    replay()
    torch.cuda.synchronize()
    for leaf, once in zip(step.inputs, direct, strict=True):  # three steps' worth: one direct, two replayed
        assert torch.allclose(leaf.grad.float(), 3 * once, rtol=2e-2, atol=1e-2 * once.abs().max().item())
    (record,) = measure_point(step.spec, repeat=3, timings=(DIRECT, REPLAY))
    assert record.status is Status.OK, record.reason
    assert record.replay_median_s is not None
    assert record.median_s is not None


@pytest.mark.gpu
def test_on_gpu_a_step_whose_capture_adds_other_gradients_is_wrong() -> None:
    """A step that adds something else on every call (a drifting term) is refused as graphed."""
    leaf = torch.ones(8, device="cuda", requires_grad=True)
    calls = torch.zeros(1, device="cuda")

    def drifting() -> None:
        calls.add_(1)
        (leaf * calls).sum().backward()

    with pytest.raises(WrongResult, match="other gradients than the direct step"):
        graphed_step(drifting, [leaf], "cuda", 1e-5)


@pytest.mark.gpu
def test_on_gpu_what_cannot_be_captured_is_refused_and_leaves_the_allocator_clean() -> None:
    x = torch.ones(4, device="cuda")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()

    def syncs() -> torch.Tensor:
        return x * float(x.sum())  # a host read inside the call: capture refuses it

    with pytest.raises(Unsupported, match="cannot be captured in a CUDA graph"):
        graphed(syncs, "cuda", 1e-5)
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
