"""Eager PyTorch: the textbook versions that materialize the full score matrix.

This is the baseline every speedup is quoted against. Softmax runs in float32 for half
inputs (as Hugging Face's eager attention does), scores and products in the input dtype.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner
from attnperf.case import Case
from attnperf.mechanisms import MECHANISMS, SoftmaxMechanism
from attnperf.mechanisms.base import dense_causal, expand_kv
from attnperf.mechanisms.linear import LINEAR_EPS, elu_feature_map
from attnperf.mechanisms.sparse import topk_keep


def softmax_probs(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row softmax in at least float32, returned in ``dtype`` for the product with v."""
    return torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(dtype)


def eager_softmax(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + bias, masked) v`` with kv heads already expanded."""
    scores = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax_probs(scores, v.dtype) @ v


def eager_linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    """Linear attention in its associative O(n·D²) form (Katharopoulos et al. 2020, eq. 5–9).

    Non-causal: one state ``S = φ(K)ᵀ V`` and normalizer ``z = Σ φ(k_j)``. Causal: the running
    sums as cumulative sums over time, ``[B, H, Lk, D, D]`` in memory — the textbook version
    before chunking (the tiled backend chunks it). The sums accumulate in float32 for half
    inputs: a bfloat16 running sum over a few hundred positions already loses 3%, an error of the
    accumulator's precision, not of the method.
    """
    work = torch.promote_types(q.dtype, torch.float32)
    fq, fk, v = elu_feature_map(q.to(work)), elu_feature_map(k.to(work)), v.to(work)
    if not case.causal:
        state = fk.transpose(-1, -2) @ v  # [B, H, D, Dv]
        z = fk.sum(dim=-2)  # [B, H, D]
        num = fq @ state
        den = (fq * z[..., None, :]).sum(-1, keepdim=True)
    else:
        states = torch.cumsum(fk[..., :, None] * v[..., None, :], dim=2)[:, :, case.offset :]
        zs = torch.cumsum(fk, dim=2)[:, :, case.offset :]
        num = (fq[..., None, :] @ states).squeeze(-2)
        den = (fq * zs).sum(-1, keepdim=True)
    return (num / (den + LINEAR_EPS)).to(q.dtype)


class Eager(Backend):
    name = "eager"
    summary = "plain PyTorch, materializes the scores (the baseline)"
    mechanisms = frozenset(MECHANISMS)
    block_size = None
    # bfloat16 as plain PyTorch computes it: the scores are rounded to bfloat16 twice (q·kᵀ, then
    # the scale) before the float32 softmax, and the probabilities once more before p·v. With a
    # single query row (a decode step, 4 heads × D 16 × 257 keys) the error passes 1e-2 in a
    # few seeds in a thousand (median 4e-3), where kernels that keep the scores in float32 stay
    # under 3e-3.
    tolerance: ClassVar[dict[str, float]] = {"bfloat16": 2e-2}

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        heads = case.heads
        mask = mechanism.dense_mask(case, q.device)
        bias = mechanism.dense_bias(case, q.device, q.dtype)
        transform = self.qk_transform(mechanism, case, q.device, q.dtype)

        def run_softmax() -> torch.Tensor:
            qq, kk = transform(q, k) if transform is not None else (q, k)
            return eager_softmax(qq, expand_kv(kk, heads), expand_kv(v, heads), case.scale, mask, bias)

        return run_softmax

    def prepare_topk(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        heads, top_k = case.heads, case.top_k
        assert top_k is not None  # mechanism.validate() guarantees it
        allowed = dense_causal(case, q.device) if case.causal else None

        def run_topk() -> torch.Tensor:
            # Selection on float32 scores: a flipped choice between near-equal keys is an O(1)
            # error, not a rounding one (bfloat16 scores tie and flip often).
            work = torch.promote_types(q.dtype, torch.float32)
            scores = q.to(work) @ expand_kv(k, heads).to(work).transpose(-1, -2) * case.scale
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            scores = scores.masked_fill(~topk_keep(scores, top_k), float("-inf"))
            return softmax_probs(scores, v.dtype) @ expand_kv(v, heads)

        return run_topk

    def prepare_linear(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        return lambda: eager_linear(q, expand_kv(k, case.heads), expand_kv(v, case.heads), case)

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.eager_softmax_peak(mechanism, case)

    def topk_peak_bytes(self, case: Case) -> int:
        return memory.eager_topk_peak(case)

    def linear_peak_bytes(self, case: Case) -> int:
        return memory.eager_linear_peak(case)
