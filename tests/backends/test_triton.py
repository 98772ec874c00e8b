"""attnperf's own Triton kernels against the float64 reference, on the CPU in Triton's interpreter.

The interpreter reads ``TRITON_INTERPRET`` when a kernel is defined, and the rest of the suite
must not run Triton kernels interpreted (every CLI default would become slow), so the checks run
in a subprocess with the variable set. Each case must come back "ok": an "unsupported" answer
would be a check that did not happen, and fails here. On a GPU the same kernels are held to the
reference by tests/backends/test_backends.py (the compiled grid, bfloat16). Without a GPU they are also
compiled for sm_90 (Hopper) here, which catches what the interpreter lets through (a global that
is not a constexpr was one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from attnperf.backends import get_backend
from attnperf.case import Case
from attnperf.mechanisms import get_mechanism

from ..conftest import SEED

pytest.importorskip("triton", reason="Triton is not installed (the tests session installs it)")

#: (mechanism, Case keywords): GQA and MQA, cross and decode shapes, several query and key blocks
#: (top-k's BLOCK_M 64, BLOCK_N 64 and 128 lanes, with blocks every row sees whole and diagonal
#: ones; linear's chunk 64), a head dim that is not a power of two, a k that is not one and one
#: whose value rows are gathered in several groups, every dtype. Head dim 16 keeps the interpreter
#: to seconds a case.
CASES: list[tuple[str, dict[str, object]]] = [
    ("topk", {"heads": 4, "kv_heads": 2, "q_len": 33, "kv_len": 33, "causal": True, "top_k": 4}),
    ("topk", {"heads": 4, "kv_heads": 4, "q_len": 17, "kv_len": 33, "causal": False, "top_k": 4}),
    ("topk", {"heads": 4, "kv_heads": 1, "q_len": 1, "kv_len": 67, "causal": True, "top_k": 4}),
    ("topk", {"heads": 2, "kv_heads": 2, "q_len": 130, "kv_len": 130, "causal": True, "top_k": 5}),
    ("topk", {"heads": 2, "kv_heads": 1, "q_len": 40, "kv_len": 40, "causal": True, "top_k": 4, "head_dim": 80}),
    ("topk", {"heads": 1, "kv_heads": 1, "q_len": 70, "kv_len": 200, "causal": True, "top_k": 20}),
    ("topk", {"heads": 4, "kv_heads": 2, "q_len": 17, "kv_len": 33, "causal": True, "top_k": 4, "dtype": "bfloat16"}),
    ("topk", {"heads": 4, "kv_heads": 2, "q_len": 17, "kv_len": 33, "causal": False, "top_k": 4, "dtype": "float16"}),
    ("linear", {"heads": 4, "kv_heads": 2, "q_len": 33, "kv_len": 33, "causal": True}),
    ("linear", {"heads": 4, "kv_heads": 4, "q_len": 17, "kv_len": 33, "causal": False}),
    ("linear", {"heads": 4, "kv_heads": 1, "q_len": 1, "kv_len": 67, "causal": True}),
    ("linear", {"heads": 2, "kv_heads": 2, "q_len": 130, "kv_len": 130, "causal": True}),
    ("linear", {"heads": 2, "kv_heads": 1, "q_len": 70, "kv_len": 200, "causal": False, "head_dim": 80}),
    ("linear", {"heads": 4, "kv_heads": 2, "q_len": 17, "kv_len": 145, "causal": True, "dtype": "bfloat16"}),
    ("linear", {"heads": 4, "kv_heads": 2, "q_len": 33, "kv_len": 33, "causal": True, "dtype": "float16"}),
]
#: Top-k's backward against the float64 reference's gradients: GQA, cross, decode, several query
#: blocks, and half precision (its gradients are summed in float32).
BACKWARD_CASES: list[tuple[str, dict[str, object]]] = [
    ("topk", {"heads": 4, "kv_heads": 2, "q_len": 33, "kv_len": 33, "causal": True, "top_k": 4}),
    ("topk", {"heads": 4, "kv_heads": 4, "q_len": 17, "kv_len": 33, "causal": False, "top_k": 5}),
    ("topk", {"heads": 4, "kv_heads": 1, "q_len": 1, "kv_len": 67, "causal": True, "top_k": 4}),
    ("topk", {"heads": 2, "kv_heads": 2, "q_len": 70, "kv_len": 70, "causal": True, "top_k": 4}),
    ("topk", {"heads": 4, "kv_heads": 2, "q_len": 17, "kv_len": 33, "causal": True, "top_k": 4, "dtype": "bfloat16"}),
]

SCRIPT = """
import json, sys
import torch
from attnperf.case import Case, make_inputs
from attnperf.correctness import check, relative_error
from attnperf.mechanisms import get_mechanism
from attnperf.backends.triton.topk import first_passes, topk_attention

