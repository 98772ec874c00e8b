"""Top-k attention as one streaming Triton kernel: O(n · k) memory, the scores never stored.

Each program owns ``BLOCK_M`` queries of one head and walks the key blocks in order (up to the
last key a causal row may see), keeping every row's running ``K`` best (score, key) pairs in
registers. A pair travels as one int64 sort key: the float32 score's bits made order-preserving
in the high word, ``2³² − 1 − j`` in the low word, so that a descending ``tl.topk`` keeps the
higher score and, among equal scores, the lower key index: the mechanism's tie rule, exact.
A key block only reaches the merge when one of its scores beats a row's k-th best so far (keys
come in increasing index, so an equal score never displaces a kept one).

After the walk: softmax over the kept scores (in float32) and the sum of the kept value rows,
gathered one rank at a time. Scores are ``q kᵀ · scale`` accumulated in float32 (IEEE products
for float32 inputs; half inputs' products are exact in float32), the selection the mechanism
documents.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnperf.backends.triton.env import interpreted

BLOCK_M = 32
BLOCK_N = 64
#: Nothing packs below this: the masked, padded ranks of a row.
EMPTY = -(2**63)


@triton.jit
def _pack(scores, keys):
    """(float32 score, key index) → int64, ordered by score, then by lower index."""
    bits = (scores + 0.0).to(tl.int32, bitcast=True)  # + 0.0: -0.0 becomes +0.0, equal scores pack equal
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits
    return (ordered.to(tl.int64) << 32) | (4294967295 - keys.to(tl.int64))


@triton.jit
def _unpack(packed):
    """int64 → (float32 score, key index)."""
    ordered = (packed >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True), (4294967295 - (packed & 4294967295)).to(tl.int32)


@triton.jit
def _column(x, cols, c):
    """Column ``c`` of a [rows, K] block as a [rows] vector."""
    return tl.sum(tl.where(cols[None, :] == c, x, 0), axis=1)


@triton.jit
def _topk_attention(
    q_ptr, k_ptr, v_ptr, o_ptr,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    heads, group, q_len, k_len, offset, head_dim, scale,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // heads, pid_bh % heads
    hkv = h // group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, K_PAD)
    row_ok = rows < q_len
    d_ok = offs_d < head_dim
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + hkv * stride_kh
    v_base = v_ptr + b * stride_vb + hkv * stride_vh
    best = tl.full([BLOCK_M, K_PAD], EMPTY, dtype=tl.int64)
    kth = tl.full([BLOCK_M], EMPTY, dtype=tl.int64)  # each row's TOP_K-th best so far
    end = k_len
    if CAUSAL:
        end = tl.minimum(k_len, pid_m * BLOCK_M + BLOCK_M + offset)  # keys past the block's last row + Δ
    for start in tl.range(0, end, BLOCK_N):
        keys = start + offs_n
        kt = tl.load(k_base + keys[None, :] * stride_kn + offs_d[:, None],
                     mask=(keys[None, :] < k_len) & d_ok[:, None], other=0.0)  # fmt: skip
        if UPCAST:
            kt = kt.to(tl.float32)
        scores = tl.dot(q, kt, input_precision=PRECISION) * scale
        seen = (keys[None, :] < k_len) & row_ok[:, None]
        if CAUSAL:
            seen = seen & (keys[None, :] <= rows[:, None] + offset)
        packed = tl.where(seen, _pack(scores, keys[None, :]), EMPTY)
        if tl.max(tl.where(packed > kth[:, None], 1, 0)) > 0:
            block_best = tl.topk(packed, K_PAD)
            best = tl.topk(tl.reshape(tl.join(best, block_best), [BLOCK_M, 2 * K_PAD]), K_PAD)
            kth = _column(best, ranks, TOP_K - 1)
    score, index = _unpack(best)
    kept = (ranks[None, :] < TOP_K) & (best != EMPTY)
    score = tl.where(kept, score, float("-inf"))
    top = tl.max(score, axis=1)
    top = tl.where(top == float("-inf"), 0.0, top)  # a row with nothing to see (past q_len) stays finite
    weight = tl.where(kept, tl.exp(score - top[:, None]), 0.0)
    weight = weight / tl.maximum(tl.sum(weight, axis=1), 1e-30)[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for c in tl.static_range(TOP_K):
        key = _column(index, ranks, c)
        w = _column(weight, ranks, c)
        value = tl.load(v_base + key[:, None] * stride_vn + offs_d[None, :],
                        mask=(w[:, None] > 0) & d_ok[None, :], other=0.0)  # fmt: skip
        acc += w[:, None] * value.to(tl.float32)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :],
             acc.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])  # fmt: skip


def topk_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, top_k: int, causal: bool, scale: float
) -> torch.Tensor:
    """Top-k attention of ``q [B, H, Lq, D]`` over ``k, v [B, H_kv, Lk, D]`` (bottom-right causal)."""
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("topk_attention: q, k and v need a contiguous last dimension")
    k_pad = triton.next_power_of_2(top_k)
    block_n = max(BLOCK_N, k_pad)  # tl.topk takes K_PAD of a block's columns
    out = torch.empty_like(q)
    grid = (triton.cdiv(q_len, BLOCK_M), batch * heads)
    _topk_attention[grid](
        q, k, v, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        heads, heads // kv_heads, q_len, k_len, k_len - q_len, head_dim, scale,
        TOP_K=top_k, K_PAD=k_pad, CAUSAL=causal, BLOCK_M=BLOCK_M, BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        # float32: IEEE products (the 1e-5 bound); half inputs: tensor-core products, exact in float32.
        # Triton's interpreter multiplies bfloat16's raw bits (3.6), so there they go through
        # float32 first: the same products.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        UPCAST=interpreted() and q.dtype == torch.bfloat16,
    )  # fmt: skip
    return out
