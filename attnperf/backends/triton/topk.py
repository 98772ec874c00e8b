"""Top-k attention in Triton: exact selection, O(n · k) memory, the n × n scores never stored.

A (score, key) pair travels as one int64 sort key: the float32 score's bits made
order-preserving in the high word, ``2³² − 1 − j`` in the low word, so that a descending
``tl.topk`` keeps the higher score and, among equal scores, the lower key index: the mechanism's
tie rule, exact.

Three passes over the keys, each program owning ``BLOCK_M`` queries of one head (64: the key
loops' products are Hopper's asynchronous warpgroup MMAs). In both key passes the blocks every
query of the tile sees whole run without a mask; only the blocks on the causal diagonal or past
the last key pay for one:

1. :func:`_threshold` keeps, per query, the maximum of each of ``LANES`` lanes (lane c holds the
   keys ≡ c mod LANES: one elementwise maximum per product, scaled once at the end, which keeps
   the order since scale > 0) and takes the TOP_K-th largest of them as ``t₀`` (at the end: one
   partial sort of the lanes compiled, the largest left taken out k times interpreted). TOP_K
   lanes reach ``t₀`` with distinct keys, so ``t₀`` is a lower bound of the k-th largest score and
   no score below it can be kept; a query with fewer than k lanes seen keeps ``t₀ = −∞``. With 128
   lanes and k = 32 ``t₀`` is the upper quartile of the lane maxima: on random scores at 16k about
   40 keys reach it. (Keeping the k largest maxima of small key groups by replacing the smallest
   instead costs a min, an argmin and a select over k per group, which would dominate the whole
   kernel.)
2. :func:`_candidates` recomputes the scores, 32 keys at a time, and appends those ``≥ t₀ −
   margin`` to the query's row of ``CAP = CAP_PER_K · k`` packed keys (:func:`_append`). On
   ordinary data a row gets about k of them; a row with fewer than k lanes has fewer than k keys
   in all. The margin (2⁻¹² · (|t₀| + 0.001)) covers a
   pass computing a score a few ulps lower than the other: more candidates, never fewer.
3. :func:`_select` sorts each row's candidates once (``tl.topk``; over the first ``2 · k'`` slots
   when no row of the program has more, the usual case) and records each row's kept keys and
   softmax weights (O(n · k)); the value rows are then gathered ``GATHER`` ranks at a time and
   summed under the weights in float32. The backward reads the same record.

A row whose candidates overflow ``CAP`` (many equal scores: adversarial, or degenerate inputs)
is recomputed by :func:`_streaming`, which keeps every row's running k best through a
bitonic ``tl.topk`` merge per key block: exact for any input, several times slower. It is always
launched and its programs stop at once when none of their rows overflowed: no host
synchronization, so a call can be captured in a CUDA graph. Scores are
``q kᵀ · scale`` accumulated in float32 (IEEE products for float32 inputs; half inputs'
products are exact in float32), the selection the mechanism documents. A key scoring −∞ (from
infinite inputs) is never a candidate: its softmax weight is 0 wherever it would rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from attnperf.backends.triton.env import interpreted

BLOCK_M = 64
#: The candidates pass's key block: narrow, so that few blocks have a row taking two keys or more
#: (each such block costs its tile another append round).
CANDIDATE_BLOCK_N = 32
#: The streaming pass's key block.
BLOCK_N = 64
#: Pass 2 appends a row's taken keys of a block one round each, up to this many (more: prefix sums).
ROUNDS = tl.constexpr(3)
#: Pass 3 holds a row's CAP_PER_K · k candidates whole (256 int64 at k = 32): fewer rows a program.
SELECT_BLOCK_M = 16
#: Ranks whose value rows pass 3 gathers at once ([SELECT_BLOCK_M, GATHER, D] elements).
GATHER = 8
#: The overflow pass merges [rows, BLOCK_N] packed blocks into each row's running best: fewer rows.
STREAM_BLOCK_M = 32
#: The backward's rows a program: each holds q, O and dO rows and gathers one key row per kept rank.
#: At k 32, D 128, 32 rows spill (ptxas: 11 KB of spill loads a thread at 255 registers); 16 do not.
BACKWARD_BLOCK_M = 16
#: A query's candidate row holds CAP_PER_K · k packed keys (more send its block to the streaming pass).
CAP_PER_K = 8
#: Lanes of pass 1 (its key block): at least 2 · MAX_TOP_K, so that t₀ is at most the lane maxima's median.
LANES = 128
#: Nothing packs below this: the masked, padded ranks of a row (a constexpr: compiled kernels read
#: no other globals).
EMPTY = tl.constexpr(-(2**63))
#: k above this compiles for minutes (pass 3 sorts CAP_PER_K · k candidates a row in registers).
MAX_TOP_K = 64


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
def _queries(q_ptr, stride_qb, stride_qh, stride_qm, b, h, rows, row_ok, offs_d, d_ok, UPCAST: tl.constexpr):
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    if UPCAST:  # Triton 3.6's interpreter multiplies bfloat16's raw bits: the same products in float32
        q = q.to(tl.float32)
    return q


@triton.jit
def _scores(q, k_base, stride_kn, keys, rows, row_ok, offs_d, d_ok, k_len, offset, scale,
            CAUSAL: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """One key block's scores and which of them the rows see (in range, and causal)."""
    kt = tl.load(k_base + keys[None, :] * stride_kn + offs_d[:, None],
                 mask=(keys[None, :] < k_len) & d_ok[:, None], other=0.0)  # fmt: skip
    if UPCAST:
        kt = kt.to(tl.float32)
    scores = tl.dot(q, kt, input_precision=PRECISION) * scale
    seen = (keys[None, :] < k_len) & row_ok[:, None]
    if CAUSAL:
        seen = seen & (keys[None, :] <= rows[:, None] + offset)
    return scores, seen


