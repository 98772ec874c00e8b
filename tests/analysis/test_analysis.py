"""The analyzer held against counts and measurements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnperf.analysis import (
    Flops,
    fit_exponent,
    forward_backward_flops,
    forward_flops,
    min_bytes,
    roofline,
    tail_exponent,
)
from attnperf.analysis.flops import allowed_pairs, visited_block_pairs
from attnperf.analysis.hardware import DATASHEETS, datasheet_for
from attnperf.backends import BACKENDS, get_backend
from attnperf.case import Case, make_inputs
from attnperf.catalog import VARIANTS
from attnperf.measure import measure_cpu_allocated_peak, measure_cuda_peak
from attnperf.mechanisms import get_mechanism

SMALL = {"window": 7, "top_k": 5, "stride": 8, "block": 16}


def flops_of(mechanism: str, backend: str, case: Case) -> Flops:
    """The formula applied to the objects the names stand for (the formulas take no names)."""
    return forward_flops(get_mechanism(mechanism), get_backend(backend), case)


def peak_of(mechanism: str, backend: str, case: Case) -> int:
    return get_backend(backend).predicted_peak_bytes(get_mechanism(mechanism), case)


def test_the_formulas_take_objects_not_names() -> None:
    case = Case(q_len=64)
    with pytest.raises(TypeError, match="get_mechanism"):
        forward_flops("full", get_backend("eager"), case)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="get_backend"):
        forward_flops(get_mechanism("full"), "eager", case)  # type: ignore[arg-type]


def test_the_analysis_imports_only_the_case_and_the_mechanisms() -> None:
    """The formulas sit below the backends, which build on them: an import of anything else of
    attnperf from the analysis package would make a circle or an arrow running back up."""
    folder = Path(__file__).parents[2] / "attnperf" / "analysis"
    allowed = ("attnperf.analysis", "attnperf.case", "attnperf.mechanisms")
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.startswith("attnperf"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_eager_flops_equal_flop_counter_mode_exactly(variant: str) -> None:
    var = VARIANTS[variant]
    case = var.case(96, heads=4, head_dim=16, **SMALL)
    q, k, v = make_inputs(case)
    run = BACKENDS["eager"].prepare(get_mechanism(var.mechanism), case, q, k, v)
    with FlopCounterMode(display=False) as counter:
        run()
    assert flops_of(var.mechanism, "eager", case).executed == counter.get_total_flops()


@pytest.mark.parametrize("variant", ["full", "causal", "gqa", "sliding_window", "alibi", "topk"])
def test_eager_forward_backward_flops_equal_flop_counter_mode_exactly(variant: str) -> None:
    """Whole-tensor code's step executes its forward's products and four more per product pair
    (the gradients of both matmuls' inputs), which the counter sees in the backward."""
    var = VARIANTS[variant]
    case = var.case(96, heads=4, head_dim=16, **SMALL)
    q, k, v = make_inputs(case, requires_grad=True)
    run = BACKENDS["eager"].prepare(get_mechanism(var.mechanism), case, q, k, v)
    with FlopCounterMode(display=False) as counter:
        run().backward(torch.ones(case.batch, case.heads, case.q_len, case.head_dim))
    step = forward_backward_flops(get_mechanism(var.mechanism), BACKENDS["eager"], case)
    assert step.executed == counter.get_total_flops()
    forward = flops_of(var.mechanism, "eager", case)
    if var.mechanism == "topk":  # the selection's scores once, then 4 products of length D per kept key
        assert step.useful == forward.useful + 8 * 4 * 16 * 96 * case.top_k
    else:  # FlashAttention's convention: a backward is 2.5 forwards
        assert step.useful == 3.5 * forward.useful


def test_forward_backward_flops_of_fused_kernels_and_the_model_missing() -> None:
    case = Case(q_len=2048, heads=2, head_dim=32, causal=True)
    forward = flops_of("full", "sdpa-flash", case)
    step = forward_backward_flops(get_mechanism("full"), get_backend("sdpa-flash"), case)
    assert step.executed == 3.5 * forward.executed  # the scores recomputed in the backward
    topk = Case(q_len=2048, heads=2, head_dim=32, causal=True, top_k=32)
    kept = 8 * 2 * 32 * 2048 * 32
    triton_step = forward_backward_flops(get_mechanism("topk"), get_backend("triton"), topk)
    assert triton_step.executed == flops_of("topk", "triton", topk).executed + kept
    with pytest.raises(NotImplementedError, match="no forward\\+backward FLOP model for linear"):
        forward_backward_flops(get_mechanism("linear"), get_backend("tiled"), Case(q_len=64))


def test_useful_pairs_match_brute_force_and_theory() -> None:
    full = get_mechanism("full")
    n = 300
    assert allowed_pairs(full, Case(q_len=n)) == n * n
    assert allowed_pairs(full, Case(q_len=n, causal=True)) == n * (n + 1) // 2
    window = get_mechanism("window")
    case = Case(q_len=n, window=16, causal=True)
    assert allowed_pairs(window, case) == sum(min(16, i + 1) for i in range(n))
    # flex/tiled visit whole 128-blocks: more than useful, far less than dense
    visited = visited_block_pairs(window, Case(q_len=4096, window=256, causal=True), block=128)
    assert 4096 * 256 < visited < 4096 * 4096 / 8


def test_executed_flops_follow_the_backend() -> None:
    case = Case(q_len=2048, heads=2, head_dim=32, window=128, causal=True)
    eager = flops_of("window", "eager", case)
    flex = flops_of("window", "flex", case)
    sdpa = flops_of("window", "sdpa-efficient", case)
    assert eager.useful == flex.useful == sdpa.useful
    assert eager.executed == 4 * 2 * 32 * 2048 * 2048  # dense
    assert sdpa.executed == eager.executed  # a dense boolean mask: nothing skipped
    assert flex.useful < flex.executed < eager.executed / 5
    # SDPA's own causal mode skips blocks
    causal = Case(q_len=2048, causal=True)
    assert flops_of("full", "sdpa-flash", causal).executed < 0.6 * flops_of("full", "eager", causal).executed


def test_min_bytes_and_roofline() -> None:
    case = Case(batch=2, heads=8, kv_heads=2, q_len=1, kv_len=4096, head_dim=64, dtype="bfloat16")
    assert min_bytes(case) == 2 * (2 * 2 * 8 * 64 + 2 * 2 * 2 * 4096 * 64)
    r = roofline(get_mechanism("decode"), get_backend("flash-attn4"), case, DATASHEETS["h100-sxm"])
    assert r.limited_by == "memory"  # one token against a cache: bound by reading the cache
    long = Case(q_len=16384, heads=16, head_dim=128, dtype="bfloat16")
    dense = roofline(get_mechanism("full"), get_backend("flash-attn4"), long, DATASHEETS["h100-sxm"])
    assert dense.limited_by == "compute"
    assert datasheet_for("NVIDIA H100 80GB HBM3") is DATASHEETS["h100-sxm"]


def test_memory_predictions_scale_as_the_theory_says() -> None:
    small, big = Case(q_len=1024), Case(q_len=2048)
    assert peak_of("full", "eager", big) / peak_of("full", "eager", small) == pytest.approx(4, rel=0.05)
    assert peak_of("full", "flex", big) / peak_of("full", "flex", small) == pytest.approx(2, rel=0.01)
    lin_small, lin_big = Case(q_len=1024, causal=True), Case(q_len=2048, causal=True)
    assert peak_of("linear", "tiled", lin_big) < 2.1 * peak_of("linear", "tiled", lin_small)


def test_fit_recovers_a_known_exponent_with_an_interval() -> None:
    lengths = [256, 512, 1024, 2048, 4096]
    noisy = [3e-9 * n**2 * f for n, f in zip(lengths, [1.02, 0.97, 1.01, 0.99, 1.0], strict=True)]
    fit = fit_exponent(lengths, noisy)
    assert fit.low < 2 < fit.high
    assert fit.high - fit.low < 0.1
    with pytest.raises(ValueError, match="at least two"):
        fit_exponent([1], [1])


#: Shapes for the CPU check of the memory models: self-attention MHA/GQA/MQA, decode steps and
#: cross attention with few or many queries.
CPU_MEMORY_SHAPES = [
    {"q_len": 512}, {"q_len": 512, "kv_heads": 2}, {"q_len": 512, "kv_heads": 1}, {"q_len": 1, "kv_len": 1024},
    {"q_len": 64, "kv_len": 1024}, {"q_len": 512, "kv_len": 64}, {"q_len": 1, "kv_len": 1024, "kv_heads": 1},
]  # fmt: skip
CPU_MEMORY_GRID = [
    pytest.param(mechanism, backend, dtype, causal, shape, id=f"{mechanism}-{backend}-{dtype}-{causal}-{i}")
    for mechanism, backends in (("full", ("eager", "sdpa-math", "tiled")), ("linear", ("eager", "tiled")))
    for backend in backends
    for dtype in ("float32", "bfloat16", "float64")
    for causal in (False, True)
    for i, shape in enumerate(CPU_MEMORY_SHAPES)
    if not (causal and shape["q_len"] > shape.get("kv_len", shape["q_len"]))
]


@pytest.mark.parametrize(("mechanism", "backend", "dtype", "causal", "shape"), CPU_MEMORY_GRID)
def test_predicted_peak_memory_matches_the_cpu_allocator(
    mechanism: str, backend: str, dtype: str, causal: bool, shape: dict[str, int]
) -> None:
    """The backends written in plain PyTorch allocate the same tensors on every device, so their
    models are checked here against the CPU allocator's exact peak (the H100 agreed with it to
    the byte on the shapes measured there). Within 10%, or 320 KiB where that is more: in bf16
    decode steps (q_len 1) CPU matrix-vector products keep a few hundred KiB of converted
    operands that the models leave out. Fused kernels (sdpa-flash/-efficient/-cudnn, flex, the
    libraries) keep CPU workspaces unlike their CUDA ones: their models are held to the H100."""
    case = Case(batch=2, heads=8, head_dim=64, dtype=dtype, causal=causal, **shape)
    mech = get_mechanism(mechanism)
    q, k, v = make_inputs(case)
    run = BACKENDS[backend].prepare(mech, case, q, k, v)
    with torch.no_grad():
        run()
        measured = measure_cpu_allocated_peak(run)
    predicted = BACKENDS[backend].predicted_peak_bytes(mech, case)
    assert predicted == pytest.approx(measured, rel=0.10, abs=320 * 1024), f"{case.id}: {predicted} vs {measured}"


def test_tail_fit_sees_the_asymptote_that_a_fixed_cost_hides() -> None:
    lengths = [8192, 1024, 2048, 4096, 4096]  # unsorted, with a repeated length
    times = [0.05 + 1e-8 * n**2 for n in lengths]  # a fixed per-call cost plus n²
    whole, tail = fit_exponent(lengths, times), tail_exponent(lengths, times)
    assert whole.exponent < 1.3
    assert 1.7 < tail.exponent < 2.0
    assert sorted(set(tail.lengths)) == [4096, 8192]
    with pytest.raises(ValueError, match="not all be equal"):
        tail_exponent([4096, 4096], [1.0, 1.1])


#: Known open case: gqa × sdpa-cudnn × 1024 × bfloat16 measured 1.030 in two runs that followed
#: other CUDA tests in the process, and failed the bound once (2026-11-28, ``-k on_gpu`` alone in
#: a fresh process; the measured value was cut from the returned log). Not loosened: the next
#: GPU session prints its MEMORY line to find whether cuDNN allocates a per-call workspace there.
GPU_MEMORY_GRID = [
    (variant, backend, n, dtype)
    for variant in ("full", "causal", "sliding_window", "gqa", "alibi")
    for backend in ("eager", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex")
    for n in (1024, 4096)
    for dtype in ("float32", "bfloat16")
] + [
    (variant, backend, n, dtype)
    for variant in ("linear", "linear_causal")
    for backend in ("eager", "tiled", "fla")
    for n in (1024, 4096)
    for dtype in ("float32", "bfloat16")
]


@pytest.mark.gpu
@pytest.mark.parametrize(("variant", "backend", "n", "dtype"), GPU_MEMORY_GRID)
def test_predicted_peak_memory_within_10_percent_on_gpu(variant: str, backend: str, n: int, dtype: str) -> None:
    var = VARIANTS[variant]
    case = var.case(n, batch=2, heads=8, head_dim=64, dtype=dtype, device="cuda", window=256)
    mech = get_mechanism(var.mechanism)
    reason = BACKENDS[backend].supports(mech, case)
    if reason:
        pytest.skip(reason)
    q, k, v = make_inputs(case)
    run = BACKENDS[backend].prepare(mech, case, q, k, v)
    with torch.no_grad():
        try:
            run()  # warm: compilation, cuBLAS workspace and kernel caches stay out of the measurement
        except RuntimeError as exc:
            if "No available kernel" in str(exc):
                pytest.skip(str(exc).splitlines()[0])
            raise
        measured = measure_cuda_peak(run, "cuda")
    predicted = BACKENDS[backend].predicted_peak_bytes(mech, case)
    ratio = predicted / measured
    print(f"MEMORY {variant} {backend} {case.id} predicted {predicted} measured {measured} ratio {ratio:.3f}")
    assert predicted == pytest.approx(measured, rel=0.10)
