"""FLOPs per (mechanism, backend, case): useful (attended pairs) and executed (what runs).

Convention (flash-attn's benchmarks): matrix-multiply FLOPs only, 2 per multiply-add.
A softmax forward has two products, q kᵀ and P v, so attending Lk keys from Lq queries costs
``4 · B · H · Lq · Lk · D``; a causal square case attends n(n+1)/2 pairs, about half. Softmax,
masks, biases and rotations are elementwise and not counted (nor does
``torch.utils.flop_counter.FlopCounterMode``, which the tests hold the eager counts to).

* **useful**: only the attended (query, key) pairs, so an O(n·w) window kernel is not credited
  with n² work; for top-k, the n² scores it must compute to choose plus the k products.
* **executed**: what the backend really multiplies — dense for backends that materialize the
  scores (eager, sdpa-math, and SDPA kernels given a dense mask), whole 128 × 128 blocks for
  block-skipping kernels (flex, tiled, flash-attn, xFormers, SDPA's native causal), the
  associative O(n·D²) form for linear attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnperf.case import Case
from attnperf.mechanisms import Mechanism, SoftmaxMechanism, get_mechanism
from attnperf.mechanisms.local import Window

BLOCK = 128
#: Backends that compute every (query, key) score whatever the mask.
MATERIALIZING = frozenset({"eager", "sdpa-math"})
#: Backends whose kernels skip blocks for causal / window masks natively.
BLOCK_SKIPPING = frozenset({"flex", "tiled", "flash-attn4", "flash-attn3", "xformers"})
SDPA_KERNELS = frozenset({"sdpa-flash", "sdpa-efficient", "sdpa-cudnn"})


@dataclass(frozen=True)
class Flops:
    useful: float
    executed: float


def _rows(case: Case, rows: int = 256) -> list[tuple[int, int]]:
    return [(s, min(s + rows, case.q_len)) for s in range(0, case.q_len, rows)]


def allowed_pairs(mechanism: SoftmaxMechanism, case: Case) -> int:
    """How many (query, key) pairs the mask allows, counted a band of rows at a time."""
    fn = mechanism.mask_fn(case, "cpu")
    if fn is None:
        return case.q_len * case.k_len
    kv_idx = torch.arange(case.k_len)[None, :]
    return sum(int(fn(torch.arange(s, e)[:, None], kv_idx).expand(e - s, case.k_len).sum()) for s, e in _rows(case))


def visited_block_pairs(mechanism: SoftmaxMechanism, case: Case, block: int = BLOCK) -> int:
    """(query, key) pairs inside the ``block × block`` tiles that have any allowed pair."""
    fn = mechanism.mask_fn(case, "cpu")
    if fn is None:
        return case.q_len * case.k_len
    total = 0
    kv_idx = torch.arange(case.k_len)[None, :]
    for qs in range(0, case.q_len, block):
        qe = min(qs + block, case.q_len)
        allowed = fn(torch.arange(qs, qe)[:, None], kv_idx).expand(qe - qs, case.k_len)
        for ks in range(0, case.k_len, block):
            ke = min(ks + block, case.k_len)
            if allowed[:, ks:ke].any():
                total += (qe - qs) * (ke - ks)
    return total


def native_mask(mechanism: SoftmaxMechanism, case: Case, backend: str) -> bool:
    """Whether ``backend`` expresses this mask natively (so it can skip blocks) on ``case``."""
    if mechanism.bias_fn(case, "cpu") is not None:
        return backend in ("flex", "tiled")  # a bias rides along as a score mod
    kind = mechanism.mask_kind(case)
    if kind != "custom":
        return True
    if backend in ("flex", "tiled"):
        return True
    return isinstance(mechanism, Window) and backend in ("flash-attn4", "xformers")


def executed_pairs(mechanism: SoftmaxMechanism, case: Case, backend: str) -> int:
    if backend in MATERIALIZING or not native_mask(mechanism, case, backend):
        return case.q_len * case.k_len
    return visited_block_pairs(mechanism, case)


def forward_flops(mechanism: str | Mechanism, backend: str, case: Case) -> Flops:
    """Useful and executed forward FLOPs of ``backend`` computing ``mechanism`` on ``case``."""
    mech = get_mechanism(mechanism)
    bh, d = case.batch * case.heads, case.head_dim
    if isinstance(mech, SoftmaxMechanism):
        return Flops(4 * bh * d * allowed_pairs(mech, case), 4 * bh * d * executed_pairs(mech, case, backend))
    if mech.family == "topk":
        k = case.top_k or 0
        scores = 2 * bh * d * case.q_len * case.k_len
        useful = scores + 2 * bh * d * case.q_len * k
        # eager multiplies the masked P with every v; tiled gathers the k kept rows
        executed = 2 * scores if backend == "eager" else useful
        return Flops(useful, executed)
    if mech.family == "linear":
        state = 2 * bh * d * d * case.k_len  # Σ φ(k) vᵀ
        readout = 2 * bh * d * d * case.q_len  # φ(q) S
        useful = state + readout
        if backend == "eager" and case.causal:
            executed = readout  # the running states are an elementwise outer product + cumsum
        elif backend in ("tiled", "fla") and case.causal:
            chunk = BLOCK if backend == "tiled" else 64
            executed = useful + 4 * bh * d * case.q_len * chunk  # intra-chunk q kᵀ and P v
        else:
            executed = useful
        return Flops(useful, executed)
    raise ValueError(f"no FLOP model for the {mech.family} family")
