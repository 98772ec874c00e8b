"""flash-linear-attention (fla): Triton chunked kernels for causal linear attention.

``fla.ops.linear_attn.chunk_linear_attn(q, k, v, scale, normalize=True)`` computes
``scale · q_t · Σ_{s≤t} k_sᵀ v_s`` divided by ``scale · q_t · Σ_{s≤t} k_s + 1e-10`` — causal
only, no feature map inside, one head count for q and k. So the backend applies φ = elu + 1 itself,
passes ``scale=1`` (the scale cancels in the normalized form), and repeats kv heads for GQA.
fla's normalizer eps is 1e-10 against the mechanism's 1e-6: the denominators are sums of
positive similarities (≥ ~1), so the difference is far below every bound.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner
from attnperf.case import Case
from attnperf.mechanisms import Mechanism
from attnperf.mechanisms.base import expand_kv
from attnperf.mechanisms.linear import elu_feature_map


class Fla(Backend):
    name = "fla"
    summary = "flash-linear-attention chunk kernel (causal linear attention, Triton)"
    mechanisms = frozenset({"linear"})
    devices = ("cuda",)
    dtypes = ("float32", "bfloat16", "float16")
    # fla's chunk kernels take float32 inputs through TF32 dot products, and the chunk states
    # carry that rounding along the sequence: over lengths 1 to 257 the error stays near 1.5e-3,
    # above the 3e-4 of one TF32 product.
    # bfloat16 and float16 keep the common 1e-2 bound.
    tolerance: ClassVar[dict[str, float]] = {"float32": 2e-3}
    block_size: int = 64  # chunk_linear_attn's chunk

    chunk_linear_attn: Any = None

    def load(self) -> None:
        from fla.ops.linear_attn import chunk_linear_attn

        self.chunk_linear_attn = chunk_linear_attn

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        reasons = []
        if not case.causal:
            reasons.append("fla's linear attention kernels are causal only")
        if case.q_len != case.k_len:
            reasons.append("fla needs q_len == kv_len (one sequence of queries and keys)")
        return reasons

    def prepare_linear(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        self.load()
        fn, heads = self.chunk_linear_attn, case.heads
        qt = q.transpose(1, 2).contiguous()
        kt = expand_kv(k, heads).transpose(1, 2).contiguous()
        vt = expand_kv(v, heads).transpose(1, 2).contiguous()

        def run() -> torch.Tensor:
            out, _state = fn(elu_feature_map(qt), elu_feature_map(kt), vt, scale=1.0, normalize=True)
            return out.transpose(1, 2)

        return run

    def linear_peak_bytes(self, case: Case) -> int:
        return memory.fla_linear_peak(case, chunk=self.block_size)
