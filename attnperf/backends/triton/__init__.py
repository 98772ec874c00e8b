"""attnperf's own Triton kernels, for the mechanisms no library kernel covers well.

* ``topk`` (:mod:`.topk`): a threshold from group maxima, the candidates above it, one sort of
  each query's candidates; exact (ties to the lower index), O(n · k) memory, the n × n scores
  never stored. Its backward runs over each query's kept keys, recorded by the forward.
* ``linear`` (:mod:`.linear`): chunked linear attention, causal or not, any q_len / kv_len, GQA
  read from the kv heads (fla's kernels are causal only and need q_len == kv_len).
* ``rotary`` (:mod:`.rotary`): RoPE's rotation of q and k, which every CUDA backend runs inside
  its timed call (not a backend of its own: :mod:`attnperf.backends.rotation` hands it to the
  mechanism).

On a GPU they compile per shape class like every Triton kernel. On the CPU they run only under
Triton's interpreter (``TRITON_INTERPRET=1``, set before Python starts: Triton reads it when the
kernels are defined), slowly, for the tests at tiny shapes: the CPU grid leaves them out.
Triton 3.6's interpreter needs numpy < 2.3 (2.4 refuses its scalar conversions).
"""

from __future__ import annotations

from typing import Any

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner
from attnperf.backends.triton.env import interpreted
from attnperf.case import Case
from attnperf.mechanisms import Mechanism


class Triton(Backend):
    name = "triton"
    summary = "attnperf's own Triton kernels: streaming top-k (with backward), chunked linear attention"
    mechanisms = frozenset({"topk", "linear"})
    dtypes = ("float32", "bfloat16", "float16")  # tl.dot has no float64
    max_head_dim = 256  # one program holds a query block's whole head dim
    compiles_per_shape = True  # a compile per shape class on a GPU; interpreted (slow) on the CPU
    block_size: int = 64  # the linear chunk; top-k gathers its k rows (the FLOP model's "tiled")
    max_top_k: int = 64
    topk_cap_per_k: int = 8  # top-k's candidate row: CAP_PER_K · k' packed keys a query

    topk_attention: Any = None
    linear_attention: Any = None

    def load(self) -> None:
        from attnperf.backends.triton.linear import linear_attention
        from attnperf.backends.triton.topk import topk_attention

        self.topk_attention, self.linear_attention = topk_attention, linear_attention

    def not_supported_reasons(self, mechanism: Mechanism, case: Case, *, backward: bool = False) -> list[str]:
        reasons = super().not_supported_reasons(mechanism, case, backward=backward)
        if backward and mechanism.name == "linear":
            reasons.append("the linear kernel is forward only (no backward)")
        return reasons

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        if case.device == "cpu" and not interpreted():
            return ["Triton kernels run on cuda; on the CPU only in Triton's interpreter (TRITON_INTERPRET=1, tests)"]
        if mechanism.name == "topk" and (case.top_k or 0) > self.max_top_k:
            return [f"top_k {case.top_k} unsupported (at most {self.max_top_k}: a query's candidates are sorted in "
                    "registers, and larger k compile for minutes)"]  # fmt: skip
        return []

    def prepare_topk(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        self.load()
        fn, top_k, causal, scale = self.topk_attention, case.top_k or 0, case.causal, case.scale
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()

        def run() -> torch.Tensor:
            return fn(q, k, v, top_k=top_k, causal=causal, scale=scale)

        return run

    def prepare_linear(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        self.load()
        fn, causal = self.linear_attention, case.causal
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()

        def run() -> torch.Tensor:
            return fn(q, k, v, causal=causal)

        return run

    def topk_peak_bytes(self, case: Case) -> int:
        return memory.triton_topk_peak(case, cap_per_k=self.topk_cap_per_k)

    def linear_peak_bytes(self, case: Case) -> int:
        return memory.triton_linear_peak(case, chunk=self.block_size)
