"""``flex_attention`` under ``torch.compile``: block masks that really skip masked blocks.

The mechanism's index functions become flex's ``mask_mod`` (through a block mask, so whole
masked 128×128 blocks are never computed) and ``score_mod`` (ALiBi). Two pitfalls are closed:

* past dynamo's recompile limit flex silently falls back to an unfused path that materializes
  the scores; here the limit is raised, ``fullgraph=True`` and
  ``fail_on_recompile_limit_hit`` turn any fallback into an error, so a timed flex number is
  always the fused kernel;
* ``create_block_mask`` defaults to CUDA; the case's device is passed.

On the CPU the compiled kernel is inference-only (no backward). NaN inputs: NaN in ``q`` or ``k``
gives finite output (a query whose scores are all NaN gets 0, as a fully masked row) where every
other backend returns NaN; NaN in ``v`` propagates. That is the compiled kernel's (upstream)
behaviour; checking the inputs would cost a pass over them and a host sync per call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner
from attnperf.backends.sdpa import SOFTMAX_MECHANISMS
from attnperf.case import Case
from attnperf.compiled import compiled
from attnperf.mechanisms import Mechanism, SoftmaxMechanism

#: From this many keys on, the block mask itself is built by a compiled function: the eager
#: ``create_block_mask`` evaluates the dense Lq × Lk mask (4 GiB of booleans at 64k), while
#: compiling it costs ~10 s per shape (CPU) — more than the eager build below 64k.
COMPILE_BLOCK_MASK_FROM = 65536


@functools.cache
def compiled_flex() -> Callable[..., torch.Tensor]:
    """The one compiled ``flex_attention`` of this process, with fallback turned into errors."""
    from torch.nn.attention.flex_attention import flex_attention

    return compiled(flex_attention)


@functools.cache
def compiled_block_mask() -> Callable[..., object]:
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask, dynamic=False)


@functools.lru_cache(maxsize=64)
def block_mask_for(mechanism: SoftmaxMechanism, case: Case, device: torch.device) -> object | None:
    """flex's ``BlockMask`` for the mechanism's mask on ``case``, or None when unmasked.

    Cached per (mechanism, case, device): a block mask is O(n² / 128²) small, and layers that
    call attention every step should not rebuild it.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    fn = mechanism.mask_fn(case, device)
    if fn is None:
        return None

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return fn(q_idx, kv_idx)

    mask_mod.__name__ = getattr(fn, "__name__", "mask_mod")
    build = compiled_block_mask() if case.k_len >= COMPILE_BLOCK_MASK_FROM else create_block_mask
    return build(mask_mod, None, None, case.q_len, case.k_len, device=device)


class Flex(Backend):
    name = "flex"
    summary = "flex_attention compiled, block-sparse masks and score mods (NaN in q/k gives finite output)"
    mechanisms = SOFTMAX_MECHANISMS
    dtypes = ("float32", "bfloat16", "float16")
    compiles_per_shape = True
    # Compiled flex on CUDA computes float32 dots as TF32 when torch allows it; the default
    # (allow_tf32=False) keeps full float32, so the default bounds hold.

    def load(self) -> None:
        import torch.nn.attention.flex_attention  # noqa: F401  (absent before torch 2.5)

    def not_supported_reasons(self, mechanism: Mechanism, case: Case, *, backward: bool = False) -> list[str]:
        reasons = super().not_supported_reasons(mechanism, case, backward=backward)
        if backward and case.device == "cpu":
            reasons.append("compiled flex_attention on the CPU is inference-only (no backward)")
        return reasons

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        flex = compiled_flex()
        block_mask = block_mask_for(mechanism, case, q.device)
        bias_fn = mechanism.bias_fn(case, q.device)
        score_mod = None
        if bias_fn is not None:

            def score_mod(
                score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
            ) -> torch.Tensor:
                return score + bias_fn(h, q_idx, kv_idx)

        transform = self.qk_transform(mechanism, case, q.device, q.dtype)
        gqa = case.n_kv_heads != case.heads

        def run() -> torch.Tensor:
            qq, kk = transform(q, k) if transform is not None else (q, k)
            return flex(qq, kk, v, score_mod=score_mod, block_mask=block_mask, scale=case.scale, enable_gqa=gqa)

        return run

    def native_mask(self, mechanism: SoftmaxMechanism, case: Case) -> bool:
        return True  # any mask becomes a block mask, any bias a score mod

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.fused_softmax_peak(mechanism, case, converts_boolean_mask=False)