@triton.jit
def _tile(heads, q_len, head_dim, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's block of queries: its block index, batch and head, the rows and which exist,
    the head-dim offsets and which exist, and each row's line (its index in ``[B · H · Lq]``
    buffers, 64-bit: B · H · Lq may pass 2³¹)."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    return pid_m, pid_bh // heads, pid_bh % heads, rows, rows < q_len, offs_d, offs_d < head_dim, pid_bh * q_len + rows


@triton.jit
def _dots(q, k_base, stride_kn, keys, offs_d, d_ok, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
          EVEN_D: tl.constexpr):  # fmt: skip
    """The unscaled products of a key block every row of the tile sees: no mask (EVEN_D: the head
    dim fills the block, nor one on the head dim)."""
    if EVEN_D:
        kt = tl.load(k_base + keys[None, :] * stride_kn + offs_d[:, None])
    else:
        kt = tl.load(k_base + keys[None, :] * stride_kn + offs_d[:, None], mask=d_ok[:, None], other=0.0)
    if UPCAST:
        kt = kt.to(tl.float32)
    return tl.dot(q, kt, input_precision=PRECISION)


@triton.jit
def _full_end(pid_m, k_len, offset, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keys below this multiple of BLOCK_N are seen by every row of the tile."""
    end = k_len
    if CAUSAL:
        end = tl.minimum(k_len, pid_m * BLOCK_M + offset + 1)
    return (end // BLOCK_N) * BLOCK_N


@triton.jit
def _key_end(pid_m, k_len, offset, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """One past the last key any row of the block sees."""
    end = k_len
    if CAUSAL:
        end = tl.minimum(k_len, pid_m * BLOCK_M + BLOCK_M + offset)
    return end


@triton.jit
def _attend(best, v_base, stride_vn, o_ptr, stride_ob, stride_oh, stride_om, b, h, rows, store, offs_d, d_ok,
            i_ptr, w_ptr, line, TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_D: tl.constexpr, GATHER: tl.constexpr):  # fmt: skip
    """Softmax over the first TOP_K of the sorted ``best``; each row's kept keys (−1 past them) and
    weights recorded at ``line · K_PAD``, then the weighted sum of their value rows, all for the
    rows in ``store``. The value rows are gathered from the record, GATHER ranks at a time (one
    rank's index taken out of the register tile costs a reduction across threads)."""
    ranks = tl.arange(0, K_PAD)
    score, index = _unpack(best)
    kept = (ranks[None, :] < TOP_K) & (best != EMPTY)
    score = tl.where(kept, score, float("-inf"))
    top = tl.max(score, axis=1)
    top = tl.where(top == float("-inf"), 0.0, top)  # a row with nothing to see (past q_len) stays finite
    weight = tl.where(kept, tl.exp(score - top[:, None]), 0.0)
    weight = weight / tl.maximum(tl.sum(weight, axis=1), 1e-30)[:, None]
    at = line[:, None] * K_PAD + ranks[None, :]
    tl.store(i_ptr + at, tl.where(kept, index, -1), mask=store[:, None])
    tl.store(w_ptr + at, weight, mask=store[:, None])
    tl.debug_barrier()  # the record is read back below by other threads of this program
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for first in tl.static_range(0, K_PAD, GATHER):
        group = line[:, None] * K_PAD + first + tl.arange(0, GATHER)[None, :]
        key = tl.load(i_ptr + group, mask=store[:, None], other=-1)
        w = tl.load(w_ptr + group, mask=store[:, None], other=0.0)
        value = tl.load(v_base + key[:, :, None] * stride_vn + offs_d[None, None, :],
                        mask=(key >= 0)[:, :, None] & d_ok[None, None, :], other=0.0)  # fmt: skip
        acc += tl.sum(w[:, :, None] * value.to(tl.float32), axis=1)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :],
             acc.to(o_ptr.dtype.element_ty), mask=store[:, None] & d_ok[None, :])  # fmt: skip


