"""Bytes: the minimum a forward must move, and the peak extra memory a backend allocates.

**Minimum bytes** (:func:`min_bytes`): q, k, v read once and the output written once, the memory
side of the roofline.

**Peak extra memory** of one forward beyond its inputs (what ``torch.cuda.max_memory_allocated``
grows by): one formula per code path, derived from that code, with S = ``B·H·Lq·Lk`` score
elements, e the element size and w the working precision (float32 for half inputs, else e).
Where a path passes through phases the peak is the largest phase. Each backend names the
formulas its code follows (:meth:`attnperf.backends.Backend.predicted_peak_bytes`), so a new
backend brings its model with it. Masks built in ``prepare`` (flex's block mask, SDPA's dense
masks) come before the measured call and are not counted. The derivation of every formula, and
the measurements that shaped it, are in ``docs/memory-model.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnperf.case import Case
from attnperf.mechanisms import SoftmaxMechanism


def element_size(case: Case) -> int:
    return case.torch_dtype.itemsize


def min_bytes(case: Case) -> int:
    """q, k, v read once and the output written once."""
    e = element_size(case)
    q = case.batch * case.heads * case.q_len * case.head_dim
    kv = case.batch * case.n_kv_heads * case.k_len * case.head_dim
    return e * (2 * q + 2 * kv)


def _rotated(mech: SoftmaxMechanism, case: Case) -> int:
    """RoPE's rotated copies of q and k (0 for every other mechanism)."""
    if mech.qk_transform(case, "cpu", case.torch_dtype) is None:
        return 0
    return (
        (case.batch * case.heads * case.q_len + case.batch * case.n_kv_heads * case.k_len)
        * case.head_dim
        * (element_size(case))
    )


def eager_softmax_peak(mech: SoftmaxMechanism, case: Case) -> int:
    """float32/64: scores and probabilities, then the output beside them; half: the scores beside
    their float32 copy and its softmax, later half probabilities and the output."""
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    s, out = b * h * lq * lk, b * h * lq * d * e
    scores = 2 * s * e + out if e >= 4 else max(s * e + 8 * s, 2 * s * e + out)
    expanded = 2 * b * h * lk * d * e if case.n_kv_heads != h else 0
    return _rotated(mech, case) + expanded + scores


def sdpa_math_peak(mech: SoftmaxMechanism, case: Case) -> int:
    """PyTorch's composite math path: upcasts, expanded GQA heads, the additive mask, then the
    largest of its product, softmax and output phases (module doc)."""
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    s, out = b * h * lq * lk, b * h * lq * d * e
    half, gqa = e < 4, case.n_kv_heads != h
    w = max(e, 4)  # the working precision: half inputs are computed in float32
    masked = mech.mask_kind(case) == "custom" or mech.bias_fn(case, "cpu") is not None
    upcast = (b * h * lq * d + 2 * b * case.n_kv_heads * lk * d) * w if half else 0
    expanded = 2 * b * h * lk * d * w if gqa else 0
    mask = lq * lk * w if masked or (mech.mask_kind(case) == "causal") else 0
    q_scaled = b * h * lq * d * w
    k_scaled = b * (h if gqa else case.n_kv_heads) * lk * d * w
    product = q_scaled + k_scaled + s * w  # q·√scale and k·√scale while q kᵀ is formed
    softmax = q_scaled + 2 * s * w + s + b * h * lq  # scores, probabilities, the -inf test, row flags
    output = q_scaled + s * w + b * h * lq * d * w + (out if half else 0)  # probabilities, output, its cast
    return _rotated(mech, case) + upcast + expanded + mask + max(product, softmax, output)


def fused_softmax_peak(mech: SoftmaxMechanism, case: Case, *, converts_boolean_mask: bool) -> int:
    """Flash-style kernels: the output and a float32 log-sum-exp per query row; SDPA's kernels
    (``converts_boolean_mask``) also turn a dense boolean mask into an additive one (Lq·Lk·e)."""
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    boolean_mask = mech.mask_kind(case) == "custom" and mech.bias_fn(case, "cpu") is None
    dense_mask = lq * lk * e if boolean_mask and converts_boolean_mask else 0
    return _rotated(mech, case) + dense_mask + b * h * lq * d * e + b * h * lq * 4


def tiled_softmax_peak(mech: SoftmaxMechanism, case: Case, tile: int) -> int:
    """The output plus one tile's scores, probabilities and exponentials, the running output with
    its rescaled copy and p·v, and with GQA the kv tile broadcast over the group."""
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    w = max(e, 4)
    bq, bk = min(tile, lq), min(tile, lk)
    scores = b * h * bq * bk * w  # one tile's scores in the working precision
    acc = 3 * b * h * bq * d * w  # the running output, its rescaled copy and p·v
    broadcast = b * h * bk * d * e if case.n_kv_heads != h else 0  # GQA's materialized kv tile
    return _rotated(mech, case) + b * h * lq * d * e + 3 * scores + acc + broadcast


def eager_topk_peak(case: Case) -> int:
    """float32 scores, sort values (4 bytes) and indices (8 bytes): 16·S, plus the output."""
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    return 16 * b * h * lq * lk + b * h * lq * d * element_size(case)


