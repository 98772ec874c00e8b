"""flash-attn-4 ``score_mod`` functions: CuTe DSL code that changes the scores inside its kernel.

Imported only when flash-attn-4 runs (it needs the CuTe DSL). A ``score_mod`` gets the scaled
scores of a tile and the batch, head, query and key indices of each, as CuTe SSA values
(flash_attn/cute/softmax.py ``apply_score_mod_inner``); the causal mask is applied after it, so
blocks above the diagonal are still skipped.
"""

from __future__ import annotations

import operator
from typing import Any

import cutlass
from cutlass import cute
from flash_attn.cute.utils import scalar_to_ssa


def alibi_score_mod(heads: int) -> Any:
    """ALiBi: ``score − slope_h · |i + Δ − j|``, the bias of :class:`attnperf.mechanisms.positional.ALiBi`.

    The slope is computed from the head index, not read from a table: :func:`alibi_slopes`'s rule
    with n the largest power of two ≤ H is ``2^(−8(h+1)/n)`` for h < n and ``2^(−4(2(h−n)+1)/n)``
    after. n is the closure's only value, so flash-attn-4's compile cache (keyed by the source and
    the captured values) compiles once per n; Δ = kv_len − q_len comes from the kernel's own
    sequence lengths at run time, so a new shape costs no new ``score_mod``.
    """
    n = 2 ** (heads.bit_length() - 1)

    @cute.jit
    def alibi(score, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):  # noqa: ANN001, ANN202 (CuTe reads annotations)
        h = h_idx.to(cutlass.Float32)
        first = (h + 1.0) * (-8.0 / n)
        rest = ((h - float(n)) * 2.0 + 1.0) * (-4.0 / n)
        slope = cute.math.exp2(cute.where(operator.lt(h_idx, cute.full_like(h_idx, n)), first, rest))
        lanes = q_idx.shape if isinstance(q_idx.shape, tuple) else (q_idx.shape,)  # a load's shape is a bare int
        delta = scalar_to_ssa(seqlen_info.seqlen_k - seqlen_info.seqlen_q, cutlass.Int32).broadcast_to(lanes)
        distance = (q_idx + delta - kv_idx).to(cutlass.Float32)
        zero = cute.full_like(distance, 0.0)
        distance = cute.where(operator.lt(distance, zero), zero - distance, distance)
        return score.to(cutlass.Float32) - slope * distance

    return alibi