seed, cases, backward_cases = json.loads(sys.argv[1])
for mechanism, shape in cases:
    case = Case(**{"head_dim": 16, **shape})
    print(json.dumps(check(mechanism, "triton", case, seed=seed).as_dict()), flush=True)
for mechanism, shape in backward_cases:
    case = Case(**{"head_dim": 16, **shape})
    print(json.dumps(check(mechanism, "triton", case, seed=seed, backward=True).as_dict()), flush=True)

# Multiples of 1/8 below 4 in magnitude: every score is then exact in float32 and float64, in any order
# of summation, so equal keys score exactly equal in the reference too. With random inputs the float64
# matmul summed some columns in another order, and the reference itself split ties by an ulp (seed
# 20261128: the overflow case's rows 1 and 7 of head 1 kept other keys than the tie rule's).
def exact(*tensors):
    for t in tensors:
        t.copy_((t * 8).round().clamp(-31, 31) / 8)


# Ties: every key twice (j and j + 20), so scores come in equal pairs; with k = 3 the third pick
# splits a pair, where the lower key index must win.
case = Case(heads=2, q_len=8, kv_len=40, head_dim=16, top_k=3)
q, k, v = make_inputs(case, seed=seed)
exact(q, k)
k[:, :, 20:] = k[:, :, :20]
v[:, :, 20:] = -v[:, :, :20]  # a tie broken the wrong way picks a negated value row
out = topk_attention(q, k, v, top_k=3, causal=False, scale=case.scale)
ties = relative_error(out, get_mechanism("topk").reference(q, k, v, case, None))

# Overflow: one key repeated, so every score of a row is equal and all 40 keys are candidates,
# past the row's 8 * 4 = 32 slots: the streaming kernel must answer (the 4 lowest indices), and
# record them for the backward: the value gradient lands on keys 0-3 only.
case = Case(heads=2, q_len=8, kv_len=40, head_dim=16, top_k=4)
q, k, v = make_inputs(case, seed=seed)
exact(q, k)
k[:] = k[:, :, :1]
v.requires_grad_(True)
out = topk_attention(q, k, v, top_k=4, causal=False, scale=case.scale)
grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
out.backward(grad)
v64 = v.detach().double().requires_grad_(True)
reference = get_mechanism("topk").weights(q.double(), k.double(), case) @ v64  # .reference detaches its inputs
reference.backward(grad.double())
overflow = max(relative_error(out.detach(), reference), relative_error(v.grad, v64.grad))

