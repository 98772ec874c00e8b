"""Every (mechanism, backend) pair against the float64 reference, on fresh random inputs.

The pairs come from the registry, so a newly registered backend is covered without touching
this file. A pair the machine cannot run is skipped with the backend's own reason; a wrong
result fails with its error and bound. Shapes: odd lengths 1, 17, 257, q_len ≠ kv_len,
MHA / GQA / MQA, causal and not, every dtype the backend accepts.

Backends that build a kernel per shape (flex compiles, about 5–20 s on the CPU; onnxruntime
exports, about 3 s; Triton compiles on a GPU and is checked on the CPU by tests/backends/test_triton.py) run a
reduced grid that still covers each of their mechanisms once, plus
GQA, cross and decode shapes.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from attnperf.analysis import forward_flops
from attnperf.backends import BACKENDS
from attnperf.backends.rotation import rotation_for
from attnperf.case import Case, make_inputs
from attnperf.correctness import check
from attnperf.mechanisms import MECHANISMS
from attnperf.mechanisms.positional import rotate_half_rope, rotate_half_rope_seq_major

from ..conftest import DEVICES, SEED

#: Options that make each mechanism meaningful at these small lengths.
OPTIONS: dict[str, dict[str, int]] = {
    "window": {"window": 5},
    "topk": {"top_k": 4},
    "strided": {"stride": 4},
    "strided_columns": {"stride": 3},
    "fixed": {"stride": 4, "num_global": 1},
    "bigbird": {"block": 8, "num_random": 1},
    "bigbird_tokens": {"window": 4, "num_global": 1, "num_random": 2},
}
SHAPES = [(1, 1), (17, 17), (257, 257), (17, 33), (1, 257)]  # (q_len, kv_len)
HEAD_LAYOUTS = [(4, 4), (4, 2), (4, 1)]  # (heads, kv_heads): MHA, GQA, MQA
DTYPES = ["float64", "float32", "bfloat16", "float16"]
CAUSAL = {name: (True,) if name == "decode" else (False, True) for name in MECHANISMS}

#: The reduced grid: (mechanism, q_len, kv_len, kv_heads, causal), one compile or export each.
COMPILED_GRID = [
    ("full", 17, 33, 2, False),
    ("full", 257, 257, 1, True),
    ("window", 67, 67, 4, True),
    ("window", 67, 67, 4, False),
    ("strided", 33, 33, 2, True),
    ("strided_columns", 33, 33, 4, True),
    ("fixed", 40, 40, 2, True),
    ("bigbird", 40, 40, 4, False),
    ("bigbird_tokens", 40, 40, 4, True),
    ("alibi", 17, 33, 4, True),
    ("rope", 17, 33, 2, False),
    ("decode", 1, 67, 1, True),
    ("linear", 33, 33, 2, True),
    ("linear", 17, 33, 4, False),
    ("topk", 33, 33, 2, True),
    ("topk", 17, 33, 4, False),
    ("topk", 1, 67, 1, True),
]


def small_case(mechanism: str, q_len: int, kv_len: int, heads: int, kv_heads: int, dtype: str, device: str,
               causal: bool) -> Case:  # fmt: skip
    return Case(heads=heads, kv_heads=kv_heads, q_len=q_len, kv_len=kv_len, head_dim=16, dtype=dtype, device=device,
                causal=causal, **OPTIONS.get(mechanism, {}))  # fmt: skip


def grid_cases(mechanism: str, device: str) -> list[Case]:
    cases = []
    for (q_len, kv_len), (heads, kv_heads), causal, dtype in itertools.product(
        SHAPES, HEAD_LAYOUTS, CAUSAL[mechanism], DTYPES
    ):
        case = small_case(mechanism, q_len, kv_len, heads, kv_heads, dtype, device, causal)
        try:
            MECHANISMS[mechanism].validate(case)
        except ValueError:
            continue  # e.g. top_k > kv_len at kv_len 1: not a case of this mechanism
        cases.append(case)
    return cases


def compiled_cases(mechanism: str, device: str) -> list[Case]:
    # One dtype per device keeps the compiles few: float32 on the CPU, bfloat16 (the dtype
    # flex is timed in) on CUDA.
    dtypes = ["float32"] if device == "cpu" else ["bfloat16"]
    return [
        small_case(name, q_len, kv_len, 4, kv_heads, dtype, device, causal)
        for name, q_len, kv_len, kv_heads, causal in COMPILED_GRID
        for dtype in dtypes
        if name == mechanism
    ]


def params() -> list[object]:
    out = []
    for backend_name, backend in BACKENDS.items():
        for mechanism in sorted(backend.mechanisms):
            for device in DEVICES:
                if device not in backend.devices:
                    continue
                cases = (
                    compiled_cases(mechanism, device) if backend.compiles_per_shape else grid_cases(mechanism, device)
                )
                for case in cases:
                    out.append(pytest.param(mechanism, backend_name, case, id=f"{mechanism}-{backend_name}-{case.id}"))
    return out


@pytest.mark.parametrize(("mechanism", "backend", "case"), params())
def test_backend_matches_float64_reference(mechanism: str, backend: str, case: Case) -> None:
    result = check(mechanism, backend, case, seed=SEED)
    if result.status == "unsupported":
        pytest.skip(result.reason or "unsupported")
    assert result.status == "ok", (
        f"{backend} on {mechanism} {case.id}: rel. error {result.error:.3g} > bound {result.bound:.3g} (seed {SEED})"
    )


def test_every_mechanism_has_eager_and_another_cpu_backend() -> None:
    for name in MECHANISMS:
        cpu = [b for b, backend in BACKENDS.items() if name in backend.mechanisms and "cpu" in backend.devices]
        assert "eager" in cpu, f"{name}: CPU backends {cpu}"
        assert len(cpu) >= 2, f"{name}: CPU backends {cpu}"


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_has_a_flop_and_a_memory_model_for_every_mechanism_it_implements(name: str) -> None:
    """What the analyzer needs is part of the backend: a backend registered without its models
    fails here, not in ``attnperf analyze``."""
    backend = BACKENDS[name]
    assert backend.mechanisms, f"{name} implements nothing"
    for mechanism in sorted(backend.mechanisms):
        for causal in CAUSAL[mechanism]:
            q_len = 1 if mechanism == "decode" else 256
            case = Case(heads=4, kv_heads=2, q_len=q_len, kv_len=256, head_dim=16, causal=causal,
                        **OPTIONS.get(mechanism, {}))  # fmt: skip
            flops = forward_flops(MECHANISMS[mechanism], backend, case)
            assert flops.useful > 0, (name, mechanism, causal)
            assert flops.executed > 0, (name, mechanism, causal)
            peak = backend.predicted_peak_bytes(MECHANISMS[mechanism], case)
            assert isinstance(peak, int), (name, mechanism, causal, peak)
            assert peak > 0, (name, mechanism, causal, peak)


def test_backends_hand_their_rotation_to_a_rotating_mechanism() -> None:
    """Mechanisms import no kernels: RoPE rotates with the rotation a backend passes in (Triton's
    on CUDA, chosen by attnperf.backends.rotation; the eager one on the CPU), and with its own eager
    rotation when none is given. A mechanism that rotates nothing gets no transform."""
    case = Case(heads=2, kv_heads=1, q_len=17, head_dim=8)
    q, k, _ = make_inputs(case)
    assert BACKENDS["eager"].qk_transform(MECHANISMS["full"], case, "cpu", q.dtype) is None
    assert rotation_for("cpu", seq_major=False) is rotate_half_rope
    assert rotation_for("cpu", seq_major=True) is rotate_half_rope_seq_major
    rotated: list[torch.Size] = []

    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rotated.append(x.shape)
        return -rotate_half_rope(x, cos, sin)  # negated: proves this rotation, not the default, ran

    rope = MECHANISMS["rope"]
    given = rope.qk_transform(case, "cpu", q.dtype, rotate=rotate)(q, k)
    assert rotated == [q.shape, k.shape]
    backend = BACKENDS["eager"].qk_transform(rope, case, "cpu", q.dtype)(q, k)
    default = rope.qk_transform(case, "cpu", q.dtype)(q, k)
    for mine, theirs, own in zip(given, backend, default, strict=True):
        assert torch.equal(theirs, own)
        assert torch.equal(mine, -own)


def test_whole_tensor_backends_execute_every_score() -> None:
    """onnxruntime runs the exported eager graph: credited with eager's dense FLOPs, not with the
    block skipping of a fused kernel (it once was: 2.28 instead of 4.29 GFLOP, causal 2048)."""
    case = Case(heads=8, q_len=2048, head_dim=64, causal=True)
    dense = 4 * 8 * 64 * 2048 * 2048
    for name in ("eager", "sdpa-math", "onnxruntime"):
        assert forward_flops(MECHANISMS["full"], BACKENDS[name], case).executed == dense, name
    assert forward_flops(MECHANISMS["full"], BACKENDS["flex"], case).executed < 0.6 * dense


def test_onnxruntime_backends_one_provider_each_and_say_why_they_cannot_run() -> None:
    """One backend name per execution provider; a provider this build lacks is named as the reason
    (beside "runs on cuda only" on a CPU case), never silently replaced by another provider."""
    import onnxruntime

    from attnperf.backends.onnxrt import OnnxRuntime

    onnx_backends = {name: b for name, b in BACKENDS.items() if isinstance(b, OnnxRuntime)}
    assert set(onnx_backends) == {"onnxruntime", "onnxruntime-cuda", "onnxruntime-trt"}
    firsts = [b.providers[0] for b in onnx_backends.values()]
    assert len(set(firsts)) == len(firsts), firsts
    available = onnxruntime.get_available_providers()
    case = Case(heads=4, q_len=64, head_dim=16, causal=True)
    for name, backend in onnx_backends.items():
        reason = backend.supports(MECHANISMS["full"], case) or ""
        if backend.providers[0] not in available:
            assert f"this onnxruntime {onnxruntime.__version__} build has no {backend.providers[0]})" in reason, reason
        else:  # the provider is here: no install reason (the row runs where its device is)
            assert "needs onnxruntime" not in reason, (name, reason)
        if "cpu" not in backend.devices:
            assert "runs on cuda only" in reason, (name, reason)
    assert BACKENDS["onnxruntime"].supports(MECHANISMS["full"], case) is None
    if "CUDAExecutionProvider" not in available:  # what `attnperf list` prints on a CPU-only build
        assert BACKENDS["onnxruntime-cuda"].provider_reason() == (
            "needs onnxruntime-gpu (the 1.31.1 wheel for CUDA 13 is 256 MB; "
            f"this onnxruntime {onnxruntime.__version__} build has no CUDAExecutionProvider)"
        )
    if "TensorrtExecutionProvider" not in available:
        trt = BACKENDS["onnxruntime-trt"].provider_reason() or ""
        assert trt.startswith("needs onnxruntime-gpu and TensorRT 10's libraries (libnvinfer.so.10 and "), trt
        assert "libnvonnxparser.so.10" in trt
        assert "size not measured" in trt
    half = Case(heads=4, q_len=64, head_dim=16, dtype="float16")
    assert "dtype float16 unsupported" in (BACKENDS["onnxruntime"].supports(MECHANISMS["full"], half) or "")


def test_onnxruntime_on_cuda_refuses_graphs_with_a_tensor_of_more_than_2_31_elements() -> None:
    """At 16k tokens and 16 heads ONNX Runtime's CUDA provider stopped with an illegal memory access
    (a poisoned CUDA context ends a sweep): such a case is refused before it runs, for the softmax
    scores and for causal linear attention's running states of the same size; non-causal linear
    attention (no tensor past O(n·D)) is not."""
    for name in ("onnxruntime-cuda", "onnxruntime-trt"):
        backend = BACKENDS[name]
        long = Case(heads=16, q_len=16384, head_dim=128, dtype="float16", device="cuda", causal=True)
        reasons = backend.case_reasons(MECHANISMS["full"], long)
        assert reasons == [
            "the exported graph's scores (B·H·Lq·Lk) hold 4,294,967,296 elements, past 2³¹ − 1, where ONNX "
            "Runtime's CUDA provider stopped with an illegal memory access"
        ], reasons
        assert backend.case_reasons(MECHANISMS["full"], dataclasses.replace(long, q_len=8192)) == []
        linear = backend.case_reasons(MECHANISMS["linear"], long)
        assert len(linear) == 1, linear
        assert "running states (B·H·Lk·D·D) hold 4,294,967,296 elements" in linear[0], linear
        assert backend.case_reasons(MECHANISMS["linear"], dataclasses.replace(long, causal=False)) == []


def test_onnxruntime_session_on_another_provider_than_the_backends_is_refused() -> None:
    """ONNX Runtime falls back to the CPU provider when the one asked for cannot load: such a session
    must be refused, or CPU figures would be recorded under a GPU provider's name."""
    import onnxruntime

    from attnperf.backends import Unsupported
    from attnperf.backends.onnxrt import OnnxRuntime
    from attnperf.case import make_inputs

    class AskingForCuda(OnnxRuntime):
        name = "onnxruntime-asking-for-cuda"
        providers = ("CUDAExecutionProvider",)

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has the CUDA provider: no fallback to provoke")
    case = Case(heads=2, q_len=16, head_dim=8)
    q, k, v = make_inputs(case, seed=SEED)
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"), pytest.raises(Unsupported, match="could not start"):
        AskingForCuda().prepare(MECHANISMS["full"], case, q, k, v)


def test_onnxruntime_gpu_peak_is_not_read_from_torchs_allocator() -> None:
    """The CUDA and TensorRT providers allocate from their own arena: torch's CUDA statistics would
    read about zero, so the peak is reported as not measured (and the call is not even made)."""
    from attnperf.measure import measure_peak

    def must_not_run() -> None:
        raise AssertionError("measure_peak ran the call although it measures nothing")

    for name in ("onnxruntime-cuda", "onnxruntime-trt"):
        backend = BACKENDS[name]
        peak, kind = measure_peak(must_not_run, "cuda", own_cuda_allocator=backend.own_cuda_allocator)
        assert peak is None, (name, peak)
        assert kind.startswith("not measured"), (name, kind)
    peak, kind = measure_peak(lambda: None, "cpu", own_cpu_allocator=BACKENDS["onnxruntime"].own_cpu_allocator)
    assert peak is None, peak
    assert kind.startswith("not measured"), kind
