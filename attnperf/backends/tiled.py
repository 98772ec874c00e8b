"""Tiled exact attention in plain PyTorch: FlashAttention's algorithm, readable.

* softmax mechanisms: online softmax over key tiles (Milakov & Gimelshein 2018; Dao et al.
  2022) — running max ``m``, normalizer ``l`` and accumulator per query tile, so the extra
  memory is O(n · tile) instead of O(n²). Tiles the mask leaves empty are skipped outright
  (the block sparsity flex and flash-attn exploit), tiles it fills need no mask.
* top-k: streaming selection — each query tile keeps its running k best scores and indices
  across key tiles, O(n · k) memory.
* linear: the chunked causal form (intra-chunk quadratic, inter-chunk D × D state), O(n · D²).

Scores are kept in base-2 units (``log2 e`` folded into the scale and the bias) and
exponentiated with ``exp2``, as FlashAttention-2/3 do. On the CPU this also keeps the tiles off
``torch.exp``'s MKL VML path, whose first call in a process was sometimes inexact (about 2e-5 on
this backend's float32 output, over the bound; figures in :mod:`attnperf.vml`); ``exp2`` runs on
PyTorch's own vectorized kernel.

GQA is packed: the G query heads of one kv head share each k/v tile (``[B, H_kv, G, …]``), as
flash-attn's ``pack_gqa``. Statistics and accumulators are float32 for half inputs and the input
dtype otherwise (float64 stays float64).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from attnperf.analysis import memory
from attnperf.backends.base import Backend, Runner
from attnperf.case import Case
from attnperf.mechanisms import MECHANISMS, SoftmaxMechanism
from attnperf.mechanisms.base import MaskFn, causal_fn, expand_kv
from attnperf.mechanisms.linear import LINEAR_EPS, elu_feature_map

#: log2(e): scores times this are in base-2 units, for ``exp2``.
LOG2E = math.log2(math.e)
#: Query and key tile length (flex's and FlashAttention's usual 128).
TILE = 128
SKIP, FULL, PARTIAL = 0, 1, 2


def ranges(length: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def classify_tiles(
    mask_fn: MaskFn | None, case: Case, device: torch.device, tile: int
) -> list[list[tuple[int, int, int]]]:
    """For each query tile, its key tiles as ``(start, end, kind)``, fully masked tiles left out.

    Evaluates the mask one tile at a time, so preparing costs O(tile²) memory.
    """
    plan = []
    for qs, qe in ranges(case.q_len, tile):
        row = []
        q_idx = torch.arange(qs, qe, device=device)[:, None]
        for ks, ke in ranges(case.k_len, tile):
            if mask_fn is None:
                row.append((ks, ke, FULL))
                continue
            allowed = mask_fn(q_idx, torch.arange(ks, ke, device=device)[None, :]).expand(qe - qs, ke - ks)
            if allowed.all():
                row.append((ks, ke, FULL))
            elif allowed.any():
                row.append((ks, ke, PARTIAL))
        plan.append(row)
    return plan


def grouped(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``[B, H, L, D]`` → ``[B, H_kv, G, L, D]``: query heads grouped by the kv head they read."""
    b, h, length, d = q.shape
    return q.view(b, kv_heads, h // kv_heads, length, d)


class Tiled(Backend):
    name = "tiled"
    summary = "plain-PyTorch tiled exact attention (online softmax, streaming top-k, chunked linear)"
    mechanisms = frozenset(MECHANISMS)
    # In bfloat16 each tile's q·kᵀ is rounded to bfloat16 before the float32 online softmax, and
    # the probabilities again before p·v, as eager's: with a single query row (4 heads × D 16 ×
    # 257 keys) the error exceeds 1e-2 in a few seeds in a thousand.
    tolerance: ClassVar[dict[str, float]] = {"bfloat16": 2e-2}

    block_size: int

    def __init__(self, tile: int = TILE) -> None:
        self.block_size = tile

    def native_mask(self, mechanism: SoftmaxMechanism, case: Case) -> bool:
        return True  # every mask and bias is applied tile by tile, empty tiles skipped

    def prepare_softmax(
        self, mechanism: SoftmaxMechanism, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> Runner:
        device, tile, hkv = q.device, self.block_size, case.n_kv_heads
        mask_fn = mechanism.mask_fn(case, device)
        work = torch.promote_types(q.dtype, torch.float32)
        bias_fn = mechanism.bias_fn(case, device, work)  # in work's precision: it is scaled by log2 e
        transform = self.qk_transform(mechanism, case, device, q.dtype)
        plan = classify_tiles(mask_fn, case, device, tile)
        heads = torch.arange(case.heads, device=device).view(hkv, -1, 1, 1)  # [H_kv, G, 1, 1]

        def run() -> torch.Tensor:
            qq, kk = transform(q, k) if transform is not None else (q, k)
            out = torch.empty_like(qq)
            out5 = grouped(out, hkv)
            for (qs, qe), row in zip(ranges(case.q_len, tile), plan, strict=True):
                qt = grouped(qq[:, :, qs:qe], hkv)  # [B, H_kv, G, bq, D]
                q_idx = torch.arange(qs, qe, device=device)[:, None]
                m = torch.full((*qt.shape[:-1], 1), float("-inf"), device=device, dtype=work)
                l = torch.zeros_like(m)
                acc = torch.zeros(qt.shape, device=device, dtype=work)
                for ks, ke, kind in row:
                    kt, vt = kk[:, :, None, ks:ke], v[:, :, None, ks:ke]  # [B, H_kv, 1, bk, D]
                    s = (qt @ kt.transpose(-1, -2)).to(work) * (case.scale * LOG2E)  # base-2 units
                    kv_idx = torch.arange(ks, ke, device=device)[None, :]
                    if bias_fn is not None:
                        s = s + bias_fn(heads, q_idx, kv_idx) * LOG2E
                    if kind == PARTIAL:
                        assert mask_fn is not None
                        s = s.masked_fill(~mask_fn(q_idx, kv_idx), float("-inf"))
                    m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
                    # A row masked in every tile so far has m_new = -inf; shift by 0 there.
                    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
                    p = torch.exp2(s - m_safe)
                    correction = torch.exp2(m - m_safe)
                    l = l * correction + p.sum(dim=-1, keepdim=True)
                    acc = acc * correction + (p.to(vt.dtype) @ vt).to(work)
                    m = m_new
                out5[:, :, :, qs:qe] = (acc / l).to(out.dtype)
            return out

        return run

    def prepare_topk(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        device, tile, hkv = q.device, self.block_size, case.n_kv_heads
        top_k = case.top_k
        assert top_k is not None  # mechanism.validate() guarantees it
        causal = causal_fn(case) if case.causal else None
        work = torch.promote_types(q.dtype, torch.float32)

        def run() -> torch.Tensor:
            out = torch.empty_like(q)
            out5 = grouped(out, hkv)
            v_all = v[:, :, None]  # [B, H_kv, 1, Lk, D]
            for qs, qe in ranges(case.q_len, tile):
                qt = grouped(q[:, :, qs:qe], hkv)
                q_idx = torch.arange(qs, qe, device=device)[:, None]
                best_s = torch.full((*qt.shape[:-1], top_k), float("-inf"), device=device, dtype=work)
                best_i = torch.zeros(best_s.shape, dtype=torch.long, device=device)
                last_key = case.k_len if causal is None else qe + case.offset  # keys past it are masked
                for ks, ke in ranges(last_key, tile):
                    # float32 (or wider) scores for the selection, as eager: a flipped choice is an O(1) error
                    s = (qt.to(work) @ k[:, :, None, ks:ke].to(work).transpose(-1, -2)) * case.scale
                    kv_idx = torch.arange(ks, ke, device=device)[None, :]
                    if causal is not None:
                        s = s.masked_fill(~causal(q_idx, kv_idx), float("-inf"))
                    # Earlier (lower-index) candidates first + stable sort: ties keep the lower index.
                    cand_s = torch.cat([best_s, s], dim=-1)
                    cand_i = torch.cat([best_i, kv_idx.expand(s.shape)], dim=-1)
                    order = torch.sort(cand_s, dim=-1, descending=True, stable=True).indices[..., :top_k]
                    best_s, best_i = cand_s.gather(-1, order), cand_i.gather(-1, order)
                p = torch.softmax(best_s, dim=-1)  # [B, H_kv, G, bq, k]
                b, _, g, bq, _ = p.shape
                index = best_i.reshape(b, hkv, g, bq * top_k, 1).expand(-1, -1, -1, -1, v.shape[-1])
                v_sel = v_all.expand(-1, -1, g, -1, -1).gather(3, index).view(b, hkv, g, bq, top_k, -1)
                out5[:, :, :, qs:qe] = (p[..., None] * v_sel.to(work)).sum(dim=-2).to(out.dtype)
            return out

        return run

    def prepare_linear(self, case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Runner:
        tile, heads, delta = self.block_size, case.heads, case.offset

        work = torch.promote_types(q.dtype, torch.float32)

        def run() -> torch.Tensor:
            # Out-of-place updates throughout: autograd keeps each chunk's state for the backward.
            fq, fk = elu_feature_map(q.to(work)), elu_feature_map(expand_kv(k, heads).to(work))
            vf = expand_kv(v, heads).to(work)
            state = torch.zeros(*fk.shape[:2], fk.shape[-1], vf.shape[-1], device=q.device, dtype=work)  # [B, H, D, Dv]
            z = torch.zeros(*fk.shape[:2], 1, fk.shape[-1], device=q.device, dtype=work)  # [B, H, 1, D]
            if not case.causal:
                for ks, ke in ranges(case.k_len, tile):
                    state = state + fk[:, :, ks:ke].transpose(-1, -2) @ vf[:, :, ks:ke]
                    z = z + fk[:, :, ks:ke].sum(dim=-2, keepdim=True)
                return ((fq @ state) / ((fq * z).sum(-1, keepdim=True) + LINEAR_EPS)).to(q.dtype)
            chunks = []
            for ks, ke in ranges(case.k_len, tile):
                fk_c, v_c = fk[:, :, ks:ke], vf[:, :, ks:ke]
                qs, qe = max(ks - delta, 0), ke - delta  # queries whose position i + Δ is in [ks, ke)
                if qe > 0:
                    fq_c = fq[:, :, qs:qe]
                    pos = torch.arange(qs, qe, device=q.device)[:, None] + delta
                    intra = (fq_c @ fk_c.transpose(-1, -2)) * (torch.arange(ks, ke, device=q.device)[None, :] <= pos)
                    num = fq_c @ state + intra @ v_c
                    den = (fq_c * z).sum(-1, keepdim=True) + intra.sum(-1, keepdim=True)
                    chunks.append(num / (den + LINEAR_EPS))
                state = state + fk_c.transpose(-1, -2) @ v_c
                z = z + fk_c.sum(dim=-2, keepdim=True)
            return torch.cat(chunks, dim=2).to(q.dtype)

        return run

    def softmax_peak_bytes(self, mechanism: SoftmaxMechanism, case: Case) -> int:
        return memory.tiled_softmax_peak(mechanism, case, self.block_size)

    def topk_peak_bytes(self, case: Case) -> int:
        return memory.tiled_topk_peak(case, self.block_size)

    def linear_peak_bytes(self, case: Case) -> int:
        return memory.tiled_linear_peak(case, self.block_size)