def tiled_topk_peak(case: Case, tile: int) -> int:
    """The output, one query tile's running k best with a key tile's candidates (values and
    indices, twice while merged) and the gathered values."""
    b, h, lq, d = case.batch, case.heads, case.q_len, case.head_dim
    k, bq = case.top_k or 0, min(tile, lq)
    return b * h * lq * d * element_size(case) + b * h * bq * (k + tile) * (4 + 8) * 2 + b * h * bq * k * d * 4


def fla_linear_peak(case: Case, chunk: int) -> int:
    """fla's chunked linear attention: φ(q), φ(k), then the larger of the chunk states with the
    unnormalized output and the normalization's four output-sized tensors."""
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    out = b * h * lq * d * e
    features = b * h * (lq + lk) * d * e
    states = b * h * (-(-lk // chunk)) * d * d * e
    return features + max(states + out, 4 * out)


@dataclass(frozen=True)
class _LinearTerms:
    """The tensors eager's and tiled's linear attention share (module doc), in bytes."""

    work: int  # eager and tiled accumulate in float32 at least
    upcast: bool  # half inputs: converted copies exist
    gqa: bool
    features: int  # φ(q) and φ(k) in the working precision
    state: int  # one D × D state per head
    row: int  # one output-sized tensor in the working precision
    key: int  # one key-sized tensor in the working precision
    out_cast: int  # ``.to(q.dtype)`` copies only when the precisions differ
    phi_q: int  # φ(x) = elu(x) + 1 holds x's converted copy, elu(x) and the result at once

    @classmethod
    def of(cls, case: Case) -> _LinearTerms:
        e = element_size(case)
        b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
        work = max(e, 4)
        upcast = e != work
        row = b * h * lq * d * work
        return cls(work=work, upcast=upcast, gqa=case.n_kv_heads != h, features=b * h * (lq + lk) * d * work,
                   state=b * h * d * d * work, row=row, key=b * h * lk * d * work,
                   out_cast=b * h * lq * d * e if upcast else 0, phi_q=(row if upcast else 0) + 2 * row)  # fmt: skip


def eager_linear_peak(case: Case) -> int:
    """Feature maps, then causal's running D × D states (outer products and their cumulative sum
    alive together) or non-causal's one state and two output-sized tensors. With few queries and a
    long key sequence, φ(k) is the peak."""
    t = _LinearTerms.of(case)
    b, h, lk, d = case.batch, case.heads, case.k_len, case.head_dim
    expanded = b * h * lk * d * element_size(case) if t.gqa else 0  # one of expand_kv's copies of k and v
    values = t.key if t.upcast else 0  # v's float32 copy; k's is made the same way for φ(k)
    phi_k = t.row + values + 2 * t.key
    if case.causal:  # the outer products and their cumulative sum, alive together
        main = t.features + values + 2 * b * h * lk * d * d * t.work
    else:
        main = t.features + values + t.state + 2 * t.row + t.out_cast
    # rebinding v to its float32 copy frees the expanded half-precision v
    return max(2 * expanded + max(t.phi_q, phi_k), (1 if t.upcast else 2) * expanded + main)


def output_bytes(case: Case) -> int:
    """The ``[B, H, Lq, D]`` output in the input dtype: a kernel that allocates nothing else."""
    return case.batch * case.heads * case.q_len * case.head_dim * element_size(case)


def triton_topk_peak(case: Case, cap_per_k: int) -> int:
    """attnperf's Triton top-k: the output, and per query a float32 threshold, an int32 count,
    ``cap_per_k · k'`` int64 candidates and the record of its k' kept keys (int32) and weights
    (float32) (k' = top_k rounded up to a power of two)."""
    k_pad = 1 << max(0, ((case.top_k or 1) - 1).bit_length())
    return output_bytes(case) + case.batch * case.heads * case.q_len * (4 + 4 + 8 * cap_per_k * k_pad + 8 * k_pad)


def triton_linear_peak(case: Case, chunk: int) -> int:
    """attnperf's Triton linear attention: the output and float32 states and normalizers for every
    chunk boundary of each kv head (the exclusive prefixes and the total)."""
    d, slots = case.head_dim, -(-case.k_len // chunk) + 1
    return output_bytes(case) + case.batch * case.n_kv_heads * slots * (d * d + d) * 4


def tiled_linear_peak(case: Case, tile: int) -> int:
    """The same features, one D × D state per head and two output-sized tensors; causal adds one
    chunk's masked scores and partial output."""
    t = _LinearTerms.of(case)
    values = t.key if (t.upcast or t.gqa) else 0  # v's converted or expanded copy; k's alike for φ(k)
    phi_k = t.row + values + 2 * t.key
    if not case.causal:  # φ(q)·S and φ(q)·z; the cast comes after φ(q)·z is freed
        return max(t.phi_q, phi_k, t.features + values + t.state + 2 * t.row)
    b, h, d = case.batch, case.heads, case.head_dim
    bq, bk = min(tile, case.q_len), min(tile, case.k_len)
    chunk = (b * h * bq * bk + b * h * bq * d) * t.work  # one chunk's masked scores and partial output
    return max(t.phi_q, phi_k, t.features + values + t.state + 2 * t.row + chunk + t.out_cast)
