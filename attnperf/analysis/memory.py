"""Bytes: the minimum a forward must move, and the peak extra memory a backend allocates.

**Minimum bytes**: read q, k, v once and write the output once — the memory side of the
roofline (a KV-cache decode step is bound by it).

**Predicted peak extra memory** of one forward beyond its inputs (what
``torch.cuda.max_memory_allocated`` grows by), derived from each backend's code path; S is the
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
* flex's block mask (O(n²/128²)) and SDPA's dense masks are built in ``prepare``, before the
  measured call, and so are not counted here.
"""

from __future__ import annotations

from attnperf.case import Case
from attnperf.mechanisms import Mechanism, SoftmaxMechanism, get_mechanism

FLASH_STYLE = frozenset(
    {"sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "flash-attn4", "flash-attn3", "xformers"}
)
TILE = 128


def element_size(case: Case) -> int:
    return case.torch_dtype.itemsize


def min_bytes(case: Case) -> int:
    """q, k, v read once and the output written once."""
    e = element_size(case)
    q = case.batch * case.heads * case.q_len * case.head_dim
    kv = case.batch * case.n_kv_heads * case.k_len * case.head_dim
    return e * (2 * q + 2 * kv)


def _softmax_peak(mech: SoftmaxMechanism, backend: str, case: Case) -> int:
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    s = b * h * lq * lk
    out = b * h * lq * d * e
    lse = b * h * lq * 4
    half = e < 4
    gqa = case.n_kv_heads != case.heads
    rope = mech.qk_transform(case, "cpu", case.torch_dtype) is not None
    rotated = (b * h * lq * d + b * case.n_kv_heads * lk * d) * e if rope else 0
    masked = mech.mask_kind(case) == "custom" or mech.bias_fn(case, "cpu") is not None
    w = max(e, 4)  # the working precision: half inputs are computed in float32
    if backend == "eager":
        # float32/64: scores and probabilities, then the output beside them; half: the scores beside
        # their float32 copy and its softmax, later half probabilities and the output
        scores = 2 * s * e + out if e >= 4 else max(s * e + 8 * s, 2 * s * e + out)
        expanded = 2 * b * h * lk * d * e if gqa else 0
        return rotated + expanded + scores
    if backend == "sdpa-math":
        upcast = (b * h * lq * d + 2 * b * case.n_kv_heads * lk * d) * w if half else 0
        expanded = 2 * b * h * lk * d * w if gqa else 0
        mask = lq * lk * w if masked or (mech.mask_kind(case) == "causal") else 0
        q_scaled = b * h * lq * d * w
        k_scaled = b * (h if gqa else case.n_kv_heads) * lk * d * w
        product = q_scaled + k_scaled + s * w  # q·√scale and k·√scale while q kᵀ is formed
        softmax = q_scaled + 2 * s * w + s + b * h * lq  # scores, probabilities, the -inf test, row flags
        output = q_scaled + s * w + b * h * lq * d * w + (out if half else 0)  # probabilities, output, its cast
        return rotated + upcast + expanded + mask + max(product, softmax, output)
    if backend in FLASH_STYLE:
        # SDPA turns a boolean mask into an additive one (Lq·Lk·e); a bias is additive already.
        boolean_mask = mech.mask_kind(case) == "custom" and mech.bias_fn(case, "cpu") is None
        dense_mask = lq * lk * e if boolean_mask and backend.startswith("sdpa-") else 0
        return rotated + dense_mask + out + lse
    if backend == "tiled":
        bq, bk = min(TILE, lq), min(TILE, lk)
        tile = b * h * bq * bk * w  # one tile's scores in the working precision
        acc = 3 * b * h * bq * d * w  # the running output, its rescaled copy and p·v
        # GQA: the grouped product broadcasts a kv tile over the group and materializes it
        broadcast = b * h * bk * d * e if gqa else 0
        return rotated + out + 3 * tile + acc + broadcast
    raise ValueError(f"no memory model for backend {backend!r} on {mech.name}")


def predicted_peak_bytes(mechanism: str | Mechanism, backend: str, case: Case) -> int:
    """Predicted peak extra bytes of one forward of ``backend`` on ``case`` (see module doc)."""
    mech = get_mechanism(mechanism)
    if isinstance(mech, SoftmaxMechanism):
        return _softmax_peak(mech, backend, case)
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    out = b * h * lq * d * e
    if mech.family == "topk":
        k = case.top_k or 0
        if backend == "eager":
            return 16 * b * h * lq * lk + out
        bq = min(TILE, lq)
        return out + b * h * bq * (k + TILE) * (4 + 8) * 2 + b * h * bq * k * d * 4
    if mech.family == "linear":
        return _linear_peak(backend, case)
    raise ValueError(f"no memory model for the {mech.family} family")


def _linear_peak(backend: str, case: Case) -> int:
    e = element_size(case)
    b, h, lq, lk, d = case.batch, case.heads, case.q_len, case.k_len, case.head_dim
    out = b * h * lq * d * e
    if backend == "fla":
        features = b * h * (lq + lk) * d * e
        states = b * h * (-(-lk // 64)) * d * d * e
        return features + max(states + out, 4 * out)
    work = max(e, 4)  # eager and tiled accumulate in float32 at least
    upcast, gqa = e != work, case.n_kv_heads != h
    features = b * h * (lq + lk) * d * work
    state = b * h * d * d * work
    row = b * h * lq * d * work  # one output-sized tensor in the working precision
    key = b * h * lk * d * work  # one key-sized tensor in the working precision
    out_cast = out if upcast else 0  # ``.to(q.dtype)`` copies only when the precisions differ
    # φ(x) = elu(x) + 1 holds x's converted copy, elu(x) and the result at once: with few queries
    # and a long key sequence, φ(k) is the peak.
    phi_q = (row if upcast else 0) + 2 * row
    if backend == "eager":
        expanded = b * h * lk * d * e if gqa else 0  # one of expand_kv's copies of k and v
        values = key if upcast else 0  # v's float32 copy; k's is made the same way for φ(k)
        phi_k = row + values + 2 * key
        if case.causal:  # the outer products and their cumulative sum, alive together
            main = features + values + 2 * b * h * lk * d * d * work
        else:
            main = features + values + state + 2 * row + out_cast
        # rebinding v to its float32 copy frees the expanded half-precision v
        return max(2 * expanded + max(phi_q, phi_k), (1 if upcast else 2) * expanded + main)
    if backend == "tiled":
        values = key if (upcast or gqa) else 0  # v's converted or expanded copy; k's alike for φ(k)
        phi_k = row + values + 2 * key
        if not case.causal:  # φ(q)·S and φ(q)·z; the cast comes after φ(q)·z is freed
            return max(phi_q, phi_k, features + values + state + 2 * row)
        bq, bk = min(TILE, lq), min(TILE, lk)
        tile = (b * h * bq * bk + b * h * bq * d) * work  # one chunk's masked scores and partial output
        return max(phi_q, phi_k, features + values + state + 2 * row + tile + out_cast)
    raise ValueError(f"no memory model for backend {backend!r} on linear attention")
