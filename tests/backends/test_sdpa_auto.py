"""The ``sdpa`` backend (SDPA's own dispatch): the kernel it reports is the kernel that ran.

Its correctness against the float64 reference is covered by tests/backends/test_backends.py, which
iterates over the registry. Here the reported kernel is held to the ATen operator the PyTorch
profiler saw, on cases that make the dispatcher pick different kernels on this device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right
from torch.profiler import profile

from attnperf.backends import get_backend
from attnperf.backends.sdpa import picked_kernel
from attnperf.benchgrid import Grid
from attnperf.case import Case, make_inputs
from attnperf.correctness import check
from attnperf.mechanisms import get_mechanism
from attnperf.point import measure_point

from ..conftest import DEVICES, SEED

#: The ATen operator each kernel name stands for (aten/src/ATen/native/native_functions.yaml).
KERNEL_OPS = {
    "math": "aten::_scaled_dot_product_attention_math",
    "flash": "aten::_scaled_dot_product_flash_attention",
    "efficient": "aten::_scaled_dot_product_efficient_attention",
    "cudnn": "aten::_scaled_dot_product_cudnn_attention",
}


def ran_kernels(fn: object) -> set[str]:
    """The kernel names whose ATen operator appears in a profile of ``fn()``."""
    with profile() as prof:
        fn()  # type: ignore[operator]
    names = {event.name for event in prof.events()}
    return {kernel for kernel, op in KERNEL_OPS.items() if any(name.startswith(op) for name in names)}


CASES = [
    ("full", {"q_len": 17, "causal": True}),
    ("full", {"q_len": 5, "kv_len": 9, "causal": True, "kv_heads": 2}),  # causal_lower_right
    ("window", {"q_len": 17, "window": 3}),  # a dense boolean mask
    ("alibi", {"q_len": 9, "causal": True}),  # an [1, H, Lq, Lk] additive mask
    ("full", {"q_len": 9, "head_dim": 12, "dtype": "bfloat16"}),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("mechanism", "shape"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_reported_kernel_is_the_one_that_ran(mechanism: str, shape: dict, device: str) -> None:
    case = Case(head_dim=shape.pop("head_dim", 16), device=device, **shape)
    q, k, v = make_inputs(case, seed=SEED)
    runner = get_backend("sdpa").prepare(get_mechanism(mechanism), case, q, k, v)
    assert runner.kernel in KERNEL_OPS  # type: ignore[attr-defined]
    assert ran_kernels(runner) == {runner.kernel}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("q_len", "kwargs", "context"),
    [
        (9, {"dropout_p": 0.5}, None),  # the CPU flash kernel takes no dropout: math on the CPU
        (9, {"attn_mask": torch.ones(1, 9, 9, dtype=torch.bool)}, None),  # a 3-D mask shape
        (9, {}, SDPBackend.MATH),  # an sdpa_kernel context the caller set is honoured
        (5, {"attn_mask": causal_lower_right(5, 9)}, None),  # dispatched in Python first
    ],
    ids=["dropout", "mask-3d", "context-math", "lower-right"],
)
def test_picked_kernel_follows_sdpa(q_len: int, kwargs: dict, context: SDPBackend | None) -> None:
    q, kv = torch.randn(1, 2, q_len, 8), torch.randn(1, 2, 9, 8)

    def call() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, kv, kv, **kwargs)

    if context is None:
        assert ran_kernels(call) == {picked_kernel(q, kv, kv, **kwargs)}
    else:
        with sdpa_kernel(context):
            assert picked_kernel(q, kv, kv, **kwargs) == "math"
            assert ran_kernels(call) == {"math"}


def test_check_and_sweep_rows_say_the_kernel() -> None:
    case = Case(q_len=33, head_dim=16, causal=True)
    result = check("full", "sdpa", case, seed=SEED)
    assert result.status == "ok"
    assert result.kernel in KERNEL_OPS
    assert check("full", "sdpa-math", case, seed=SEED).kernel is None  # forced kernels need no report
    grid = Grid(variants=("causal",), backends=("sdpa",), seq_lens=(64,), heads=2, head_dims=(16,))
    (record,) = measure_point(grid.spec("sdpa", "causal", 64), repeat=3)
    assert record.status == "ok"
    assert record.kernel == result.kernel


#: (q_len, kv_len, causal): cross-attention, more queries than keys, a decode step, short unequal
#: lengths, long equal ones.
PROBED = [(100, 200, False), (200, 300, True), (200, 100, False), (1, 4096, True), (10, 5, False), (999, 999, True)]


@pytest.mark.parametrize(("q_len", "kv_len", "causal"), PROBED, ids=[f"{q}-{k}" for q, k, _ in PROBED])
def test_the_models_kernel_is_asked_on_lengths_in_the_cases_order(q_len, kv_len, causal, monkeypatch) -> None:
    """SdpaAuto.for_case asks SDPA on short inputs whose lengths compare as the case's do: equal
    causal lengths are is_causal, unequal ones causal_lower_right (flash or efficient only), so
    probing 200 × 300 as 64 × 64 would name a kernel the case never runs."""
    from attnperf.backends import sdpa

    asked = []

    def record(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object) -> str:
        asked.append((q.shape[2], k.shape[2], kwargs))
        return picked_kernel(q, k, v, **kwargs)

    monkeypatch.setattr(sdpa, "picked_kernel", record)
    case = Case(q_len=q_len, kv_len=kv_len, causal=causal, head_dim=16)
    get_backend("sdpa").for_case(get_mechanism("full"), case)
    ((probe_q, probe_k, kwargs),) = asked
    assert max(probe_q, probe_k) <= 128
    assert (probe_q > probe_k, probe_q == probe_k) == (q_len > kv_len, q_len == kv_len)
    if causal and q_len == 1:  # a decode step: its one query sees every key, no mask
        assert "attn_mask" not in kwargs
        assert not kwargs.get("is_causal", False)
    elif causal and q_len != kv_len:
        assert (kwargs["attn_mask"].seq_len_q, kwargs["attn_mask"].seq_len_kv) == (probe_q, probe_k)
    else:
        assert kwargs.get("is_causal", False) == causal


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("q_len", "kv_len", "causal"), PROBED, ids=[f"{q}-{k}" for q, k, _ in PROBED])
def test_the_models_kernel_is_the_one_that_runs(q_len, kv_len, causal, device) -> None:
    """for_case names the forced backend of the kernel the prepared call reports (and runs)."""
    case = Case(q_len=q_len, kv_len=kv_len, causal=causal, head_dim=16, heads=2, device=device,
                dtype="bfloat16" if device == "cuda" else "float32")  # fmt: skip
    mechanism, backend = get_mechanism("full"), get_backend("sdpa")
    q, k, v = make_inputs(case, seed=SEED)
    runner = backend.prepare(mechanism, case, q, k, v)
    assert backend.for_case(mechanism, case).name == f"sdpa-{runner.kernel}"  # type: ignore[attr-defined]


def test_only_kernel_forces_one_kernel_and_restores_the_switches_even_on_error() -> None:
    from attnperf.backends.sdpa import only_kernel

    reads = {
        SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled,
        SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled,
        SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled,
        SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled,
    }
    before = {kernel: read() for kernel, read in reads.items()}
    with sdpa_kernel([SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]):  # a caller's own setting
        outer = {kernel: read() for kernel, read in reads.items()}
        with only_kernel(SDPBackend.EFFICIENT_ATTENTION):
            assert {kernel: read() for kernel, read in reads.items()} == {
                kernel: kernel == SDPBackend.EFFICIENT_ATTENTION for kernel in reads
            }
        assert {kernel: read() for kernel, read in reads.items()} == outer
        with pytest.raises(RuntimeError, match="boom"), only_kernel(SDPBackend.MATH):
            raise RuntimeError("boom")
        assert {kernel: read() for kernel, read in reads.items()} == outer
    assert {kernel: read() for kernel, read in reads.items()} == before