# The threshold on random inputs, past one block of lanes (400 keys, 128 lanes), causal and not:
# never above a row's k-th largest score (it would drop a key the row keeps), and few candidates a
# row, none past the row's slots (else every call would fall back to the streaming pass). Rows with
# fewer keys than k (t0 = -inf) are the causal CASES above. 32 queries: one program, for time.
passes = {}
for causal in (False, True):
    case = Case(heads=2, q_len=32, kv_len=400, head_dim=16, top_k=4, causal=causal)
    q, k, v = make_inputs(case, seed=seed)
    t0, candidates, counts = first_passes(q, k, top_k=4, causal=causal, scale=case.scale)
    scores = (q.double() @ k.double().transpose(-1, -2)) * case.scale
    if causal:  # bottom-right: query i sees keys up to 368 + i
        scores = scores.masked_fill(torch.ones(32, 400, dtype=torch.bool).triu(369), float("-inf"))
    kth = scores.topk(4, dim=-1).values[..., -1].flatten()
    passes[str(causal)] = {"below_kth": bool((t0.double() <= kth + 1e-6).all()),
                           "max_count": int(counts.max()), "mean_count": float(counts.float().mean()),
                           "slots": candidates.shape[1]}
    # Exact inputs: every candidate row must be exactly the keys scoring >= t0 - margin (pass 2 appends a
    # block's keys a round at a time when a row takes few, by prefix sums otherwise; both must agree).
    exact(q, k)
    t0, candidates, counts = first_passes(q, k, top_k=4, causal=causal, scale=case.scale)
    scores = ((q.double() @ k.double().transpose(-1, -2)) * case.scale).float().flatten(0, 2)
    if causal:
        scores = scores.masked_fill(torch.ones(32, 400, dtype=torch.bool).triu(369).repeat(2, 1), float("-inf"))
    floor = t0 - (t0.abs() + 0.001) * 0.000244140625
    keys = 4294967295 - (candidates & 4294967295)
    passes[str(causal)]["exact_sets"] = all(
        sorted(keys[row, : counts[row]].tolist()) == (scores[row] >= floor[row]).nonzero().flatten().tolist()
        for row in range(scores.shape[0])
    )
# Scores of -inf (a key with -inf against positive queries) are never candidates: a row counts only the
# keys it stores, on the prefix-sum path (6 keys, k 8: every finite key taken) and the rounds' (3 keys).
# Scores of +inf: t0 = +inf must stay +inf (a margin of inf - inf would take nothing).
gen = torch.Generator().manual_seed(seed)
q = torch.rand(1, 1, 2, 16, generator=gen) + 0.1
edges = {}
for keys, minus, top_k in ((6, (2,), 8), (3, (0, 1), 4)):
    k = torch.randn(1, 1, keys, 16, generator=gen)
    v = torch.randn(1, 1, keys, 16, generator=gen)
    for j in minus:
        k[0, 0, j] = 0
        k[0, 0, j, 0] = float("-inf")
    t0, candidates, counts = first_passes(q, k, top_k=top_k, causal=False, scale=0.25)
    out = topk_attention(q, k, v, top_k=top_k, causal=False, scale=0.25)
    reference = torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.25, -1) @ v.double()  # all kept
    edges[f"minus-{keys}"] = {"counts": counts.tolist(), "error": relative_error(out, reference)}
k = torch.randn(1, 1, 40, 16, generator=gen)
for j in (3, 7, 9, 11, 20):
    k[0, 0, j] = 0
    k[0, 0, j, 0] = float("inf")
