"""xFormers ``memory_efficient_attention`` with its bottom-right causal and local masks.

Layout ``[B, M, H, K]``; GQA/MQA as xFormers' 5-D form ``[B, M, G, H/G, K]`` with k/v
broadcast over the group (forward only: its backward kernels take no 5-D inputs).

Masks (all bottom-right aligned, inclusive, as :func:`attnperf.mechanisms.local.window_bounds`):
causal → ``LowerTriangularFromBottomRightMask``; causal window W →
``LowerTriangularFromBottomRightLocalAttentionMask(W)`` (keys i+Δ−W+1 … i+Δ); symmetric window →
``LocalAttentionFromBottomRightMask(left, right)`` (the flash operator takes it, CUTLASS not).

Import pitfall: xFormers 0.0.35 imports ``flash_attn.flash_attn_interface`` whenever *any*
``flash_attn`` package is found, and flash-attn-4 installs only ``flash_attn.cute``, so
``import xformers.ops`` fails beside it. :meth:`XFormers.load` hides ``flash_attn`` for the
duration of that import, so xFormers takes PyTorch's kernels.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner, to_bthd
from attnperf.case import Case
from attnperf.mechanisms import SoftmaxMechanism
from attnperf.mechanisms.local import Window, window_bounds

_MISSING = object()


class XFormers(Backend):
    name = "xformers"
    summary = "xFormers memory_efficient_attention (dispatches to FlashAttention-2 / CUTLASS)"
    mechanisms = frozenset({"full", "window", "decode", "rope"})
    devices = ("cuda",)
    dtypes = ("float32", "bfloat16", "float16")
    # xFormers' own tests: atol 3e-4 fp32 (its CUTLASS fp32 kernel is not bit-exact fp32 math).
    tolerance: ClassVar[dict[str, float]] = {"float32": 3e-4}
    unsupported_errors = ("No operator found",)

    fmha: Any = None

    def load(self) -> None:
        saved = sys.modules.get("flash_attn", _MISSING)
        sys.modules["flash_attn"] = None  # type: ignore[assignment]  # makes find_spec say "absent"
        try:
            from xformers.ops import fmha
        finally:
            if saved is _MISSING:
                del sys.modules["flash_attn"]
            else:
                sys.modules["flash_attn"] = saved  # type: ignore[assignment]
        self.fmha = fmha

    def attn_bias(self, mechanism: SoftmaxMechanism, case: Case) -> Any:
        bias = self.fmha.attn_bias
        if isinstance(mechanism, Window):
            left, right = window_bounds(case)
            if case.causal:
                return bias.LowerTriangularFromBottomRightLocalAttentionMask(left + 1)
            return bias.LocalAttentionFromBottomRightMask(left, right)
        if mechanism.mask_kind(case) == "causal":
            return bias.LowerTriangularFromBottomRightMask()
        return None

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        self.load()
        attn_bias = self.attn_bias(mechanism, case)
        hkv, groups = case.n_kv_heads, case.heads // case.n_kv_heads
        b, lq, lk, d = case.batch, case.q_len, case.k_len, case.head_dim

        def group_q(t: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] → xFormers' GQA layout
            return t if groups == 1 else t.view(b, lq, hkv, groups, d)

        def group_kv(t: torch.Tensor) -> torch.Tensor:
            return t if groups == 1 else t[:, :, :, None].expand(b, lk, hkv, groups, d)

        def finish(out: torch.Tensor) -> torch.Tensor:
            return out.reshape(b, lq, case.heads, d).transpose(1, 2)

        attention = self.fmha.memory_efficient_attention
        vt = group_kv(to_bthd(v))
        transform = self.qk_transform(mechanism, case, q.device, q.dtype, seq_major=True)
        if transform is not None:

            def run_rope() -> torch.Tensor:
                qq, kk = transform(q, k)  # rotated into [B, T, H, D] in one pass
                return finish(attention(group_q(qq), group_kv(kk), vt, attn_bias=attn_bias, scale=case.scale))

            return run_rope
        qt, kt = group_q(to_bthd(q)), group_kv(to_bthd(k))
        return lambda: finish(attention(qt, kt, vt, attn_bias=attn_bias, scale=case.scale))

    def native_mask(self, mechanism: SoftmaxMechanism, case: Case) -> bool:
        return isinstance(mechanism, Window) or super().native_mask(mechanism, case)  # local attention biases

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.fused_softmax_peak(mechanism, case, converts_boolean_mask=False)
