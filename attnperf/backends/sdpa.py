"""``torch.nn.functional.scaled_dot_product_attention``: one kernel forced, or SDPA's own choice.

Each ``sdpa-<kernel>`` backend enables that one kernel around the call (:func:`only_kernel`, the
switches ``sdpa_kernel`` sets) so that a number is never quietly produced by another kernel. The
``sdpa`` backend is the call users write by default: no kernel forced, SDPA dispatches; which
kernel it picked is recorded (:func:`picked_kernel`). How the mechanisms map:

* plain causal with q_len == kv_len: ``is_causal=True`` (identical to bottom-right there);
* causal with q_len != kv_len: ``causal_lower_right`` — SDPA's ``is_causal`` is top-left and
  would let a single decode query see only key 0; with one query (a decode step) no mask at all,
  since it sees every key (given the lower-right mask, SDPA builds it on every call: a tril and
  three fills, several times the cost of a decode step's kernel);
* any other pattern or a bias (ALiBi): a dense ``[Lq, Lk]`` boolean or ``[H, Lq, Lk]`` additive
  mask, built once in ``prepare`` (SDPA cannot skip masked blocks);
* GQA/MQA: ``enable_gqa=True``; RoPE: rotation in PyTorch before the call.

Kernels refuse cases at run time ("No available kernel"); that surfaces as *unsupported* with
PyTorch's own text, not as a failure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import CausalBias, causal_lower_right

from attnperf.analysis import memory
from attnperf.backends.base import HALF_DTYPES, Backend, Runner
from attnperf.case import Case
from attnperf.mechanisms import MECHANISMS, Mechanism, SoftmaxMechanism

SOFTMAX_MECHANISMS = frozenset(name for name, m in MECHANISMS.items() if isinstance(m, SoftmaxMechanism))


def _kernel_switches() -> list[tuple[SDPBackend, Callable[[], bool], Callable[[bool], None]]] | None:
    """SDPA's enable flag of each kernel as (kernel, read, write), the very switches that
    ``sdpa_kernel`` flips (from torch's private bindings); None where this torch lacks them."""
    try:
        from torch.nn.attention import _backend_names

        return [
            (getattr(SDPBackend, kernel), getattr(torch._C, f"_get_{name}_sdp_enabled"),
             getattr(torch._C, f"_set_sdp_use_{name}"))
            for name, kernel in _backend_names.items()
        ]  # fmt: skip
    except (ImportError, AttributeError):
        return None


_SWITCHES = _kernel_switches()


@contextmanager
def only_kernel(kernel: SDPBackend) -> Iterator[None]:
    """Only ``kernel`` enabled inside, the previous switches restored after: what
    ``sdpa_kernel(kernel)`` does, without its Python bookkeeping. That bookkeeping costs about twice
    a whole tiny SDPA call on the host, so at launch-bound sizes (a decode step, short sequences)
    a forced kernel timed under ``sdpa_kernel`` would read 1.5–2× SDPA's own dispatch to the same
    kernel: the host overhead, not the kernel, would be measured."""
    if _SWITCHES is None or torch.compiler.is_compiling():  # dynamo knows sdpa_kernel, not the switches
        with sdpa_kernel(kernel):
            yield
        return
    previous = [read() for _, read, _ in _SWITCHES]
    try:
        for each, _, write in _SWITCHES:
            write(each == kernel)
        yield
    finally:
        for (_, _, write), was in zip(_SWITCHES, previous, strict=True):
            write(was)


def sdpa_mask_args(mechanism: SoftmaxMechanism, case: Case, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """``attn_mask`` / ``is_causal`` for SDPA expressing ``mechanism`` on ``case``."""
    kind = mechanism.mask_kind(case)
    bias = mechanism.dense_bias(case, device, dtype)
    if bias is None and kind == "none":
        return {}
    if bias is None and kind == "causal":
        if case.q_len == 1:  # a decode step: bottom-right causal lets its one query see every key
            return {}
        if case.q_len == case.k_len:
            return {"is_causal": True}
        return {"attn_mask": causal_lower_right(case.q_len, case.k_len)}
    mask = mechanism.dense_mask(case, device)
    if bias is None:
        return {"attn_mask": mask}
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))
    return {"attn_mask": bias[None]}  # [1, H, Lq, Lk]: SDPA takes 2-D or 4-D masks