t0, candidates, counts = first_passes(q, k, top_k=4, causal=False, scale=0.25)
edges["plus"] = {"t0": t0.tolist(), "counts": counts.tolist()}
# The backward into a query tensor that is a view (q of a fused qkv projection): dq has strides of its own.
base = torch.randn(1, 2, 40, 48, generator=gen)
q = base[..., :16].requires_grad_(True)
k, v = (torch.randn(1, 2, 40, 16, generator=gen).requires_grad_(True) for _ in range(2))
grad = torch.randn(1, 2, 40, 16, generator=gen)
topk_attention(q, k, v, top_k=4, causal=True, scale=0.25).backward(grad)
dense = q.detach().clone().requires_grad_(True)
topk_attention(dense, k.detach(), v.detach(), top_k=4, causal=True, scale=0.25).backward(grad)
edges["view_dq"] = float((q.grad - dense.grad).abs().max())
print(json.dumps({"ties": ties, "overflow": overflow, "passes": passes, "edges": edges}))
"""


def test_triton_kernels_match_the_float64_reference_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([SEED, CASES, BACKWARD_CASES])], env=env,
                          capture_output=True, text=True, timeout=1200, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    results, ties = lines[:-1], lines[-1]
    assert len(results) == len(CASES) + len(BACKWARD_CASES)
    for (mechanism, shape), result in zip(CASES + BACKWARD_CASES, results, strict=True):
        assert result["status"] == "ok", (mechanism, shape, result, f"seed {SEED}")
    assert ties["ties"] < 1e-5, ties
    assert ties["overflow"] < 1e-5, ties
    edges = ties["edges"]
    assert edges["minus-6"]["counts"] == [5, 5], edges  # the finite keys, each stored
    assert edges["minus-3"]["counts"] == [1, 1], edges
    assert edges["minus-6"]["error"] < 1e-5, edges
    assert edges["minus-3"]["error"] < 1e-5, edges
    assert edges["plus"]["t0"] == [float("inf")] * 2, edges
    assert edges["plus"]["counts"] == [5, 5], edges  # the five +inf keys: candidates, not none
    assert edges["view_dq"] == 0.0, edges
    for causal, passes in ties["passes"].items():
        assert passes["below_kth"], (causal, passes)
        assert passes["max_count"] <= passes["slots"], (causal, passes)
        assert passes["mean_count"] <= 2 * 4, (causal, passes)  # about k on random scores
        assert passes["exact_sets"], (causal, passes)


ROTATION_SCRIPT = """
import json
import torch
from attnperf.backends.triton.rotary import rotate
from attnperf.mechanisms.positional import rope_tables, rotate_half_rope

gen = torch.Generator().manual_seed(0)
errors = []
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for batch, heads, length, dim in ((2, 3, 37, 16), (1, 2, 5, 20)):  # partial blocks; a half of 10
        x = torch.randn(batch, length, heads, dim, generator=gen).transpose(1, 2).to(dtype)  # strided input
        cos, sin = rope_tables(torch.arange(length) + 7, dim, torch.float32)
        expected = rotate_half_rope(x, cos, sin)
        for seq_major in (False, True):
            got = rotate(x, cos, sin, seq_major=seq_major)
            shape_ok = got.is_contiguous() and got.dtype == dtype
            if seq_major:
                got = got.transpose(1, 2)
            diff = ((got.double() - expected.double()).abs() / expected.double().abs().clamp_min(1e-3)).max()
            errors.append({"dtype": str(dtype), "seq_major": seq_major, "dim": dim, "shape_ok": shape_ok,
                           "max_rel": float(diff)})
# Gradient: the inverse rotation, from either layout back to [B, H, T, D].
x = torch.randn(2, 3, 37, 16, generator=gen, requires_grad=True)
cos, sin = rope_tables(torch.arange(37), 16, torch.float32)
grads = []
for seq_major in (False, True):
    out = rotate(x, cos, sin, seq_major=seq_major)
    g = torch.randn(out.shape, generator=gen)
    (got,) = torch.autograd.grad(out, x, g)
    eager_out = rotate_half_rope(x, cos, sin)
    (want,) = torch.autograd.grad(eager_out, x, g.transpose(1, 2) if seq_major else g)
    grads.append(float((got - want).abs().max()))
# Under torch.export (ONNX Runtime's graph) the rotation is the eager one: a Triton launch cannot be traced.
from attnperf.backends.rotation import rotation_for
from attnperf.mechanisms.positional import rotate_half_rope_seq_major


class Rotate(torch.nn.Module):
    def forward(self, x):
        return rotation_for('cuda', True)(x, cos, sin)


