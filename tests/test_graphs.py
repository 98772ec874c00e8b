"""CUDA-graph timing (``sweep --cuda-graphs``): refused off CUDA with the reason; on a GPU the
replay's output is the direct call's and the record says how it was timed."""

from __future__ import annotations

import pytest
import torch

from attnperf.backends import Unsupported
from attnperf.benchgrid import DECODE, PointSpec
from attnperf.correctness import WrongResult
from attnperf.graphs import graphed
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
