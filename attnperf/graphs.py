"""A verified runner replayed as a CUDA graph: what a step costs once Python and the launches of
its kernels are gone, as a decoder that captures its step (vLLM, TensorRT-LLM, ``torch.compile``'s
``mode="reduce-overhead"``) runs it.

A decode step over a 4k cache moves 34 MB (B 1, H 16, D 128, bf16), about 8 µs at the H200's
bandwidth, while one call from Python costs tens of µs: timed call by call, such points measure
the host. ``attnperf sweep --cuda-graphs`` times the replay instead. The replay computes on the
runner's own inputs; its output is held against the direct call's (which was checked against the
float64 reference before), so a graph that captured the wrong thing is never timed.
"""

from __future__ import annotations

import torch

from attnperf.backends.base import Runner, Unsupported
from attnperf.correctness import WrongResult, relative_error

#: Direct calls before capture: the first compiles or JIT-builds (flex, flash-attn-4, Triton),
#: the others settle allocator pools and autotuning outside the graph.
WARM_CALLS = 3


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
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static = runner()
    except RuntimeError as exc:
        torch.cuda.synchronize(device)
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        raise Unsupported(f"cannot be captured in a CUDA graph: {str(exc).strip().splitlines()[0]}") from exc
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