x = torch.randn(1, 3, 37, 16, generator=gen)
exported = torch.export.export(Rotate(), (x,), strict=False)
exports = torch.equal(exported.module()(x), rotate_half_rope_seq_major(x, cos, sin))
print(json.dumps({"forward": errors, "grads": grads, "exports": exports}))
"""


SORT_SCRIPT = """
import json
import torch
from attnperf.backends.triton import topk
from attnperf.case import Case, make_inputs

# One program of 64 queries (the sort takes the interpreter about 20 s a program): causal, so that
# rows 0-3 see fewer lanes than k (t0 = -inf), with ties among the lane maxima (exact inputs). The
# passes differ only in how they read the k-th largest of the lane maxima, which this exercises.
case = Case(heads=1, q_len=64, kv_len=64, head_dim=16, top_k=5, causal=True)
q, k, _ = make_inputs(case, seed=0)
k.copy_((k * 2).round() / 2)
q.copy_((q * 2).round() / 2)
launch = topk.Launch.of(q, k, None, top_k=5, causal=True, scale=case.scale)
found = []
for sort in (False, True):
    t0 = torch.empty(64)
    topk._threshold[launch.grid](q, k, t0, *launch.q_strides, *launch.k_strides, *launch.sizes, TOP_K=5, K_PAD=8,
                                 BLOCK_N=topk.LANES, EVEN_D=True, SORT=sort, **launch.shape, **launch.scoring)
    found.append(t0.tolist())
print(json.dumps(found))
"""


def test_the_thresholds_sort_takes_the_same_lane_maximum_as_the_loop_in_the_interpreter() -> None:
    """Compiled, pass 1 takes the k-th largest lane maximum by a partial sort; interpreted, by taking
    the largest out k times (the sort is too slow there): both must give every row the same t0."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", SORT_SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loop, sort = json.loads(proc.stdout.splitlines()[-1])
    assert loop == sort
    assert loop[:4] == [float("-inf")] * 4  # rows 0-3 see 1-4 keys, fewer than k = 5
    assert len(set(loop[4:])) > 16, "the rows' thresholds differ"


def test_the_rope_rotation_kernel_matches_the_eager_rotation_in_the_interpreter() -> None:
    """The rotation every CUDA backend times for RoPE: both layouts, three dtypes, a strided input,
    partial blocks, and its gradient (the inverse rotation) against autograd's of the eager one."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", ROTATION_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert len(result["forward"]) == 12
    for case in result["forward"]:
        assert case["shape_ok"], case
        # float32 agrees to rounding; half precision to one rounding step of the output (both
        # compute in float32 and round once, the kernel may fuse a multiply-add).
        assert case["max_rel"] <= (1e-6 if case["dtype"] == "torch.float32" else 2**-7), case
    assert max(result["grads"]) < 1e-5, result["grads"]
    assert result["exports"]


MERGE_SCRIPT = """
import json
import torch
from attnperf.backends.strided_split import merge_in_torch
from attnperf.backends.triton.strided_merge import merge

