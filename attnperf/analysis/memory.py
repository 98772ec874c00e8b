"""Bytes: the minimum a forward must move, and the peak extra memory a backend allocates.

**Minimum bytes**: read q, k, v once and write the output once — the memory side of the
roofline (a KV-cache decode step is bound by it).

**Predicted peak extra memory** of one forward beyond its inputs (what
``torch.cuda.max_memory_allocated`` grows by), derived from each backend's code path; S is the
number of score elements ``B·H·Lq·Lk`` and e the element size:

* eager: ``q kᵀ`` then ``· scale`` (two score tensors alive at once); in float32 that is the
  peak (2·S·4, the softmax output replacing one); in half precision the float32 softmax of a
  float32 copy while the half scores live: S·(2 + 4 + 4). Plus GQA's expanded k/v and RoPE's
  rotated q/k.
* eager top-k: float32 scores, sort values (4 bytes) and indices (8 bytes): 16·S.
* sdpa-math: PyTorch's composite math path upcasts half inputs to float32, scales q and k
  (copies), turns a boolean mask into an additive one (Lq·Lk·4), and at its peak holds the
  float32 scores, their softmax (2·S·4) and ``_safe_softmax``'s boolean ``== -inf`` test of
  every score with its per-row flags (S + B·H·Lq bytes). Without that last term the model was
  9–10% short on every H100 shape (0.90 at 16k tokens); with it, within 1% (the output, made
  after the scores are freed, is never the peak).
* flash-style kernels (sdpa-flash / -efficient / -cudnn, flex, flash-attn, xFormers): the output
  and a float32 log-sum-exp per query row; an SDPA kernel given a dense *boolean* mask also
  converts it to an additive mask of Lq·Lk·e (an ALiBi bias is additive already: measured on the
  H100, counting it over-predicted 2–5×).
* tiled: the output plus one tile's float32 scores, probabilities and accumulators.
* linear, eager: φ(q), φ(k) and (for half inputs) v in the working precision, float32 at least.
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
    if backend == "eager":
        scores = 2 * s * 4 if e == 4 else max(2 * s * e, s * e + 8 * s, s * e + 4 * s + s * e)
        expanded = 2 * b * h * lk * d * e if gqa else 0
        return rotated + expanded + scores + out
    if backend == "sdpa-math":
        upcast = (b * h * lq * d + 2 * b * case.n_kv_heads * lk * d) * 4 if half else 0
        scaled = (b * h * lq * d + b * case.n_kv_heads * lk * d) * 4
        expanded = 2 * b * h * lk * d * 4 if gqa else 0
        mask = lq * lk * 4 if masked or (mech.mask_kind(case) == "causal") else 0
        safe_softmax = s + b * h * lq  # the -inf test of every score and the all-masked-row flags
        return rotated + upcast + scaled + expanded + mask + 2 * s * 4 + safe_softmax
    if backend in FLASH_STYLE:
        # SDPA turns a boolean mask into an additive one (Lq·Lk·e); a bias is additive already.
        boolean_mask = mech.mask_kind(case) == "custom" and mech.bias_fn(case, "cpu") is None
        dense_mask = lq * lk * e if boolean_mask and backend.startswith("sdpa-") else 0
        return rotated + dense_mask + out + lse
    if backend == "tiled":
        bq, bk = min(TILE, lq), min(TILE, lk)
        groups = h
        tile = groups * b * bq * bk * 4
        acc = 2 * b * h * bq * d * 4
        return rotated + out + 3 * tile + acc
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
    out_cast = out if upcast else 0  # ``.to(q.dtype)`` copies only when the precisions differ
    if backend == "eager":
        expanded = 2 * b * h * lk * d * e if gqa else 0  # expand_kv's copies, alive for the call
        values = b * h * lk * d * work if upcast else 0
        if case.causal:  # the outer products and their cumulative sum, alive together
            return expanded + features + values + 2 * b * h * lk * d * d * work
        return expanded + features + values + state + 2 * row + out_cast
    if backend == "tiled":
        values = b * h * lk * d * work if (upcast or gqa) else 0
        if not case.causal:  # φ(q)·S and φ(q)·z; the cast comes after φ(q)·z is freed
            return features + values + state + 2 * row
        bq, bk = min(TILE, lq), min(TILE, lk)
        tile = (b * h * bq * bk + b * h * bq * d) * work  # one chunk's masked scores and partial output
        return features + values + state + 2 * row + tile + out_cast
    raise ValueError(f"no memory model for backend {backend!r} on linear attention")
