"""FlashAttention on Hopper: flash-attn-4 (CuTe DSL kernels) and FlashAttention-3's forward.

PyPI's ``flash-attn`` (FlashAttention-2) is a source build of hours and is the same kernel as
``sdpa-flash``; on Hopper the current kernels are flash-attn-4 (``flash_attn.cute``, JIT-compiled
on first call) and ``fa3-fwd`` (FlashAttention-3 forward, built for torch 2.10). Both take
``[B, T, H, D]``; k/v are made contiguous in that layout during ``prepare`` (the layout a model
using them would hold), so the timed call is the kernel alone.

Window mapping: flash-attn's ``window_size=(left, right)`` is inclusive and bottom-right
aligned, exactly :func:`attnperf.mechanisms.local.window_bounds`.
"""

from __future__ import annotations

from typing import Any

import torch

from attnperf.analysis import memory
from attnperf.backends import block_sparse_split
from attnperf.backends.base import HALF_DTYPES, Backend, Runner, to_bthd
from attnperf.backends.block_lists import block_lists, one_call_pairs
from attnperf.backends.strided_split import split_pairs, split_peak_bytes, strided_attention
from attnperf.case import Case
from attnperf.mechanisms import Mechanism, SoftmaxMechanism
from attnperf.mechanisms.local import Window, window_bounds
from attnperf.mechanisms.positional import ALiBi
from attnperf.mechanisms.sparse import BigBird, Strided, bigbird_blocks, stride_of

#: Queries up to this many (one tile of rows: a decode step, a short cross-attention) leave most
#: SMs idle unless the keys are split over them: both libraries default to ``num_splits=1``, which
#: runs a decode step over a long cache on a handful of SMs, several times slower than cuDNN's
#: split-KV kernel. There ``num_splits=0`` asks for the library's own
#: heuristic (split-KV) where its kernels for the GPU have one (``split_kv_capability``); forward
#: only, so never when the inputs need gradients.
SPLIT_KV_MAX_Q = 128


def flash_mask_args(mechanism: SoftmaxMechanism, case: Case) -> dict[str, Any]:
    """``causal`` and ``window_size`` for flash-attn's interface."""
    if isinstance(mechanism, Window):
        return {"causal": case.causal, "window_size": window_bounds(case)}
    return {"causal": mechanism.mask_kind(case) == "causal"}


class FlashAttnBase(Backend):
    """Shared preparation: layout, RoPE in PyTorch, the mask arguments."""

    devices = ("cuda",)
    dtypes = HALF_DTYPES
    min_capability = (9, 0)
    max_head_dim = 256
    head_dim_multiple = 8

    #: The library's ``flash_attn_func``, bound by :meth:`load`.
    fn: Any = None
    #: The oldest GPU whose kernels of this library split the keys (None: never).
    split_kv_capability: tuple[int, int] | None = None

    def splits_kv(self, device: torch.device) -> bool:
        """Whether this library's kernels on ``device`` take ``num_splits`` other than 1."""
        need = self.split_kv_capability
        return need is not None and device.type == "cuda" and torch.cuda.get_device_capability(device) >= need

    def call(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: dict[str, Any]
    ) -> torch.Tensor:
        return self.fn(q, k, v, softmax_scale=scale, **mask)

    def score_args(self, mechanism: SoftmaxMechanism, case: Case) -> dict[str, Any]:
        """Arguments that change the scores inside the kernel (flash-attn-4's ``score_mod``)."""
        return {}

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        self.load()
        mask = flash_mask_args(mechanism, case) | self.score_args(mechanism, case)
        if case.q_len <= SPLIT_KV_MAX_Q and not q.requires_grad and self.splits_kv(q.device):
            mask["num_splits"] = 0  # below 1: the library's own split-KV heuristic
        vt = to_bthd(v)
        transform = self.qk_transform(mechanism, case, q.device, q.dtype, seq_major=True)
        if transform is not None:
            # RoPE is part of the mechanism: rotate inside the timed call, into this layout in one pass.
            def run_rope() -> torch.Tensor:
                qq, kk = transform(q, k)
                return self.call(qq, kk, vt, case.scale, mask).transpose(1, 2)

            return run_rope
        qt, kt = to_bthd(q), to_bthd(k)
        return lambda: self.call(qt, kt, vt, case.scale, mask).transpose(1, 2)

    def native_mask(self, mechanism: SoftmaxMechanism, case: Case) -> bool:
        return isinstance(mechanism, Window) or super().native_mask(mechanism, case)  # window_size

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.fused_softmax_peak(mechanism, case, converts_boolean_mask=False)