@triton.jit
def _threshold(
    q_ptr, k_ptr, t_ptr,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    heads, group, q_len, k_len, offset, head_dim, scale,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, EVEN_D: tl.constexpr, SORT: tl.constexpr,
):  # fmt: skip
    """Pass 1: ``t₀`` per query, the TOP_K-th largest of its BLOCK_N lane maxima (−∞ with fewer lanes seen)."""
    pid_m, b, h, rows, row_ok, offs_d, d_ok, line = _tile(heads, q_len, head_dim, BLOCK_M, BLOCK_D)
    q = _queries(q_ptr, stride_qb, stride_qh, stride_qm, b, h, rows, row_ok, offs_d, d_ok, UPCAST)
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    lane_max = tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32)  # lane c: the keys ≡ c (mod BLOCK_N)
    full_end = _full_end(pid_m, k_len, offset, CAUSAL, BLOCK_M, BLOCK_N)
    for start in tl.range(0, full_end, BLOCK_N):  # unscaled: scale > 0 keeps the order
        keys = start + tl.arange(0, BLOCK_N)
        lane_max = tl.maximum(lane_max, _dots(q, k_base, stride_kn, keys, offs_d, d_ok, PRECISION, UPCAST, EVEN_D))
    for start in tl.range(full_end, _key_end(pid_m, k_len, offset, CAUSAL, BLOCK_M), BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        dots, seen = _scores(q, k_base, stride_kn, keys, rows, row_ok, offs_d, d_ok, k_len, offset, 1.0,
                             CAUSAL, PRECISION, UPCAST)  # fmt: skip
        lane_max = tl.maximum(lane_max, tl.where(seen, dots, float("-inf")))
    # The TOP_K-th largest lane maximum, equal ones counted. Compiled: one bitonic partial sort of the
    # lanes (a fifth of the instructions of taking the largest out TOP_K times, which cost as much as
    # the key loop of a tile at 16k); interpreted, that sort takes about 20 s a program, so the loop.
    if SORT:
        t0 = _column(tl.topk(lane_max, K_PAD), tl.arange(0, K_PAD), TOP_K - 1)
    else:
        t0 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        needed = tl.full([BLOCK_M], TOP_K, tl.int32)
        for _ in range(TOP_K):
            top = tl.max(lane_max, axis=1)
            at_top = lane_max == top[:, None]
            t0 = tl.where(needed > 0, top, t0)
            needed -= tl.sum(at_top.to(tl.int32), axis=1)
            lane_max = tl.where(at_top, float("-inf"), lane_max)
    tl.store(t_ptr + line, t0 * scale, mask=row_ok)


@triton.jit
def _append(c_ptr, line, count, scores, keys, take, CAP: tl.constexpr, ROUNDS: tl.constexpr):
    """Append a key block's taken scores, packed, to their rows; the rows' counts after it.

    A row takes about one key of a block, so when no row of the tile takes more than ROUNDS, each
    round appends every row's best remaining key (a maximum and a minimum across the block, one
    store a row) and sets it to −∞; only a tile with a row past ROUNDS pays for prefix sums and a
    store per score. Only the left scores live across the branch: a boolean tile would be
    converted to the prefix sums' layout before it, on every block."""
    left = tl.where(take, scores, float("-inf"))  # a key scoring −∞ is never a candidate (its weight is 0)
    taken = tl.sum(tl.where(left > float("-inf"), 1, 0), axis=1)
    most = tl.max(taken)
    if most > ROUNDS:
        taking = left > float("-inf")
        slot = count[:, None] + tl.cumsum(taking.to(tl.int32), axis=1) - 1
        tl.store(c_ptr + line[:, None] * CAP + slot, _pack(scores, keys[None, :]), mask=taking & (slot < CAP))
    else:
        for r in tl.static_range(ROUNDS):
            if most > r:
                best = tl.max(left, axis=1)
                key = tl.min(tl.where(left == best[:, None], keys[None, :], 2147483647), axis=1)
                slot = count + r
                tl.store(c_ptr + line * CAP + slot, _pack(best, key), mask=(taken > r) & (slot < CAP))
                left = tl.where(keys[None, :] == key[:, None], float("-inf"), left)
    return count + taken


@triton.jit
def _candidates(
    q_ptr, k_ptr, t_ptr, c_ptr, n_ptr,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    heads, group, q_len, k_len, offset, head_dim, scale,
    CAP: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """Pass 2: every seen key scoring ``≥ t₀ − margin``, packed, into the query's row of CAP
    (the count is stored whole, so that a row past CAP is known to have overflowed)."""
    pid_m, b, h, rows, row_ok, offs_d, d_ok, line = _tile(heads, q_len, head_dim, BLOCK_M, BLOCK_D)
    q = _queries(q_ptr, stride_qb, stride_qh, stride_qm, b, h, rows, row_ok, offs_d, d_ok, UPCAST)
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    t0 = tl.load(t_ptr + line, mask=row_ok, other=0.0)
    t0 = tl.where(t0 < float("inf"), t0 - (tl.abs(t0) + 0.001) * 0.000244140625, t0)  # margin 2⁻¹²; ±∞ stay
    t0 = tl.where(row_ok, t0, float("inf"))  # rows past q_len take nothing from the unmasked blocks
    count = tl.zeros([BLOCK_M], dtype=tl.int32)
    full_end = _full_end(pid_m, k_len, offset, CAUSAL, BLOCK_M, BLOCK_N)
    for start in tl.range(0, full_end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        scores = _dots(q, k_base, stride_kn, keys, offs_d, d_ok, PRECISION, UPCAST, EVEN_D) * scale
        count = _append(c_ptr, line, count, scores, keys, scores >= t0[:, None], CAP, ROUNDS)
    for start in tl.range(full_end, _key_end(pid_m, k_len, offset, CAUSAL, BLOCK_M), BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        scores, seen = _scores(q, k_base, stride_kn, keys, rows, row_ok, offs_d, d_ok, k_len, offset, scale,
                               CAUSAL, PRECISION, UPCAST)  # fmt: skip
        count = _append(c_ptr, line, count, scores, keys, seen & (scores >= t0[:, None]), CAP, ROUNDS)
    tl.store(n_ptr + line, count, mask=row_ok)


@triton.jit
def _select(
    v_ptr, o_ptr, c_ptr, n_ptr, i_ptr, w_ptr,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    heads, group, q_len, head_dim,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, CAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    GATHER: tl.constexpr,
):  # fmt: skip
    """Pass 3: each row's TOP_K best candidates (one sort: of the first 2 · K_PAD slots when no
    row of the program has more, which costs a fraction of sorting all CAP) and their weighted
    values."""
    _, b, h, rows, row_ok, offs_d, d_ok, line = _tile(heads, q_len, head_dim, BLOCK_M, BLOCK_D)
    count = tl.load(n_ptr + line, mask=row_ok, other=0)
    if CAP > 2 * K_PAD and tl.max(count) <= 2 * K_PAD:
        best = _best(c_ptr, line, count, K_PAD, CAP, 2 * K_PAD)
    else:
        best = _best(c_ptr, line, count, K_PAD, CAP, CAP)
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh
    _attend(best, v_base, stride_vn, o_ptr, stride_ob, stride_oh, stride_om, b, h, rows, row_ok, offs_d, d_ok,
            i_ptr, w_ptr, line, TOP_K, K_PAD, BLOCK_M, BLOCK_D, GATHER)  # fmt: skip


@triton.jit
def _best(c_ptr, line, count, K_PAD: tl.constexpr, CAP: tl.constexpr, SLOTS: tl.constexpr):
    """The K_PAD best of each row's first SLOTS candidate slots, sorted (EMPTY past the filled ones)."""
    slots = tl.arange(0, SLOTS)
    filled = slots[None, :] < count[:, None]
    candidates = tl.load(c_ptr + line[:, None] * CAP + slots[None, :], mask=filled, other=EMPTY)
    return tl.topk(candidates, K_PAD)


@triton.jit
def _streaming(
    q_ptr, k_ptr, v_ptr, o_ptr, n_ptr, i_ptr, w_ptr,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    heads, group, q_len, k_len, offset, head_dim, scale,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, CAP: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, GATHER: tl.constexpr,
):  # fmt: skip
    """The overflow path: every row's running K_PAD best, merged with each key block's by tl.topk
    (a key block reaches the merge only when one of its scores beats a row's k-th best so far;
    keys come in increasing index, so an equal score never displaces a kept one)."""
    pid_m, b, h, rows, row_ok, offs_d, d_ok, line = _tile(heads, q_len, head_dim, BLOCK_M, BLOCK_D)
    overflowed = row_ok & (tl.load(n_ptr + line, mask=row_ok, other=0) > CAP)
    if tl.max(overflowed.to(tl.int32)) > 0:
        _stream_rows(q_ptr, k_ptr, v_ptr, o_ptr, i_ptr, w_ptr, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh,
                     stride_kn, stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, group, k_len, offset,
                     scale, pid_m, b, h, rows, row_ok, overflowed, line, offs_d, d_ok, TOP_K, K_PAD, CAUSAL, BLOCK_M,
                     BLOCK_N, BLOCK_D, PRECISION, UPCAST, GATHER)  # fmt: skip


@triton.jit
def _stream_rows(
    q_ptr, k_ptr, v_ptr, o_ptr, i_ptr, w_ptr, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om, group, k_len, offset, scale,
    pid_m, b, h, rows, row_ok, store, line, offs_d, d_ok,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, GATHER: tl.constexpr,
):  # fmt: skip
    """The streaming selection of one block of rows; the output of the rows in ``store``."""
    ranks = tl.arange(0, K_PAD)
    q = _queries(q_ptr, stride_qb, stride_qh, stride_qm, b, h, rows, row_ok, offs_d, d_ok, UPCAST)
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    best = tl.full([BLOCK_M, K_PAD], EMPTY, dtype=tl.int64)
    kth = tl.full([BLOCK_M], EMPTY, dtype=tl.int64)  # each row's TOP_K-th best so far
    for start in tl.range(0, _key_end(pid_m, k_len, offset, CAUSAL, BLOCK_M), BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        scores, seen = _scores(q, k_base, stride_kn, keys, rows, row_ok, offs_d, d_ok, k_len, offset, scale,
                               CAUSAL, PRECISION, UPCAST)  # fmt: skip
        packed = tl.where(seen, _pack(scores, keys[None, :]), EMPTY)
        if tl.max(tl.where(packed > kth[:, None], 1, 0)) > 0:
            block_best = tl.topk(packed, K_PAD)
            best = tl.topk(tl.reshape(tl.join(best, block_best), [BLOCK_M, 2 * K_PAD]), K_PAD)
            kth = _column(best, ranks, TOP_K - 1)
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh
    _attend(best, v_base, stride_vn, o_ptr, stride_ob, stride_oh, stride_om, b, h, rows, store, offs_d, d_ok,
            i_ptr, w_ptr, line, TOP_K, K_PAD, BLOCK_M, BLOCK_D, GATHER)  # fmt: skip


@triton.jit
def _backward(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, i_ptr, w_ptr, dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om, stride_gb, stride_gh, stride_gm, stride_db, stride_dh, stride_dm,
    heads, group, q_len, k_len, head_dim, scale,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The gradients through each row's kept keys, from the forward's keys and weights ``p``:
    ``dp = dO · v``, ``ds = p (dp − rowsum(dO ∘ O))``, ``dq = scale Σ ds k`` stored, and
    ``dk += scale ds q``, ``dv += p dO`` added atomically into float32 ``[B, H_kv, Lk, D]`` buffers
    (several queries, and with GQA several heads, keep one key). Cost: two gathered rows and two
    atomic row additions per kept key: O(n · k · D), whatever the length."""
    _, b, h, rows, row_ok, offs_d, d_ok, line = _tile(heads, q_len, head_dim, BLOCK_M, BLOCK_D)
    at = rows[:, None] * stride_qm + offs_d[None, :]
    both = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + at, mask=both, other=0.0).to(tl.float32)
    out_at = b * stride_ob + h * stride_oh + rows[:, None] * stride_om + offs_d[None, :]
    o = tl.load(o_ptr + out_at, mask=both, other=0.0).to(tl.float32)
    grad_at = b * stride_gb + h * stride_gh + rows[:, None] * stride_gm + offs_d[None, :]
    do = tl.load(do_ptr + grad_at, mask=both, other=0.0).to(tl.float32)
    delta = tl.sum(do * o, axis=1)
    ranks = tl.arange(0, K_PAD)
    kept_at = line[:, None] * K_PAD + ranks[None, :]
    index = tl.load(i_ptr + kept_at, mask=row_ok[:, None], other=-1)
    weight = tl.load(w_ptr + kept_at, mask=row_ok[:, None], other=0.0)
    kv = b * (heads // group) + h // group  # the kv head's [Lk, D] block of the float32 buffers
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for c in tl.static_range(TOP_K):
        key = _column(index, ranks, c)
        p = _column(weight, ranks, c)
        gather = (key >= 0)[:, None] & both
        v = tl.load(v_base + key[:, None] * stride_vn + offs_d[None, :], mask=gather, other=0.0).to(tl.float32)
        ds = p * (tl.sum(do * v, axis=1) - delta)
        k = tl.load(k_base + key[:, None] * stride_kn + offs_d[None, :], mask=gather, other=0.0).to(tl.float32)
        dq += ds[:, None] * k
        grad_row = (kv * k_len + key.to(tl.int64))[:, None] * head_dim + offs_d[None, :]
        tl.atomic_add(dk_ptr + grad_row, (scale * ds)[:, None] * q, mask=gather)
        tl.atomic_add(dv_ptr + grad_row, p[:, None] * do, mask=gather)
    dq_at = b * stride_db + h * stride_dh + rows[:, None] * stride_dm + offs_d[None, :]
    tl.store(dq_ptr + dq_at, (scale * dq).to(dq_ptr.dtype.element_ty), mask=both)


def topk_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, top_k: int, causal: bool, scale: float
) -> torch.Tensor:
    """Top-k attention of ``q [B, H, Lq, D]`` over ``k, v [B, H_kv, Lk, D]`` (bottom-right causal).

    Differentiable: when autograd records (an input requires grad), the forward's record of each
    query's kept keys and weights is kept for :func:`_backward`."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _TopKFunction.apply(q, k, v, top_k, causal, scale)
    return _forward(q, k, v, top_k=top_k, causal=causal, scale=scale)[0]


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, top_k: int, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output and its record: each query's kept keys ``[B · H · Lq, K_PAD]`` (−1 past them) and
    their softmax weights."""
    launch = Launch.of(q, k, v, top_k=top_k, causal=causal, scale=scale)
    _, candidates, counts = _first_passes(q, k, launch, top_k)
    batch, heads, q_len, head_dim = q.shape
    k_pad, cap = triton.next_power_of_2(top_k), candidates.shape[1]
    v_strides = (v.stride(0), v.stride(1), v.stride(2))
    out = torch.empty_like(q)
    o_strides = (out.stride(0), out.stride(1), out.stride(2))
    lines = batch * heads * q_len
    index = torch.empty(lines, k_pad, device=q.device, dtype=torch.int32)
    weight = torch.empty(lines, k_pad, device=q.device, dtype=torch.float32)
    gather = min(GATHER, k_pad)
    block_d = launch.shape["BLOCK_D"]
    _select[(triton.cdiv(q_len, SELECT_BLOCK_M), batch * heads)](
        v, out, candidates, counts, index, weight, *v_strides, *o_strides, heads, heads // k.shape[1], q_len,
        head_dim, TOP_K=top_k, K_PAD=k_pad, CAP=cap, BLOCK_M=SELECT_BLOCK_M, BLOCK_D=block_d, GATHER=gather,
    )  # fmt: skip
    # 8 warps: at k = 32 the streaming kernel spills 4.4 KB a thread with them and 7.2 KB with 4 (ptxas for
    # sm_90, without a GPU); it runs only for rows whose candidates overflow.
    _streaming[(triton.cdiv(q_len, STREAM_BLOCK_M), batch * heads)](
        q, k, v, out, counts, index, weight, *launch.q_strides, *launch.k_strides, *v_strides, *o_strides,
        *launch.sizes, TOP_K=top_k, K_PAD=k_pad, CAP=cap, BLOCK_N=max(BLOCK_N, k_pad), BLOCK_M=STREAM_BLOCK_M,
        BLOCK_D=block_d, GATHER=gather, **launch.scoring, num_warps=8,
    )  # fmt: skip
    return out, index, weight


class _TopKFunction(torch.autograd.Function):
    """Top-k attention with its backward (:func:`_backward`)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int, causal: bool,
                scale: float) -> torch.Tensor:  # fmt: skip
        out, index, weight = _forward(q, k, v, top_k=top_k, causal=causal, scale=scale)
        ctx.save_for_backward(q, k, v, out, index, weight)
        ctx.top_k, ctx.scale = top_k, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, index, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        batch, heads, q_len, head_dim = q.shape
        dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)  # contiguous: the kernel's layout
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        strides = [t.stride(i) for t in (q, k, v, out, grad_out, dq) for i in range(3)]
        _backward[(triton.cdiv(q_len, BACKWARD_BLOCK_M), batch * heads)](
            q, k, v, out, grad_out, index, weight, dq, dk, dv, *strides,
            heads, heads // k.shape[1], q_len, k.shape[2], head_dim, ctx.scale,
            TOP_K=ctx.top_k, K_PAD=index.shape[1], BLOCK_M=BACKWARD_BLOCK_M,
            BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        )  # fmt: skip
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None


def first_passes(
    q: torch.Tensor, k: torch.Tensor, *, top_k: int, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Passes 1 and 2: per query (flattened ``[B · H · Lq]``) the threshold ``t₀``, the row of packed
    candidates and their count (above the row's ``CAP`` slots: overflowed, for the streaming pass)."""
    return _first_passes(q, k, Launch.of(q, k, None, top_k=top_k, causal=causal, scale=scale), top_k)


def _first_passes(
    q: torch.Tensor, k: torch.Tensor, launch: Launch, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lines = q.shape[0] * q.shape[1] * q.shape[2]
    threshold = torch.empty(lines, device=q.device, dtype=torch.float32)
    candidates = torch.empty(lines, CAP_PER_K * triton.next_power_of_2(top_k), device=q.device, dtype=torch.int64)
    counts = torch.empty(lines, device=q.device, dtype=torch.int32)
    common = (*launch.q_strides, *launch.k_strides, *launch.sizes)
    even_d = q.shape[3] == launch.shape["BLOCK_D"]
    _threshold[launch.grid](q, k, threshold, *common, TOP_K=top_k, K_PAD=triton.next_power_of_2(top_k), BLOCK_N=LANES,
                            EVEN_D=even_d, SORT=not interpreted(), **launch.shape, **launch.scoring)  # fmt: skip
    _candidates[launch.grid](q, k, threshold, candidates, counts, *common, CAP=candidates.shape[1],
                             BLOCK_N=CANDIDATE_BLOCK_N, EVEN_D=even_d, **launch.shape, **launch.scoring)  # fmt: skip
    return threshold, candidates, counts


@dataclass(frozen=True)
class Launch:
    """What every pass's launch shares: the grid, the sizes, the strides and the scoring options."""

    grid: tuple[int, int]
    sizes: tuple[int, int, int, int, int, int, float]
    q_strides: tuple[int, int, int]
    k_strides: tuple[int, int, int]
    shape: dict[str, int]
    scoring: dict[str, Any]

    @classmethod
    def of(
        cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, *, top_k: int, causal: bool, scale: float
    ) -> Launch:
        """The launch of ``q`` over ``k`` (and ``v``), its arguments checked."""
        batch, heads, q_len, head_dim = q.shape
        kv_heads, k_len = k.shape[1], k.shape[2]
        if any(t.stride(-1) != 1 for t in (q, k, v) if t is not None):
            raise ValueError("topk_attention: q, k and v need a contiguous last dimension")
        if causal and q_len > k_len:
            raise ValueError(f"topk_attention: causal needs q_len <= kv_len, got {q_len} > {k_len}")
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"topk_attention: top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        return cls(
            grid=(triton.cdiv(q_len, BLOCK_M), batch * heads),
            sizes=(heads, heads // kv_heads, q_len, k_len, k_len - q_len, head_dim, scale),
            q_strides=(q.stride(0), q.stride(1), q.stride(2)),
            k_strides=(k.stride(0), k.stride(1), k.stride(2)),
            shape={"BLOCK_M": BLOCK_M, "BLOCK_D": max(16, triton.next_power_of_2(head_dim))},
            scoring={
                "CAUSAL": causal,
                # float32: IEEE products (the 1e-5 bound); half inputs: tensor-core products, exact in float32.
                "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
                "UPCAST": interpreted() and q.dtype == torch.bfloat16,
            },
        )
