"""``torch.nn.functional.scaled_dot_product_attention`` with one kernel forced per backend.

Each backend wraps the call in ``sdpa_kernel(<one kernel>)`` so that a number is never quietly
produced by another kernel. How the mechanisms map:

* plain causal with q_len == kv_len: ``is_causal=True`` (identical to bottom-right there);
* causal with q_len != kv_len: ``causal_lower_right`` — SDPA's ``is_causal`` is top-left and
  would let a single decode query see only key 0;
* any other pattern or a bias (ALiBi): a dense ``[Lq, Lk]`` boolean or ``[H, Lq, Lk]`` additive
  mask, built once in ``prepare`` (SDPA cannot skip masked blocks);
* GQA/MQA: ``enable_gqa=True``; RoPE: rotation in PyTorch before the call.

Kernels refuse cases at run time ("No available kernel"); that surfaces as *unsupported* with
PyTorch's own text, not as a failure.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from attnperf.analysis import memory
from attnperf.backends.base import HALF_DTYPES, Backend, Runner
from attnperf.case import Case
from attnperf.mechanisms import MECHANISMS, Mechanism, SoftmaxMechanism

SOFTMAX_MECHANISMS = frozenset(name for name, m in MECHANISMS.items() if isinstance(m, SoftmaxMechanism))


def sdpa_mask_args(mechanism: SoftmaxMechanism, case: Case, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """``attn_mask`` / ``is_causal`` for SDPA expressing ``mechanism`` on ``case``."""
    kind = mechanism.mask_kind(case)
    bias = mechanism.dense_bias(case, device, dtype)
    if bias is None and kind == "none":
        return {}
    if bias is None and kind == "causal":
        if case.q_len == case.k_len:
            return {"is_causal": True}
        return {"attn_mask": causal_lower_right(case.q_len, case.k_len)}
    mask = mechanism.dense_mask(case, device)
    if bias is None:
        return {"attn_mask": mask}
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))
    return {"attn_mask": bias[None]}  # [1, H, Lq, Lk]: SDPA takes 2-D or 4-D masks


class Sdpa(Backend):
    """One SDPA kernel, forced."""

    kernel: SDPBackend
    mechanisms = SOFTMAX_MECHANISMS
    unsupported_errors = ("No available kernel", "No viable backend")

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        kwargs = sdpa_mask_args(mechanism, case, q.device, q.dtype)
        kwargs.update(scale=case.scale, enable_gqa=case.n_kv_heads != case.heads)
        transform = mechanism.qk_transform(case, q.device, q.dtype)
        kernel = self.kernel

        def run() -> torch.Tensor:
            qq, kk = transform(q, k) if transform is not None else (q, k)
            with sdpa_kernel(kernel):
                return F.scaled_dot_product_attention(qq, kk, v, **kwargs)

        return run

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.fused_softmax_peak(mechanism, case, converts_boolean_mask=True)


class SdpaMath(Sdpa):
    name = "sdpa-math"
    summary = "SDPA math kernel (materializes the scores; runs everywhere)"
    kernel = SDPBackend.MATH
    block_size = None

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.sdpa_math_peak(mechanism, case)


class SdpaFlash(Sdpa):
    name = "sdpa-flash"
    summary = "SDPA flash kernel (FlashAttention-2 on CUDA, PyTorch's own tiled kernel on CPU)"
    kernel = SDPBackend.FLASH_ATTENTION
    head_dim_multiple = 8
    max_head_dim = 256
    dtypes = ("float32", *HALF_DTYPES)

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        reasons = []
        if case.device.startswith("cuda"):
            if case.dtype not in HALF_DTYPES:
                reasons.append(f"dtype {case.dtype} unsupported on CUDA (FlashAttention-2 takes bfloat16, float16)")
            assert isinstance(mechanism, SoftmaxMechanism)
            if mechanism.mask_kind(case) == "custom" or mechanism.bias_fn(case, "cpu") is not None:
                reasons.append("takes no arbitrary attn_mask on CUDA (only causal)")
        return reasons


class SdpaEfficient(Sdpa):
    name = "sdpa-efficient"
    summary = "SDPA memory-efficient kernel (xFormers' CUTLASS kernel inside PyTorch)"
    kernel = SDPBackend.EFFICIENT_ATTENTION
    devices = ("cuda",)
    dtypes = ("float32", *HALF_DTYPES)


class SdpaCudnn(Sdpa):
    name = "sdpa-cudnn"
    summary = "SDPA cuDNN kernel (Hopper and newer)"
    kernel = SDPBackend.CUDNN_ATTENTION
    devices = ("cuda",)
    dtypes = HALF_DTYPES
    min_capability = (8, 0)
