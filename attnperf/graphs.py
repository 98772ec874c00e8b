"""A verified runner replayed as a CUDA graph: what a step costs once Python and the launches of
its kernels are gone, as a decoder that captures its step (vLLM, TensorRT-LLM, ``torch.compile``'s
``mode="reduce-overhead"``) runs it.

A short decode step moves a few tens of MB, microseconds at HBM bandwidth, while one call from
Python costs tens of µs: timed call by call, such points measure the host. So every CUDA point
that can be captured is timed both ways (:meth:`attnperf.point.Point.replay`): as called, what a
model calling from Python pays, and as a replay, the device's own work. The replay computes on
the runner's own inputs; its output (for a forward+backward step, the gradients it accumulates)
is held against the direct call's, which was checked against the float64 reference before, so a
graph that captured the wrong thing is never timed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attnperf.backends.base import Runner, Unsupported
from attnperf.correctness import WrongResult, relative_error

#: Direct calls before capture: the first compiles or JIT-builds (flex, flash-attn-4, Triton),
#: the others settle allocator pools and autotuning outside the graph.
WARM_CALLS = 3


def capture(runner: Runner, device: torch.device) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """One call of ``runner`` captured on a side stream into a pool of its own.

    A call that reads a value back to the host, or synchronizes, invalidates the capture, and then
    ``capture_end`` raises before it stops routing allocations to the graph's pool (PyTorch's
    ``CUDAGraph::capture_end``): the allocator would count that capture as under way for the rest
    of the process, and ``empty_cache`` would free nothing after it. On failure the pool is closed
    and released here, so the next point starts clean; the reason given is the first error (the
    capture's own is only its consequence). Out of memory is raised as it is."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    graph, pool, stream = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle(), torch.cuda.Stream(device)
    torch.cuda.synchronize(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    begun = ended = False
    failure: str | None = None
    try:
        with torch.cuda.stream(stream):  # the current stream comes back even when capture fails
            graph.capture_begin(pool=pool)
            begun = True
            try:
                static = runner()
            finally:
                graph.capture_end()
                ended = True
    except Exception as exc:
        if begun and not ended:  # capture_end raised before it closed the pool (an ended graph frees its own)
            torch._C._cuda_endAllocateToPool(index, pool)
            torch._C._cuda_releasePool(index, pool)
        torch.cuda.synchronize(device)
        if out_of_memory(exc):
            raise
        failure = first_error_line(exc)
    if failure is not None:
        # No local of this frame may hold the error: its traceback holds this frame, and through it
        # the callers' (graphed's warm-up output) and the failed call's tensors in the graph's pool,
        # a cycle that keeps memory reserved until a garbage collection. Only the message is kept,
        # and the Unsupported is raised after the handler has dropped the error.
        raise Unsupported(f"cannot be captured in a CUDA graph: {failure}")
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph, static


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or the error it arose from, is CUDA running out of memory."""
    return isinstance(exc, torch.OutOfMemoryError) or isinstance(root_error(exc), torch.OutOfMemoryError)


def root_error(exc: BaseException) -> BaseException:
    """The first error of a chain: a failed capture's own error is only the consequence of it."""
    while exc.__context__ is not None:
        exc = exc.__context__
    return exc


def first_error_line(exc: BaseException) -> str:
    root = root_error(exc)
    lines = str(root).strip().splitlines()
    return lines[0] if lines else type(root).__name__


def graphed(runner: Runner, device: str | torch.device, bound: float) -> Runner:
    """``runner`` captured in a CUDA graph: a closure that replays it and returns its output.

    Raises :class:`Unsupported` off CUDA or when the call cannot be captured (it synchronizes
    with the host, or allocates in a way capture forbids), and :class:`WrongResult` when the
    replay's output differs from the direct call's by more than ``bound``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise Unsupported(f"CUDA graphs need a CUDA device, case is on {device.type}")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph's docs ask
        for _ in range(WARM_CALLS):
            direct = runner()
    torch.cuda.current_stream(device).wait_stream(side)
    # A copy: a runner may hand back the same buffer every call (ONNX Runtime's bound output).
    expected = direct.detach().to(device="cpu", dtype=torch.float64)
    graph, static = capture(runner, device)
    static.fill_(float("nan"))  # a graph that writes nothing (work on a stream it did not capture) stays NaN
    graph.replay()
    torch.cuda.synchronize(device)
    error = relative_error(static, expected)
    if error > bound:
        raise WrongResult(f"the CUDA graph's replay differs from the direct call: relative error {error:.3g} > "
                          f"{bound:.3g}")  # fmt: skip

    def replay() -> torch.Tensor:
        graph.replay()
        return static

    return replay


def graphed_step(
    step: Callable[[], object], leaves: Sequence[torch.Tensor], device: str | torch.device, bound: float
) -> Callable[[], None]:
    """A forward+backward ``step`` captured in a CUDA graph: a closure that replays it.

    Called or replayed, the step adds its gradients into the ``leaves``' ``.grad``, which exist
    after the warm-up, so the graph accumulates into those very buffers (autograd adds in place
    into a gradient nobody else holds). The capture is held to the direct step: both run from
    zeroed gradients (the replay's zeroed after the capture, as :func:`graphed` fills its output
    with NaN, so that work run outside the graph while capturing is not taken for its own), and
    every leaf's gradient must agree within ``bound``; a graph that captured nothing leaves zeros
    and fails there. Raises as :func:`graphed`."""
    device = torch.device(device)
    if device.type != "cuda":
        raise Unsupported(f"CUDA graphs need a CUDA device, case is on {device.type}")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARM_CALLS):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    if any(leaf.grad is None for leaf in leaves):
        raise Unsupported("the step left an input without a gradient to compare the capture against")
    for leaf in leaves:
        leaf.grad.zero_()  # type: ignore[union-attr]
    step()
    expected = [leaf.grad.detach().to(device="cpu", dtype=torch.float64) for leaf in leaves]  # type: ignore[union-attr]
    graph, _ = capture(step, device)  # type: ignore[arg-type]
    for leaf in leaves:  # after the capture: what ran outside the graph while capturing must not count as its work
        leaf.grad.zero_()  # type: ignore[union-attr]
    graph.replay()
    torch.cuda.synchronize(device)
    error = max(relative_error(leaf.grad, want) for leaf, want in zip(leaves, expected, strict=True))  # type: ignore[arg-type]
    if error > bound:
        raise WrongResult(f"the CUDA graph's replay gives other gradients than the direct step: relative error "
                          f"{error:.3g} > {bound:.3g}")  # fmt: skip

    def replay() -> None:
        graph.replay()

    return replay