def sdpa_call_args(mechanism: SoftmaxMechanism, case: Case, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Every keyword of the SDPA call for ``case``: the mask arguments, the scale and GQA."""
    kwargs = sdpa_mask_args(mechanism, case, device, dtype)
    kwargs.update(scale=case.scale, enable_gqa=case.n_kv_heads != case.heads)
    return kwargs


class Sdpa(Backend):
    """One SDPA kernel, forced."""

    kernel: SDPBackend
    mechanisms = SOFTMAX_MECHANISMS
    unsupported_errors = ("No available kernel", "No viable backend")

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        kwargs = sdpa_call_args(mechanism, case, q.device, q.dtype)
        transform = self.qk_transform(mechanism, case, q.device, q.dtype)
        kernel = self.kernel

        def run() -> torch.Tensor:
            qq, kk = transform(q, k) if transform is not None else (q, k)
            with only_kernel(kernel):
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


#: SDPA's kernels under the names of the forced backends (``sdpa-<name>``).
KERNEL_NAMES: dict[SDPBackend, str] = {
    SDPBackend.MATH: "math",
    SDPBackend.FLASH_ATTENTION: "flash",
    SDPBackend.EFFICIENT_ATTENTION: "efficient",
    SDPBackend.CUDNN_ATTENTION: "cudnn",
    SDPBackend.OVERRIDEABLE: "overrideable",
}


def picked_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str:
    """The kernel ``F.scaled_dot_product_attention(q, k, v, **kwargs)`` runs, asked of SDPA itself.

    ATen's ``scaled_dot_product_attention`` picks its kernel by calling ``_fused_sdp_choice``
    (the CPU and CUDA selection functions in ``aten/src/ATen/native/transformers/``, which apply
    the ``can_use_*`` checks in priority order and honour ``sdpa_kernel`` contexts); this asks the
    same function with the same arguments. A ``causal_lower_right`` mask is dispatched in Python
    first (``torch/nn/attention/bias.py``, ``CausalBias._dispatch``): equal lengths become
    ``is_causal=True``; otherwise flash, then efficient, if their ``can_use_*`` checks pass, else
    the materialized mask goes through SDPA's choice. Both paths are followed here as written
    there. ``"math"`` also covers the CPU's math fallback.
    """
    mask = kwargs.get("attn_mask")
    dropout_p, scale, gqa = kwargs.get("dropout_p", 0.0), kwargs.get("scale"), kwargs.get("enable_gqa", False)
    if isinstance(mask, CausalBias):
        if mask.seq_len_q == mask.seq_len_kv:
            return picked_kernel(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
        params = torch.backends.cuda.SDPAParams(q, k, v, None, dropout_p, False, gqa)
        if torch.backends.cuda.can_use_flash_attention(params):
            return KERNEL_NAMES[SDPBackend.FLASH_ATTENTION]
        if torch.backends.cuda.can_use_efficient_attention(params):
            return KERNEL_NAMES[SDPBackend.EFFICIENT_ATTENTION]
        kwargs = {**kwargs, "attn_mask": mask._materialize(q.device)}
    choice = torch._fused_sdp_choice(q, k, v, **kwargs)
    return KERNEL_NAMES.get(SDPBackend(choice), f"unknown ({choice})")


class SdpaAuto(Backend):
    """SDPA as users call it: no kernel forced; the prepared closure says which kernel it picked.

    The closure carries the kernel's name in its ``kernel`` attribute (``"flash"``, ``"math"``,
    …: the forced backends' names without ``sdpa-``), and sweep records copy it into their
    ``kernel`` field: a number from ``sdpa`` can then be compared with the forced kernel's row.
    """

    name = "sdpa"
    summary = "SDPA with its own kernel choice (what F.scaled_dot_product_attention does by default)"
    mechanisms = SOFTMAX_MECHANISMS
    unsupported_errors = ("No available kernel", "No viable backend")

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        kwargs = sdpa_call_args(mechanism, case, q.device, q.dtype)
        transform = self.qk_transform(mechanism, case, q.device, q.dtype)

        def run() -> torch.Tensor:
            qq, kk = transform(q, k) if transform is not None else (q, k)
            return F.scaled_dot_product_attention(qq, kk, v, **kwargs)

        return with_kernel(run, picked_kernel(q, k, v, **kwargs))

    def for_case(self, mechanism: Mechanism, case: Case) -> Backend:
        """The forced backend of the kernel SDPA picks for ``case``: its FLOP and memory models.

        The choice depends on the device, dtype, head dim, mask and head layout, and on the
        lengths only through how they compare: equal causal lengths are ``is_causal``, unequal
        ones ``causal_lower_right`` (SDPA dispatches it to flash or efficient only), one causal
        query no mask at all. So it is
        asked on inputs that keep that order, at most :data:`PROBE_LEN` tokens on the shorter
        side and twice that on the longer (a decode step, cross-attention and more queries than
        keys stay what they are), which costs nothing even for a case too large to allocate."""
        assert isinstance(mechanism, SoftmaxMechanism)
        short, long = sorted((case.q_len, case.k_len))
        short_probe = min(short, PROBE_LEN)
        long_probe = short_probe if long == short else min(long, 2 * PROBE_LEN)  # > short_probe: long > short
        q_len, kv_len = (short_probe, long_probe) if case.q_len <= case.k_len else (long_probe, short_probe)
        small = dataclasses.replace(case, batch=1, q_len=q_len, kv_len=kv_len)
        dtype = small.torch_dtype
        shape_q, shape_kv = (1, small.heads, q_len, small.head_dim), (1, small.n_kv_heads, kv_len, small.head_dim)
        q = torch.zeros(shape_q, dtype=dtype, device=small.device)
        k = torch.zeros(shape_kv, dtype=dtype, device=small.device)
        kwargs = sdpa_call_args(mechanism, small, q.device, q.dtype)
        return FORCED.get(picked_kernel(q, k, torch.zeros_like(k), **kwargs), FORCED["math"])


#: The shorter length :meth:`SdpaAuto.for_case` asks SDPA about (the longer is at most twice it).
PROBE_LEN = 64


#: The forced backends by the kernel names :func:`picked_kernel` gives.
FORCED: dict[str, Sdpa] = {"math": SdpaMath(), "flash": SdpaFlash(), "efficient": SdpaEfficient(), "cudnn": SdpaCudnn()}


def with_kernel(run: Callable[[], torch.Tensor], kernel: str) -> Runner:
    """``run`` with the name of the kernel it runs attached as ``run.kernel``."""
    run.kernel = kernel  # type: ignore[attr-defined]
    return run
