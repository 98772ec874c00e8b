"""FLOPs per (mechanism, backend, case): useful (attended pairs) and executed (what runs).

Convention (flash-attn's benchmarks): matrix-multiply FLOPs only, 2 per multiply-add.
A softmax forward has two products, q kᵀ and P v, so attending Lk keys from Lq queries costs
``4 · B · H · Lq · Lk · D``; a causal square case attends n(n+1)/2 pairs, about half. Softmax,
masks, biases and rotations are elementwise and not counted (nor does
``torch.utils.flop_counter.FlopCounterMode``, which the tests hold the eager counts to).

* **useful**: only the attended (query, key) pairs, so an O(n·w) window kernel is not credited
  with n² work; for top-k, the n² scores it must compute to choose plus the k products.
* **executed**: what the backend really multiplies, from two facts each backend states about
  itself (:class:`attnperf.backends.Backend`): its ``block_size`` (None for code that works on
  whole tensors and materializes every score: eager, sdpa-math, onnxruntime's eager graph) and
  :meth:`~attnperf.backends.Backend.native_mask` (whether its kernel takes this mask itself and
  can skip the blocks it leaves empty). So: dense for whole-tensor code and for kernels given a
  dense mask, whole blocks for block-skipping kernels (flex, tiled, flash-attn, xFormers, SDPA's
  native causal), the associative O(n·D²) form for linear attention (chunked where the backend
  works in chunks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from attnperf.case import Case
from attnperf.mechanisms import Family, Mechanism, SoftmaxMechanism, get_mechanism

if TYPE_CHECKING:
    from attnperf.backends import Backend


@dataclass(frozen=True)
class Flops:
    useful: float
    executed: float


def _rows(case: Case, rows: int = 256) -> list[tuple[int, int]]:
    return [(s, min(s + rows, case.q_len)) for s in range(0, case.q_len, rows)]


@functools.lru_cache(maxsize=512)
def allowed_pairs(mechanism: SoftmaxMechanism, case: Case) -> int:
    """How many (query, key) pairs the mask allows, counted a band of rows at a time, once per
    (mechanism, case) in a process: a batch process asks it for every backend of a point, and at
    8k the count evaluates 67M pairs (0.2-0.4 s on a 2-core CPU, 14-18 s of an H200 pr-gpu process)."""
    fn = mechanism.mask_fn(case, "cpu")
    if fn is None:
        return case.q_len * case.k_len
    kv_idx = torch.arange(case.k_len)[None, :]
    return sum(int(fn(torch.arange(s, e)[:, None], kv_idx).expand(e - s, case.k_len).sum()) for s, e in _rows(case))


@functools.lru_cache(maxsize=512)
def visited_block_pairs(mechanism: SoftmaxMechanism, case: Case, block: int) -> int:
    """(query, key) pairs inside the ``block × block`` tiles that have any allowed pair (once per
    arguments in a process, as :func:`allowed_pairs`)."""
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


def executed_pairs(mechanism: SoftmaxMechanism, case: Case, backend: Backend) -> int:
    """Pairs a single kernel call multiplies: every pair for whole-tensor code or a dense mask, else
    the visited blocks. The default of :meth:`Backend.executed_pairs`, which a backend that splits
    the work differently (context parallelism's ring) replaces with its own count."""
    if backend.block_size is None or not backend.native_mask(mechanism, case):
        return case.q_len * case.k_len
    return visited_block_pairs(mechanism, case, backend.block_size)


def forward_flops(mechanism: str | Mechanism, backend: str | Backend, case: Case) -> Flops:
    """Useful and executed forward FLOPs of ``backend`` computing ``mechanism`` on ``case``."""
    from attnperf.backends import get_backend  # backends import the analysis; resolve names late

    mech = get_mechanism(mechanism)
    be = get_backend(backend).for_case(mech, case)
    bh, d = case.batch * case.heads, case.head_dim
    match mech.family:
        case Family.SOFTMAX:
            assert isinstance(mech, SoftmaxMechanism)
            return Flops(4 * bh * d * allowed_pairs(mech, case), 4 * bh * d * be.executed_pairs(mech, case))
        case Family.TOPK:
            scores = 2 * bh * d * case.q_len * case.k_len
            useful = scores + 2 * bh * d * case.q_len * (case.top_k or 0)
            # whole-tensor code multiplies the masked P with every v; a tiled kernel gathers the k kept rows
            return Flops(useful, 2 * scores if be.block_size is None else useful)
        case Family.LINEAR:
            state = 2 * bh * d * d * case.k_len  # Σ φ(k) vᵀ
            readout = 2 * bh * d * d * case.q_len  # φ(q) S
            useful = state + readout
            if case.causal and be.block_size is None:
                executed = readout  # the running states are an elementwise outer product + cumsum
            elif case.causal:
                executed = useful + 4 * bh * d * case.q_len * be.block_size  # intra-chunk q kᵀ and P v
            else:
                executed = useful
            return Flops(useful, executed)
