"""Chunked linear attention as two Triton kernels (the tiled backend's algorithm, fused).

``out_i = φ(q_i)·S_i / (φ(q_i)·z_i + ε)`` with ``S_i = Σ_{j ≤ i+Δ} φ(k_j) v_jᵀ`` and
``z_i = Σ_{j ≤ i+Δ} φ(k_j)`` (all keys without ``causal``), φ = elu + 1.

1. :func:`_chunk_states` walks the key chunks of one kv head in order, one program per
   (D block, Dv block, batch · kv head), and stores the state *before* each chunk (the exclusive
   prefix a chunk's queries start from) and, in slot ``n_chunks``, the state of all keys. The
   states stay in float32 registers across the walk: O(n/C · D · Dv) memory in all, no n × n.
2. :func:`_chunk_output` gives each chunk of queries (aligned to the key chunk its positions
   i + Δ fall in) its prefix state plus the masked C × C block of its own chunk, in parallel.

φ is applied as keys and queries are loaded, in float32. Products run in float32: IEEE for
float32 inputs (the 1e-5 bound), TF32 for half inputs, whose φ values and states would lose
digits in a half-precision product and whose normalizer sums over the whole sequence (past
float16's range at 64k keys). Linear attention is memory-bound at these head dims, so the TF32
rate costs little. GQA: query head h reads the states of kv head h // (H / H_kv), which are
computed once per kv head. Both kernels run 8 warps: with 4 the output kernel spills (found by
compiling for sm_90 without a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnperf.mechanisms.linear import LINEAR_EPS

#: Key and query chunk (fla's BT).
CHUNK = 64
#: The D and Dv blocks of one state program; head dims up to 256 take a few blocks each.
STATE_BLOCK = 64


@triton.jit
def _phi(x):
    """elu(x) + 1, in float32."""
    x = x.to(tl.float32)
    return tl.where(x > 0, x + 1.0, tl.exp(x))


@triton.jit
def _chunk_states(
    k_ptr, v_ptr, s_ptr, z_ptr,
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    kv_heads, k_len, n_chunks, head_dim, value_dim,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, PRECISION: tl.constexpr,
    PREFIXES: tl.constexpr,
):  # fmt: skip
    """States ``s[b, hkv, c] = Σ_{j < c·CHUNK} φ(k_j) v_jᵀ`` (one [BLOCK_K, BLOCK_V] block) for
    c = 0..n_chunks, and the normalizer ``z`` (stored by the programs of the first Dv block).
    Without ``PREFIXES`` (non-causal) only the last, the state of all keys, is stored."""
    pid_k, pid_v, pid_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, hkv = pid_bh.to(tl.int64) // kv_heads, pid_bh.to(tl.int64) % kv_heads
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    offs_t = tl.arange(0, CHUNK)
    k_base = k_ptr + b * stride_kb + hkv * stride_kh
    v_base = v_ptr + b * stride_vb + hkv * stride_vh
    state = tl.zeros([BLOCK_K, BLOCK_V], dtype=tl.float32)
    z = tl.zeros([BLOCK_K], dtype=tl.float32)
    s_base = s_ptr + pid_bh.to(tl.int64) * (n_chunks + 1) * head_dim * value_dim
    z_base = z_ptr + pid_bh.to(tl.int64) * (n_chunks + 1) * head_dim
    s_offs = offs_k[:, None] * value_dim + offs_v[None, :]
    s_mask = (offs_k[:, None] < head_dim) & (offs_v[None, :] < value_dim)
    for c in tl.range(0, n_chunks):
        if PREFIXES:
            tl.store(s_base + c * head_dim * value_dim + s_offs, state, mask=s_mask)
            if pid_v == 0:
                tl.store(z_base + c * head_dim + offs_k, z, mask=offs_k < head_dim)
        rows = c * CHUNK + offs_t
        in_seq = rows < k_len
        kc = tl.load(k_base + rows[:, None] * stride_kn + offs_k[None, :],
                     mask=in_seq[:, None] & (offs_k[None, :] < head_dim), other=0.0)  # fmt: skip
        fk = tl.where(in_seq[:, None] & (offs_k[None, :] < head_dim), _phi(kc), 0.0)  # φ(0) = 1: pad rows out
        vc = tl.load(v_base + rows[:, None] * stride_vn + offs_v[None, :],
                     mask=in_seq[:, None] & (offs_v[None, :] < value_dim), other=0.0).to(tl.float32)  # fmt: skip
        state += tl.dot(tl.trans(fk), vc, input_precision=PRECISION)
        z += tl.sum(fk, axis=0)
    tl.store(s_base + n_chunks * head_dim * value_dim + s_offs, state, mask=s_mask)
    if pid_v == 0:
        tl.store(z_base + n_chunks * head_dim + offs_k, z, mask=offs_k < head_dim)


@triton.jit
def _chunk_output(
    q_ptr, k_ptr, v_ptr, s_ptr, z_ptr, o_ptr,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    heads, group, q_len, k_len, offset, n_chunks, head_dim, value_dim, eps,
    CAUSAL: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_V: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """One chunk of queries, one Dv block: prefix state plus (causal) the chunk's own keys.

    Causal: the program of key chunk c takes the queries whose positions i + Δ fall in it.
    Otherwise: query chunk c, against the state of all keys (slot n_chunks)."""
    pid_c, pid_v, pid_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh.to(tl.int64) // heads, pid_bh.to(tl.int64) % heads
    hkv = h // group
    offs_t = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    if CAUSAL:
        pos = pid_c * CHUNK + offs_t  # key positions i + Δ of this chunk's queries
        rows = pos - offset
        slot = pid_c
    else:
        rows = pid_c * CHUNK + offs_t
        pos = rows
        slot = n_chunks
    valid = (rows >= 0) & (rows < q_len)
    d_ok = offs_d < head_dim
    v_ok = offs_v < value_dim
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + offs_d[None, :],
                mask=valid[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    fq = tl.where(d_ok[None, :], _phi(q), 0.0)
    state_base = s_ptr + ((b * (heads // group) + hkv).to(tl.int64) * (n_chunks + 1) + slot) * head_dim * value_dim
    state = tl.load(state_base + offs_d[:, None] * value_dim + offs_v[None, :],
                    mask=d_ok[:, None] & v_ok[None, :], other=0.0)  # fmt: skip
    z_base = z_ptr + ((b * (heads // group) + hkv).to(tl.int64) * (n_chunks + 1) + slot) * head_dim
    z = tl.load(z_base + offs_d, mask=d_ok, other=0.0)
    num = tl.dot(fq, state, input_precision=PRECISION)
    den = tl.sum(fq * z[None, :], axis=1)
    if CAUSAL:
        keys = pid_c * CHUNK + offs_t
        k_in = keys < k_len
        kc = tl.load(k_ptr + b * stride_kb + hkv * stride_kh + keys[:, None] * stride_kn + offs_d[None, :],
                     mask=k_in[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        fk = tl.where(k_in[:, None] & d_ok[None, :], _phi(kc), 0.0)
        vc = tl.load(v_ptr + b * stride_vb + hkv * stride_vh + keys[:, None] * stride_vn + offs_v[None, :],
                     mask=k_in[:, None] & v_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
        sim = tl.dot(fq, tl.trans(fk), input_precision=PRECISION)
        sim = tl.where(keys[None, :] <= pos[:, None], sim, 0.0)
        num += tl.dot(sim, vc, input_precision=PRECISION)
        den += tl.sum(sim, axis=1)
    out = num / (den[:, None] + eps)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_v[None, :],
             out.to(o_ptr.dtype.element_ty), mask=valid[:, None] & v_ok[None, :])  # fmt: skip


def _block(size: int, at_least: int = 16) -> int:
    """The power-of-two block that covers ``size`` (tl.dot needs at least 16)."""
    return max(at_least, triton.next_power_of_2(size))


def state_blocks(head_dim: int, value_dim: int) -> tuple[int, int]:
    """The D and Dv blocks of the state (and output) programs.

    The Dv block is at least 32: at 16, Triton 3.6 splits the TF32 products of ``_chunk_output``
    over 8 warps into ``wgmma m64n8k8``, which reads past its shared-memory operand on Hopper
    (triton-lang/triton#10629), an illegal memory access at head_dim 16. Padded value columns
    load as zeros and are never stored.
    """
    return min(STATE_BLOCK, _block(head_dim)), min(STATE_BLOCK, _block(value_dim, 32))


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """Linear attention of ``q [B, H, Lq, D]`` over ``k, v [B, H_kv, Lk, D]`` (bottom-right causal
    alignment Δ = Lk − Lq, as the mechanism), output in q's dtype."""
    batch, heads, q_len, head_dim = q.shape
    kv_heads, k_len, value_dim = k.shape[1], k.shape[2], v.shape[3]
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("linear_attention: q, k and v need a contiguous last dimension")
    if causal and q_len > k_len:
        raise ValueError(f"linear_attention: causal needs q_len <= kv_len, got {q_len} > {k_len}")
    precision = "ieee" if q.dtype in (torch.float32, torch.float64) else "tf32"
    n_chunks = triton.cdiv(k_len, CHUNK)
    states = torch.empty(batch * kv_heads, n_chunks + 1, head_dim, value_dim, device=q.device, dtype=torch.float32)
    norms = torch.empty(batch * kv_heads, n_chunks + 1, head_dim, device=q.device, dtype=torch.float32)
    block_k, block_v = state_blocks(head_dim, value_dim)
    grid = (triton.cdiv(head_dim, block_k), triton.cdiv(value_dim, block_v), batch * kv_heads)
    _chunk_states[grid](
        k, v, states, norms, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        kv_heads, k_len, n_chunks, head_dim, value_dim,
        CHUNK=CHUNK, BLOCK_K=block_k, BLOCK_V=block_v, PRECISION=precision, PREFIXES=causal, num_warps=8,
    )  # fmt: skip
    out = torch.empty(batch, heads, q_len, value_dim, device=q.device, dtype=q.dtype)
    out_chunks = n_chunks if causal else triton.cdiv(q_len, CHUNK)
    grid = (out_chunks, triton.cdiv(value_dim, block_v), batch * heads)
    _chunk_output[grid](
        q, k, v, states, norms, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        heads, heads // kv_heads, q_len, k_len, k_len - q_len, n_chunks, head_dim, value_dim, LINEAR_EPS,
        CAUSAL=causal, CHUNK=CHUNK, BLOCK_D=_block(head_dim), BLOCK_V=block_v, PRECISION=precision, num_warps=8,
    )  # fmt: skip
    return out