gen = torch.Generator().manual_seed(0)
worst = []
for b, n, h, d, s in ((1, 64, 2, 16, 8), (2, 67, 3, 16, 8), (1, 50, 2, 20, 7), (1, 40, 2, 16, 1)):
    m = -(-n // s)
    band = torch.randn(b, n, h, d, generator=gen).to(torch.bfloat16)
    band_lse = 3 * torch.randn(b, h, n, generator=gen)
    part = torch.randn(b * s, m - 1, h, d, generator=gen).to(torch.bfloat16)
    part_lse = 3 * torch.randn(b * s, h, m - 1, generator=gen)
    want = merge_in_torch(band, band_lse, part, part_lse, s)
    got = merge(band, band_lse, part, part_lse, s)
    assert got.shape == band.shape and got.dtype == torch.bfloat16
    worst.append(float(((got.float() - want).abs() / want.abs().clamp_min(1e-2)).max()))
print(json.dumps(worst))
"""


def test_the_strided_merge_kernel_matches_the_merge_in_torch_in_the_interpreter() -> None:
    """The strided split's merge on CUDA: rows without a strided key (i < s), a length that is not
    a multiple of s, batch 2, an odd head dim, stride 1; against the float32 merge in PyTorch."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", MERGE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = json.loads(proc.stdout.splitlines()[-1])
    assert len(worst) == 4
    # One rounding of the float32 blend to bfloat16 (2^-8 relative) and the sigmoid's last bits.
    assert max(worst) <= 2**-7, worst


def test_without_the_interpreter_the_cpu_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = get_backend("triton").supports(get_mechanism("linear"), Case(q_len=17, head_dim=16))
    assert reason is not None
    assert "TRITON_INTERPRET=1" in reason


def test_the_linear_kernel_refuses_a_backward_by_name() -> None:
    case = Case(q_len=17, head_dim=16, device="cuda")
    reasons = get_backend("triton").not_supported_reasons(get_mechanism("linear"), case, backward=True)
    assert "the linear kernel is forward only (no backward)" in reasons
    topk_case = Case(q_len=17, head_dim=16, top_k=4, device="cuda")
    topk_reasons = get_backend("triton").not_supported_reasons(get_mechanism("topk"), topk_case, backward=True)
    assert not any("forward only" in reason for reason in topk_reasons), topk_reasons


def test_the_kernels_sizes_are_the_ones_the_models_count() -> None:
    from attnperf.backends.triton import linear, topk

    assert get_backend("triton").block_size == linear.CHUNK  # the FLOP and memory models' chunk
    assert get_backend("triton").topk_cap_per_k == topk.CAP_PER_K  # the memory model's candidates
    assert get_backend("triton").max_top_k == topk.MAX_TOP_K


def hopper_compile(fn: object, pointers: dict[str, str], constexprs: dict[str, object], num_warps: int) -> str:
    """Compile ``fn`` for sm_90 with Triton's bundled ptxas: no GPU needed. The interpreter accepts
    what a compiled kernel refuses (a global that is not a constexpr, a type the lowering lacks)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    floats = {"scale", "eps"}
    signature = {
        name: "constexpr" if name in constexprs else pointers.get(name, "fp32" if name in floats else "i32")
        for name in fn.arg_names  # type: ignore[attr-defined]
    }
    kernel = compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                     options={"num_warps": num_warps})  # fmt: skip
    return kernel.asm["ptx"]


@pytest.mark.slow
def test_no_linear_kernel_gets_the_n8_wgmma_that_reads_out_of_bounds() -> None:
    """Head dim 16 in bf16 stopped the H200 with an illegal memory access: Triton 3.6 lowered the
    TF32 products of ``_chunk_output`` with Dv blocks of 16 to ``wgmma m64n8k8``
    (triton-lang/triton#10629). The blocks the wrapper picks must never give that instruction."""
    from attnperf.backends.triton import linear

    states = {"k_ptr": "*bf16", "v_ptr": "*bf16", "s_ptr": "*fp32", "z_ptr": "*fp32"}
    for head_dim in (16, 64, 128):
        block_k, block_v = linear.state_blocks(head_dim, head_dim)
        for causal in (True, False):
            ptx = hopper_compile(
                linear._chunk_output, states | {"q_ptr": "*bf16", "o_ptr": "*bf16"},
                {"CAUSAL": causal, "CHUNK": linear.CHUNK, "BLOCK_D": linear._block(head_dim), "BLOCK_V": block_v,
                 "PRECISION": "tf32"}, 8,
            )  # fmt: skip
            assert "n8k8" not in ptx, f"head_dim {head_dim}, causal {causal}: wgmma with N = 8"
        ptx = hopper_compile(
            linear._chunk_states, states,
            {"CHUNK": linear.CHUNK, "BLOCK_K": block_k, "BLOCK_V": block_v, "PRECISION": "tf32", "PREFIXES": True}, 8,
        )  # fmt: skip
        assert "wgmma.mma_async.sync.aligned.m64n8k8" not in ptx, f"head_dim {head_dim}: states with N = 8"


@pytest.mark.slow
def test_the_kernels_compile_for_hopper() -> None:
    """Every kernel, at small constexprs, in bfloat16 and float32 (about a minute on 2 cores)."""
    from attnperf.backends.triton import linear, rotary, strided_merge, topk

    for dt, precision in (("*bf16", "tf32"), ("*fp32", "ieee")):
        hopper_compile(
            strided_merge._merge,
            {"BAND": dt, "BAND_LSE": "*fp32", "PART": dt, "PART_LSE": "*fp32", "OUT": dt},
            {"D": 128, "BLOCK_T": strided_merge.BLOCK_T, "BLOCK_D": 128},
            4,
        )
        for inverse in (False, True):
            hopper_compile(
                rotary._rotate_half,
                {"X": dt, "COS": "*fp32", "SIN": "*fp32", "OUT": dt},
                {"HALF": 64, "BLOCK_T": rotary.BLOCK_T, "BLOCK_D": 64, "INVERSE": inverse},
                4,
            )
        scoring = {"CAUSAL": True, "PRECISION": precision, "UPCAST": False, "BLOCK_D": 64}
        qk = {"q_ptr": dt, "k_ptr": dt}
        kept = {"i_ptr": "*i32", "w_ptr": "*fp32"}
        for even_d in (True, False):
            hopper_compile(
                topk._threshold,
                qk | {"t_ptr": "*fp32"},
                {"TOP_K": 3, "K_PAD": 4, "BLOCK_N": topk.LANES, "BLOCK_M": topk.BLOCK_M, "EVEN_D": even_d,
                 "SORT": even_d} | scoring,
                4,
            )  # fmt: skip
            hopper_compile(
                topk._candidates,
                qk | {"t_ptr": "*fp32", "c_ptr": "*i64", "n_ptr": "*i32"},
                {"CAP": 32, "BLOCK_N": topk.CANDIDATE_BLOCK_N, "BLOCK_M": topk.BLOCK_M, "EVEN_D": even_d} | scoring,
                4,
            )
        hopper_compile(
            topk._select,
            {"v_ptr": dt, "o_ptr": dt, "c_ptr": "*i64", "n_ptr": "*i32"} | kept,
            {"TOP_K": 4, "K_PAD": 4, "CAP": 32, "BLOCK_M": topk.SELECT_BLOCK_M, "BLOCK_D": 64, "GATHER": 4},
            4,
        )
        hopper_compile(
            topk._streaming,
            qk | {"v_ptr": dt, "o_ptr": dt, "n_ptr": "*i32"} | kept,
            {"TOP_K": 4, "K_PAD": 4, "CAP": 32, "BLOCK_N": topk.BLOCK_N, "BLOCK_M": topk.STREAM_BLOCK_M,
             "GATHER": 4} | scoring,
            8,
        )  # fmt: skip
        hopper_compile(
            topk._backward,
            qk | {"v_ptr": dt, "o_ptr": dt, "do_ptr": dt, "dq_ptr": dt, "dk_ptr": "*fp32", "dv_ptr": "*fp32"} | kept,
            {"TOP_K": 4, "K_PAD": 4, "BLOCK_M": topk.BACKWARD_BLOCK_M, "BLOCK_D": 64},
            4,
        )
        states = {"k_ptr": dt, "v_ptr": dt, "s_ptr": "*fp32", "z_ptr": "*fp32"}
        hopper_compile(
            linear._chunk_states,
            states,
            {"CHUNK": linear.CHUNK, "BLOCK_K": 64, "BLOCK_V": 64, "PRECISION": precision, "PREFIXES": True},
            8,
        )
        hopper_compile(
            linear._chunk_output,
            states | {"q_ptr": dt, "o_ptr": dt},
            {"CAUSAL": True, "CHUNK": linear.CHUNK, "BLOCK_D": 64, "BLOCK_V": 64, "PRECISION": precision},
            8,
        )
