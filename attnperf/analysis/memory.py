"""Bytes: the minimum a forward must move, and the peak extra memory a backend allocates.

**Minimum bytes**: read q, k, v once and write the output once — the memory side of the
roofline (a KV-cache decode step is bound by it).

**Predicted peak extra memory** of one forward beyond its inputs (what
``torch.cuda.max_memory_allocated`` grows by), derived from each code path. This module holds the
formulas, one per code path; each backend names the ones its code follows
(:meth:`attnperf.backends.Backend.predicted_peak_bytes`), so a new backend brings its model with
it and ``tests/test_backends.py`` proves every registered backend has one. S is the
number of score elements ``B·H·Lq·Lk``, e the element size and w the working precision (float32
for half inputs, else e). Where a backend passes through phases, the peak is the largest. The
plain-PyTorch backends (eager, sdpa-math, tiled) are held to the CPU allocator's exact peak over
MHA/GQA/MQA, decode and cross shapes in three dtypes (tests/test_analysis.py), the fused kernels
to the H100 (tests/test_gpu_records.py):

* eager: ``q kᵀ`` then ``· scale`` (two score tensors alive at once); in float32/64 the scores,
  their softmax and the output (2·S·e + out); in half precision the float32 softmax of a
  float32 copy while the half scores live, S·(e + 8), or later the half probabilities beside
  the scores and the output. Plus GQA's expanded k/v and RoPE's rotated q/k.
* eager top-k: float32 scores, sort values (4 bytes) and indices (8 bytes): 16·S.
* sdpa-math: PyTorch's composite math path upcasts half inputs to w, expands GQA's k and v,
  turns a boolean mask into an additive one (Lq·Lk·w) and scales q and k (copies; k's, of the
  expanded key, is freed once q kᵀ is formed). Then the largest of: the product phase (scaled
  q and k, S·w), the softmax phase (scores, softmax, and ``_safe_softmax``'s boolean ``== -inf``
  test of every score with its per-row flags: 2·S·w + S + B·H·Lq) and the output phase
  (probabilities, the output in w and its cast). Without the ``-inf`` test the model was 9–10%
  short on every H100 shape; the output phase is the peak when Lk is not much above D.
* flash-style kernels (sdpa-flash / -efficient / -cudnn, flex, flash-attn, xFormers): the output
  and a float32 log-sum-exp per query row; an SDPA kernel given a dense *boolean* mask also
  converts it to an additive mask of Lq·Lk·e (an ALiBi bias is additive already: measured on the
  H100, counting it over-predicted 2–5×).
* tiled: the output plus one tile's scores, probabilities and exponentials in w, the running
  output with its rescaled copy and p·v, and with GQA the kv tile that the grouped product
  broadcasts over the group (materialized, B·H·bk·D·e).
* linear, eager: φ(q), φ(k) and (for half inputs) v in the working precision, float32 at least;
  φ(x) = elu(x) + 1 holds x's converted copy, elu(x) and the result at once, which is the peak
  with few queries and a long key sequence (decode, cross attention).
  Causal keeps running D × D states for every position, the outer products and their
  cumulative sum alive together (2·B·H·Lk·D²·4: 4144 MiB measured and predicted at n = 2048,
  16 heads, D = 128, bf16 on the H100); non-causal one D × D state and two output-sized
  float32 tensors (``φ(q)·S`` with ``φ(q)·z``, or with the quotient).
* linear, tiled: the same features (v also when GQA expands it), one D × D state per head and
  two output-sized float32 tensors (causal: the per-chunk outputs and their concatenation, plus
  one chunk's scores and partial output; non-causal: ``φ(q)·S`` and ``φ(q)·z``). On the H100
  this replaced a features + state count that was 2.2× short (91 MiB measured at n = 2048,
  16 heads, D = 128, bf16); counting the causal tile twice over-predicted 1024-token cases
  by 11%, and the final cast, which non-causal makes after ``φ(q)·z`` is freed, by 9%.
* ``.to(q.dtype)`` at the end of eager and tiled copies the output only for half inputs.
* linear, fla (fla-core 0.6.0, ``chunk_linear_attn(normalize=True)``): φ(q), φ(k) in the input
  dtype, then the larger of two phases: the chunk states (one D × D per 64-token chunk, kept in
  the input dtype in the forward) with the unnormalized output, or the normalization, where the
  output, the key cumsum, ``q·scale`` and its product with the cumsum are alive at once (4
  output-sized tensors). On the H100 the second phase is the peak: 96 MiB at n = 4096, 16
  heads, D = 128, bf16; counting float32 states over-predicted by 17%.
* triton (attnperf's own kernels, predicted from their code, not yet held to a GPU
  measurement): top-k the output, a threshold and a count per query and its row of
  CAP_PER_K · k' packed int64 candidates (k' = k rounded up to a power of two; a call whose rows
  overflow also allocates a second output for the exact streaming pass, not counted);
  linear the output plus float32 chunk states, one D × D state and a D normalizer per kv head
  for every 64-token chunk and one more (the state of all keys).
* onnxruntime runs the exported eager graph: the eager formulas are its model, an upper estimate
  (ONNX Runtime plans and reuses its own buffers) that no measurement holds: its CPU arena is
  invisible to RSS growth and its CUDA memory to PyTorch's allocator.
* flex's block mask (O(n²/128²)) and SDPA's dense masks are built in ``prepare``, before the
  measured call, and so are not counted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attnperf.case import Case
from attnperf.mechanisms import Mechanism, SoftmaxMechanism, get_mechanism

if TYPE_CHECKING:
    from attnperf.backends import Backend


def element_size(case: Case) -> int:
    return case.torch_dtype.itemsize


def min_bytes(case: Case) -> int:
    """q, k, v read once and the output written once."""
    e = element_size(case)
    q = case.batch * case.heads * case.q_len * case.head_dim
    kv = case.batch * case.n_kv_heads * case.k_len * case.head_dim
    return e * (2 * q + 2 * kv)


def predicted_peak_bytes(mechanism: str | Mechanism, backend: str | Backend, case: Case) -> int:
    """Predicted peak extra bytes of one forward of ``backend`` on ``case`` (see module doc)."""
    from attnperf.backends import get_backend  # backends import this module's formulas

    return get_backend(backend).predicted_peak_bytes(get_mechanism(mechanism), case)


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
    """attnperf's Triton top-k: the output, and per query a float32 threshold, an int32 count and
    ``cap_per_k · k'`` int64 candidates (k' = top_k rounded up to a power of two)."""
    k_pad = 1 << max(0, ((case.top_k or 1) - 1).bit_length())
    return output_bytes(case) + case.batch * case.heads * case.q_len * (4 + 4 + 8 * cap_per_k * k_pad)


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
