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
  (copies), materializes the float32 scores and their softmax (2·S·4), and turns a boolean
  mask into an additive one (Lq·Lk·e).
* flash-style kernels (sdpa-flash / -efficient / -cudnn, flex, flash-attn, xFormers): the output
  and a float32 log-sum-exp per query row; an SDPA kernel given a dense *boolean* mask also
  converts it to an additive mask of Lq·Lk·e (an ALiBi bias is additive already: measured on the
  H100, counting it over-predicted 2–5×).
* tiled: the output plus one tile's float32 scores, probabilities and accumulators.
* linear: eager causal keeps running D × D states for every position (2·B·H·Lk·D²·e: the outer
  products and their cumulative sum); chunked kernels keep one D × D state (O(D²)) per head,
  fla one per 64-token chunk.
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
        out_work = b * h * lq * d * 4 + (out if half else 0)
        return rotated + upcast + scaled + expanded + mask + 2 * s * 4 + out_work
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
        work = max(e, 4)  # eager and tiled accumulate in float32 at least
        features = 2 * b * h * max(lq, lk) * d * (work if backend in ("eager", "tiled") else e)
        state = b * h * d * d * 4
        if backend == "eager":
            return features + (2 * b * h * lk * d * d * work if case.causal else state) + out
        if backend == "fla":
            return features + b * h * (-(-lk // 64)) * d * d * 4 + out
        return features + state + out
    raise ValueError(f"no memory model for the {mech.family} family")