def bigbird_plan(case: Case, device: torch.device | str) -> block_sparse_split.Layout:
    """The packed layout of ``case``'s BigBird pattern (built once per prepare, outside the timed call)."""
    block = case.block or 1  # BigBird.validate requires it
    return block_sparse_split.layout(bigbird_blocks(case), case.k_len, block, case.num_global, case.batch,
                                     torch.device(device))  # fmt: skip


def sm90_tiles_fit(block: int, head_dim: int) -> bool:
    """Whether flash-attn-4's SM90 forward takes BigBird's ``block`` as its block-sparse tile: its
    tiles shrink to a sparse block (``_fit_sm90_fwd_tile_to_block_sparsity``) but never grow, and the
    key tile must equal the block. A block of 64 always gets 64 × 64 tiles; 128 gets 128 × 128 up to
    head_dim 128 (above it the key tile is 112 or 80, and the library refuses the block)."""
    return block == 64 or (block == 128 and head_dim <= 128)


class FlashAttn4(FlashAttnBase):
    name = "flash-attn4"
    summary = "flash-attn-4 (flash_attn.cute, CuTe DSL kernels for Hopper/Blackwell)"
    mechanisms = frozenset({"full", "window", "decode", "rope", "alibi", "strided", "bigbird"})
    # Its SM90 kernel asserts "SplitKV not supported on SM 9.0" (flash_attn/cute/interface.py,
    # 4.0.0b36): on Hopper a decode step stays unsplit, as flash-attn-4 runs it.
    split_kv_capability = (10, 0)

    #: The library's ``flash_attn_varlen_func`` (BigBird's packed query blocks), bound by :meth:`load`.
    varlen_fn: Any = None

    def load(self) -> None:
        from flash_attn.cute import flash_attn_func, flash_attn_varlen_func

        self.fn, self.varlen_fn = flash_attn_func, flash_attn_varlen_func

    def call(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: dict[str, Any]
    ) -> torch.Tensor:
        out, _lse = self.fn(q, k, v, softmax_scale=scale, **mask)  # flash-attn-4 returns (out, lse) always
        return out

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        if isinstance(mechanism, BigBird):
            return self.prepare_bigbird(case, q, k, v)
        if not isinstance(mechanism, Strided):
            return super().prepare_softmax(mechanism, case, q, k, v)
        self.load()
        qt, kt, vt = to_bthd(q), to_bthd(k), to_bthd(v)
        stride = stride_of(case)

        def attend(*tensors: torch.Tensor, **mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fn(*tensors, return_lse=True, **mask)

        return lambda: strided_attention(qt, kt, vt, stride, attend, softmax_scale=case.scale).transpose(1, 2)

    def bigbird_one_call(self, case: Case) -> bool:
        """Whether BigBird runs as one block-sparse call (else the two-call split): on an SM90 GPU of
        this machine, with a block its forward tiles fit. The analyzer asks the same, so on a
        machine without one it models the split."""
        if case.block is None or not sm90_tiles_fit(case.block, case.head_dim) or not torch.cuda.is_available():
            return False
        return torch.cuda.get_device_capability(torch.device(case.device)) == (9, 0)

    def prepare_bigbird(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        """BigBird as one call over block-sparse lists (:mod:`attnperf.backends.block_lists`), or as a
        dense call for the global rows and a varlen call over gathered key blocks."""
        self.load()
        qt, kt, vt = to_bthd(q), to_bthd(k), to_bthd(v)
        if self.bigbird_one_call(case):
            from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

            lists = block_lists(bigbird_blocks(case), case.block, q.device)
            sparse = BlockSparseTensorsTorch(
                mask_block_cnt=lists.mask_block_cnt, mask_block_idx=lists.mask_block_idx,
                full_block_cnt=lists.full_block_cnt, full_block_idx=lists.full_block_idx,
                block_size=(lists.block, lists.block),
            )  # fmt: skip
            return lambda: self.fn(qt, kt, vt, softmax_scale=case.scale, block_sparse_tensors=sparse)[0].transpose(1, 2)
        plan = bigbird_plan(case, q.device)

        def attend(*tensors: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return self.fn(*tensors, **kwargs)[0]

        def attend_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                          max_q: int, max_k: int, **kwargs: Any) -> torch.Tensor:  # fmt: skip
            return self.varlen_fn(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                                  max_seqlen_k=max_k, **kwargs)[0]  # fmt: skip

        return lambda: block_sparse_split.block_sparse_attention(
            qt, kt, vt, plan, attend, attend_varlen, softmax_scale=case.scale
        ).transpose(1, 2)

    def case_reasons(self, mechanism: Mechanism, case: Case) -> list[str]:
        if isinstance(mechanism, BigBird):
            reasons = ["BigBird runs as its non-causal split only"] if case.causal else []
            if case.q_len != case.k_len:
                reasons.append(f"the BigBird split needs q_len == kv_len (got {case.q_len} and {case.k_len})")
            return reasons
        if not isinstance(mechanism, Strided):
            return []
        reasons = [] if case.causal else ["strided runs as its causal split only (non-causal is mirrored)"]
        if case.q_len != case.k_len:
            reasons.append(f"the strided split needs q_len == kv_len (got {case.q_len} and {case.k_len})")
        return reasons

    def executed_pairs(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        if isinstance(mechanism, Strided):
            return split_pairs(case.q_len, stride_of(case), self.block_size or 128)
        if isinstance(mechanism, BigBird) and self.bigbird_one_call(case):
            return one_call_pairs(bigbird_blocks(case), case.block)
        if isinstance(mechanism, BigBird):
            return block_sparse_split.split_pairs(bigbird_plan(case, "cpu"), case.q_len, self.block_size or 128)
        return super().executed_pairs(mechanism, case)

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        peak = super().softmax_peak_bytes(mechanism, case)
        if isinstance(mechanism, BigBird) and not self.bigbird_one_call(case):  # the split's copies
            gathered = len(bigbird_plan(case, "cpu").key_rows) * case.batch * case.n_kv_heads * case.head_dim
            parts = case.batch * case.q_len * case.heads * case.head_dim  # the two calls' outputs before the cat
            peak += (2 * gathered + parts) * memory.element_size(case)
        if isinstance(mechanism, Strided):
            peak += split_peak_bytes(case.batch, case.heads, case.n_kv_heads, case.q_len, case.head_dim,
                                     memory.element_size(case), stride_of(case))  # fmt: skip
        return peak

    def score_args(self, mechanism: SoftmaxMechanism, case: Case) -> dict[str, Any]:
        if not isinstance(mechanism, ALiBi):
            return {}
        from attnperf.backends.flash_attn_score_mods import alibi_score_mod  # needs CuTe DSL: GPU only

        return {"score_mod": alibi_score_mod(case.heads)}

    def native_mask(self, mechanism: SoftmaxMechanism, case: Case) -> bool:
        return isinstance(mechanism, ALiBi) or super().native_mask(mechanism, case)  # causal + score_mod

    def not_supported_reasons(self, mechanism: Mechanism, case: Case, *, backward: bool = False) -> list[str]:
        reasons = super().not_supported_reasons(mechanism, case, backward=backward)
        if backward and isinstance(mechanism, ALiBi):
            reasons.append("ALiBi's score_mod is forward only here (no score_mod_bwd passed)")
        if backward and isinstance(mechanism, BigBird):
            # the one call's backward would need key-major lists at the backward's own tiles (128 keys on
            # SM90, which 64-token blocks do not fill); the split's would run through its gathers
            reasons.append("BigBird is forward only here")
        if backward and isinstance(mechanism, Strided):
            reasons.append("the strided split is forward only (its merge needs the log-sum-exps' gradients)")
        return reasons


class FlashAttn3(FlashAttnBase):
    name = "flash-attn3"
    summary = "FlashAttention-3 forward kernels (fa3-fwd: bf16, forward only, no local window)"
    # fa3-fwd is built with FLASHATTENTION_DISABLE_LOCAL, DISABLE_FP16 and DISABLE_BACKWARD.
    mechanisms = frozenset({"full", "decode", "rope"})
    split_kv_capability = (9, 0)  # num_splits <= 0: FA3's own get_num_splits heuristic
    dtypes = ("bfloat16",)
    supports_backward = False

    def load(self) -> None:
        from fa3_fwd_interface import flash_attn_func

        self.fn = flash_attn_func
